"""Exact test problems: data distributions with closed-form scores.

``GaussianMixture`` is a mixture of diagonal Gaussians, p_0 = Σ_k w_k N(μ_k, diag(s_k²)). Under
the forward process x_t = α x_0 + σ ε its marginal is p_t = Σ_k w_k N(α μ_k, diag(α² s_k² + σ²)),
so the optimal noise prediction ε*(x) = −σ ∇ log p_t(x), the posterior mean
E[x_0 | x_t = x], the v-prediction α ε* − σ x̂_0 and tr Cov[x_0 | x_t = x] are exact. Use it to
measure solver error and convergence order against the true ODE, and to check Analytic-DPM's
Γ_t = E‖ε*(x_t, t)‖² / d.

The math runs in Rust, in float64, in parallel over samples, with the GIL released.

Example::

    import rdiff
    from rdiff.testing import GaussianMixture

    gm = GaussianMixture(means=[[-2.0, 0.0], [2.0, 1.0]], stds=[0.5, 0.3], weights=[0.3, 0.7])
    schedule = rdiff.NoiseSchedule.discrete(1000)
    model = gm.model(schedule, prediction_type="epsilon")   # model(x, t) like a UNet
    eps = model(torch.randn(8, 2), torch.tensor(999))
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ._rdiff import NoiseSchedule, _GaussianMixture

__all__ = ["ExactModel", "GaussianMixture"]

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _torch_tensor_type() -> Any:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _is_tensor(x: Any) -> bool:
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(x, tensor)


def _as_float64(x: Any, name: str) -> np.ndarray:
    """``x`` (array-like, numpy array or torch tensor of any real dtype) as float64 numpy."""
    if _is_tensor(x):
        import torch

        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name}: expected a real numeric tensor, got dtype {x.dtype}")
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name}: expected a number or an array of numbers, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: cannot be converted to an array ({e})") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers, got an array of dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64, order="C")


def _not_nan(out: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``out``, or ValueError naming ``x`` where finite x gave NaN: the squared distances to the
    components overflow float64 (|x| beyond about 1e154 / the components' scale)."""
    if np.isnan(out).any():
        raise ValueError(
            f"x: too large for exact float64 densities (max |x| = {np.abs(rows).max():.3g}): "
            "the squared distances to the components overflow"
        )
    return out


def _per_sample(v: Any, n: int, name: str) -> np.ndarray:
    """A scalar or an (n,) array as a float64 array of shape (1,) or (n,)."""
    arr = _as_float64(v, name)
    if arr.ndim == 0:
        return arr.reshape(1)
    if arr.ndim == 1 and arr.shape[0] in (1, n):
        return arr
    raise ValueError(
        f"{name}: expected a scalar or one value per sample, shape ({n},), got shape {arr.shape}"
    )


def _numpy_dtype(dt: Any) -> np.dtype:
    """A numpy dtype from a numpy dtype, its name or a torch dtype."""
    if _is_tensor_dtype(dt):
        dt = str(dt).removeprefix("torch.")
    try:
        return np.dtype(dt)
    except TypeError:
        raise TypeError(f"dtype: not a numpy dtype: {dt!r}") from None


def _is_tensor_dtype(dt: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(dt, torch.dtype)


class GaussianMixture:
    """A mixture of diagonal Gaussians with exact ε*, x̂_0, v* and log-densities.

    Args:
        means: float array-like of shape (K, d), the component means μ_k.
        stds: positive floats of shape (K,) (isotropic components), (K, d) (diagonal
            components), or a scalar (one std for all).
        weights: positive floats of shape (K,), normalised to sum to 1; uniform if None.

    Inputs ``x`` are numpy arrays, torch tensors (CPU; any device is moved to the CPU) or
    array-likes of any real dtype, of shape (n, d) or (n, *shape) with prod(shape) = d (e.g.
    images (n, C, H, W) with C·H·W = d); they are converted to float64 for the math.

    Raises:
        ValueError: mismatched shapes, non-positive stds or weights, non-finite values.
        TypeError: non-numeric input.
    """

    def __init__(self, means: Any, stds: Any, weights: Any = None) -> None:
        m = _as_float64(means, "means")
        if m.ndim != 2:
            raise ValueError(f"means: expected shape (K, d), got shape {m.shape}")
        k, d = m.shape
        s = _as_float64(stds, "stds")
        if s.ndim == 0:
            s = np.full(k, float(s))
        if s.shape not in ((k,), (k, d)):
            raise ValueError(
                f"stds: expected shape ({k},) or ({k}, {d}) to match means, got shape {s.shape}"
            )
        w = None
        if weights is not None:
            w = _as_float64(weights, "weights")
            if w.shape != (k,):
                raise ValueError(
                    f"weights: expected shape ({k},) to match means, got shape {w.shape}"
                )
        self._core = _GaussianMixture(m, s, w)

    @classmethod
    def single(cls, mean: Any, std: float, dim: int) -> GaussianMixture:
        """One Gaussian N(mean, std² I) in ``dim`` dimensions.

        ``mean`` is a scalar or a (dim,) array; ``std`` a positive scalar (or a (dim,) array for
        a diagonal covariance). For an isotropic N(μ, s² I), ε*(x) = σ (x − α μ)/(α² s² + σ²)
        and E‖ε*‖²/d = σ²/(α² s² + σ²).
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        mu = _as_float64(mean, "mean")
        if mu.ndim > 1 or (mu.ndim == 1 and mu.shape[0] != dim):
            raise ValueError(f"mean: expected a scalar or shape ({dim},), got shape {mu.shape}")
        sd = _as_float64(std, "std")
        if sd.ndim > 1 or (sd.ndim == 1 and sd.shape[0] != dim):
            raise ValueError(f"std: expected a scalar or shape ({dim},), got shape {sd.shape}")
        means = np.broadcast_to(mu, (dim,))[None, :]
        stds = sd.reshape(1) if sd.ndim == 0 else sd[None, :]
        return cls(means, stds)

    # ---------------------------------------------------------------- parameters

    @property
    def dim(self) -> int:
        """d, the data dimension."""
        return self._core.dim

    @property
    def n_components(self) -> int:
        """K, the number of components."""
        return self._core.n_components

    @property
    def means(self) -> np.ndarray:
        """μ, float64 of shape (K, d)."""
        return self._core.means

    @property
    def stds(self) -> np.ndarray:
        """s, float64 of shape (K, d) (isotropic stds repeated along d)."""
        return self._core.stds

    @property
    def weights(self) -> np.ndarray:
        """The normalised weights, float64 of shape (K,)."""
        return self._core.weights

    @property
    def data_mean(self) -> np.ndarray:
        """E[x_0] = Σ_k w_k μ_k, float64 of shape (d,)."""
        return self._core.mean()

    @property
    def data_cov(self) -> np.ndarray:
        """Cov[x_0] = Σ_k w_k (diag(s_k²) + (μ_k − m)(μ_k − m)ᵀ), float64 of shape (d, d)."""
        return self._core.cov()

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"

    # ---------------------------------------------------------------- sampling and densities

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.choice(self.n_components, size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        return self.means[k] + self.stds[k] * z

    def sample_data(self, n: int, seed: int | None = 0) -> np.ndarray:
        """n draws of x_0 ~ p_0, float64 of shape (n, d); the same for the same seed."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n: expected an integer, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n: must be non-negative, got {n}")
        return self._sample(int(n), np.random.default_rng(seed))

    def _rows(self, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """x as float64 (n, d) plus its original shape."""
        arr = _as_float64(x, "x")
        d = self.dim
        if arr.ndim < 2 or math.prod(arr.shape[1:]) != d:
            raise ValueError(
                f"x: expected shape (n, {d}) or (n, *shape) with prod(shape) = {d}, "
                f"got shape {arr.shape}"
            )
        return arr.reshape(arr.shape[0], d), arr.shape

    def log_prob_at(self, x: Any, alpha: Any, sigma: Any) -> np.ndarray:
        """log p_t(x) of x_t = α x_0 + σ ε: x (n, d) or (n, *shape) → float64 (n,).

        ``alpha`` and ``sigma`` are scalars or per-sample arrays of shape (n,).
        """
        rows, _ = self._rows(x)
        n = rows.shape[0]
        a, s = _per_sample(alpha, n, "alpha"), _per_sample(sigma, n, "sigma")
        return _not_nan(self._core.log_prob(rows, a, s), rows)

    def log_prob(self, x: Any) -> np.ndarray:
        """log p_0(x), the data log-density: x (n, d) or (n, *shape) → float64 (n,)."""
        return self.log_prob_at(x, 1.0, 0.0)

    # ---------------------------------------------------------------- exact predictions at (α, σ)

    def _predict_at(self, x: Any, alpha: Any, sigma: Any, prediction_type: str) -> np.ndarray:
        rows, shape = self._rows(x)
        n = rows.shape[0]
        a, s = _per_sample(alpha, n, "alpha"), _per_sample(sigma, n, "sigma")
        return _not_nan(self._core.predict(rows, a, s, prediction_type), rows).reshape(shape)

    def eps_at(self, x: Any, alpha: Any, sigma: Any) -> np.ndarray:
        """ε*(x) = −σ ∇ log p_t(x) = E[ε | x_t = x], float64 of x's shape.

        ``x``: (n, d) or (n, *shape); ``alpha``, ``sigma``: scalars or arrays of shape (n,)
        (α, σ ≥ 0, not both zero).
        """
        return self._predict_at(x, alpha, sigma, "epsilon")

    def x0_at(self, x: Any, alpha: Any, sigma: Any) -> np.ndarray:
        """x̂_0(x) = E[x_0 | x_t = x] = (x − σ ε*)/α (computed stably, also at α = 0)."""
        return self._predict_at(x, alpha, sigma, "sample")

    def v_at(self, x: Any, alpha: Any, sigma: Any) -> np.ndarray:
        """v*(x) = α ε*(x) − σ x̂_0(x), float64 of x's shape."""
        return self._predict_at(x, alpha, sigma, "v_prediction")

    def x0_cov_trace_at(self, x: Any, alpha: Any, sigma: Any) -> np.ndarray:
        """tr Cov[x_0 | x_t = x], float64 of shape (n,).

        Its mean over x_t is d·(σ²/α²)·(1 − E‖ε*‖²/d), the identity behind Analytic-DPM.
        """
        rows, _ = self._rows(x)
        n = rows.shape[0]
        a, s = _per_sample(alpha, n, "alpha"), _per_sample(sigma, n, "sigma")
        return _not_nan(self._core.x0_cov_trace(rows, a, s), rows)

    def expected_eps_sq(
        self, alpha: float, sigma: float, n: int = 20000, seed: int | None = 0
    ) -> tuple[float, float]:
        """Monte-Carlo E‖ε*(x_t)‖²/d over x_t = α x_0 + σ ε: returns (estimate, standard error).

        This is Analytic-DPM's Γ_t for the exact model; for one isotropic Gaussian N(μ, s² I)
        it equals σ²/(α² s² + σ²).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n: expected an integer, got {type(n).__name__}")
        if n < 2:
            raise ValueError(f"n: need at least 2 samples for a standard error, got {n}")
        a = _as_float64(alpha, "alpha")
        s = _as_float64(sigma, "sigma")
        if a.ndim != 0 or s.ndim != 0:
            raise ValueError("alpha, sigma: expected scalars")
        rng = np.random.default_rng(seed)
        x0 = self._sample(int(n), rng)
        xt = float(a) * x0 + float(s) * rng.standard_normal(x0.shape)
        per = np.square(self.eps_at(xt, a, s)).sum(axis=1) / self.dim
        return float(per.mean()), float(per.std(ddof=1) / math.sqrt(n))

    # ---------------------------------------------------------------- exact predictions at t

    def alpha_sigma(self, t: Any, schedule: NoiseSchedule) -> tuple[np.ndarray, np.ndarray]:
        """(α_t, σ_t) as float64 arrays of t's shape (a scalar t gives 0-d arrays).

        For a discrete schedule ``t`` is diffusers' timestep index: integer values give
        α = √ᾱ[t], σ = √(1 − ᾱ[t]) exactly; non-integer values in [0, N − 1] use the schedule's
        continuous view at (t + 1)/N (the DPM-Solver reference's ``t_input``). For a continuous
        schedule (``linear_vp``), ``t`` is the time in [0, 1].
        """
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"schedule: expected an rdiff.NoiseSchedule, got {type(schedule).__name__}"
            )
        tt = _as_float64(t, "t")
        if not np.all(np.isfinite(tt)):
            raise ValueError("t: must be finite")
        if schedule.kind == "discrete":
            ac = schedule.alphas_cumprod
            big_n = ac.shape[0]
            if np.any(tt < 0) or np.any(tt > big_n - 1):
                raise ValueError(
                    f"t: timesteps must lie in [0, {big_n - 1}] for this schedule, "
                    f"got values in [{tt.min()}, {tt.max()}]"
                )
            if np.all(tt == np.round(tt)):
                a2 = ac[tt.astype(np.int64)]
                return np.sqrt(a2), np.sqrt(1.0 - a2)
            tc = (tt + 1.0) / big_n
        else:
            if np.any(tt < 0) or np.any(tt > schedule.t_max):
                raise ValueError(
                    f"t: must lie in [0, {schedule.t_max}] for a continuous schedule, "
                    f"got values in [{tt.min()}, {tt.max()}]"
                )
            tc = tt
        return (
            np.asarray(schedule.alpha_t(tc), dtype=np.float64),
            np.asarray(schedule.sigma_t(tc), dtype=np.float64),
        )

    def eps(self, x: Any, t: Any, schedule: NoiseSchedule) -> np.ndarray:
        """ε*(x, t), float64 of x's shape; ``t`` a scalar or per-sample (n,) (see alpha_sigma)."""
        a, s = self.alpha_sigma(t, schedule)
        return self.eps_at(x, a, s)

    def x0(self, x: Any, t: Any, schedule: NoiseSchedule) -> np.ndarray:
        """E[x_0 | x_t = x], float64 of x's shape."""
        a, s = self.alpha_sigma(t, schedule)
        return self.x0_at(x, a, s)

    def v(self, x: Any, t: Any, schedule: NoiseSchedule) -> np.ndarray:
        """v*(x, t) = α_t ε* − σ_t x̂_0, float64 of x's shape."""
        a, s = self.alpha_sigma(t, schedule)
        return self.v_at(x, a, s)

    def model(
        self,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        dtype: Any = None,
    ) -> ExactModel:
        """The exact model as a callable ``model(x, t)``, a drop-in for a trained network.

        ``x`` is a numpy array or a torch tensor (float16/bfloat16/float32/float64) of shape
        (n, d) or (n, *shape); ``t`` a python number, a 0-d tensor/array or per-sample (n,)
        timesteps (see :meth:`alpha_sigma`). The result has x's type, device, shape and dtype
        (or ``dtype`` when given: a numpy/torch dtype or its name).
        """
        return ExactModel(self, schedule, prediction_type, dtype)


class ExactModel:
    """``model(x, t)`` returning the exact ε*, x̂_0 or v* of a :class:`GaussianMixture`."""

    def __init__(
        self,
        mixture: GaussianMixture,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        dtype: Any = None,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"schedule: expected an rdiff.NoiseSchedule, got {type(schedule).__name__}"
            )
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type: expected one of {_PREDICTION_TYPES}, got {prediction_type!r}"
            )
        self.mixture = mixture
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.dtype = dtype

    def __repr__(self) -> str:
        return (
            f"ExactModel({self.mixture!r}, {self.schedule!r}, "
            f"prediction_type={self.prediction_type!r})"
        )

    def __call__(self, x: Any, t: Any) -> Any:
        a, s = self.mixture.alpha_sigma(t, self.schedule)
        out = self.mixture._predict_at(x, a, s, self.prediction_type)
        if _is_tensor(x):
            import torch

            dt = self.dtype
            if dt is None:
                dt = x.dtype
            elif isinstance(dt, str):
                dt = getattr(torch, dt, None)
                if not isinstance(dt, torch.dtype):
                    raise TypeError(f"dtype: unknown torch dtype {self.dtype!r}")
            elif not isinstance(dt, torch.dtype):
                dt = getattr(torch, _numpy_dtype(dt).name)
            return torch.from_numpy(out).to(device=x.device, dtype=dt)
        if self.dtype is not None:
            return out.astype(_numpy_dtype(self.dtype), copy=False)
        xd = getattr(x, "dtype", None)
        if isinstance(xd, np.dtype) and xd.kind == "f":
            return out.astype(xd, copy=False)
        return out
