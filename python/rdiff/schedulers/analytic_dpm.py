"""Analytic-DPM (Bao et al., ICLR 2022): DDPM / DDIM sampling with the optimal reverse variance."""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _AnalyticDpm
from ..analytic import GammaTable, optimal_trajectory, resolve_gamma
from ._base import SchedulerBase, SchedulerOutput, exclusive, loop_setup

_TRAJECTORIES = ("uniform", "quadratic", "optimal")


def _randn_as_diffusers(shape: tuple, like: Any, dtype: Any, generator: Any) -> Any:
    """float32 noise drawn as diffusers' ``randn_tensor(shape, generator, device, dtype)``
    draws it (in ``dtype``, on the generator's device), for the fused loop."""
    if not _tensor.is_torch(like):
        return _tensor.randn(shape, like, generator, np.float32)
    noise = _tensor.randn(shape, like, generator, dtype, widen=True)
    return noise.to(dtype=_tensor.torch_module().float32).contiguous()


def _is_seed(generator: Any) -> bool:
    return isinstance(generator, (int, np.integer)) and not isinstance(generator, bool)


def _seed(generator: Any) -> int:
    seed = int(generator)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"generator: an int seed must lie in [0, 2**64), got {seed}")
    return seed


class AnalyticDPMScheduler(SchedulerBase):
    """Analytic-DPM sampling with diffusers' scheduler interface.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Args:
        gamma: Γ_t = E‖ε_θ(x_t, t)‖²/d at every training timestep: an ``rdiff.GammaTable``
            (from ``rdiff.estimate_gamma``; it must be for this schedule), a path to a saved
            one, or N floats. The config stores it as a list of N floats.
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: diffusers'
            β schedule.
        form: "ddpm" (ancestral, λ² = β̄_s/β̄_t·(1 − ᾱ_t/ᾱ_s)) or "ddim" (λ² = η²·that).
        eta: η of the DDIM form.
        trajectory: "uniform" (the authors' 'linear' choice over [0, N − 1]),
            "quadratic" (DDIM's quadratic spacing) or "optimal" (``rdiff.optimal_trajectory``).
        clip_x0: clip the predicted x₀ to ``data_range`` in the mean (as the reference does).
        data_range: (a, b), the data's range; Cov(x₀|x_t) is clipped to [0, ((b − a)/2)²].
        clip_sigma_pixels: cap the second-to-last step's σ at this many quantisation steps of
            8-bit data: σ² ≤ (c·(b − a)/255·√(π/2))² (the reference's ``clip_sigma_idx = 1``,
            ``clip_pixel = c``, 2 for its DDPM and 1 for its DDIM runs); None disables it.
        prediction_type: "epsilon", "sample" or "v_prediction" (converted to ε in the step).

    ``set_timesteps(K)`` fills ``timesteps`` (int64, descending) and ``variances`` (float64
    σ² of each step; the last one 0). ``step`` runs one fused pass in Rust: ε from the model
    output, x̂₀ = (x − √β̄_t ε)/√ᾱ_t (clipped), the mean of the form and σ·noise, with noise
    drawn as diffusers' DDPMScheduler draws it.
    """

    _step_fields = ("prev_sample", "pred_original_sample")

    _compatibles: ClassVar[list[str]] = [
        "DDIMScheduler",
        "DDPMScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
        "AnalyticDPMScheduler",
    ]
    order = 1

    def __init__(
        self,
        gamma: Any = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        form: str = "ddpm",
        eta: float = 0.0,
        trajectory: str = "uniform",
        clip_x0: bool = True,
        data_range: tuple[float, float] = (-1.0, 1.0),
        clip_sigma_pixels: float | None = 2.0,
        prediction_type: str = "epsilon",
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if form not in ("ddpm", "ddim"):
            raise ValueError(f"form: expected 'ddpm' or 'ddim', got {form!r}")
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta: expected a finite number ≥ 0, got {eta!r}")
        if form == "ddpm" and eta != 0:
            raise ValueError("eta: only the 'ddim' form takes eta")
        if trajectory not in _TRAJECTORIES:
            raise ValueError(f"trajectory: expected one of {_TRAJECTORIES}, got {trajectory!r}")
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(
                f"prediction_type: expected 'epsilon', 'sample' or 'v_prediction', got "
                f"{prediction_type!r}"
            )
        try:
            lo, hi = (float(v) for v in data_range)
        except (TypeError, ValueError):
            raise ValueError(f"data_range: expected (a, b), got {data_range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"data_range: expected finite a < b, got {data_range!r}")
        if clip_sigma_pixels is not None and not (
            math.isfinite(float(clip_sigma_pixels)) and clip_sigma_pixels > 0
        ):
            raise ValueError(
                f"clip_sigma_pixels: expected a positive number or None, got {clip_sigma_pixels!r}"
            )
        self._init_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False
        )
        if isinstance(gamma, (str, os.PathLike)):
            gamma = GammaTable.load(gamma)
        self.gamma_table = gamma if hasattr(gamma, "full_gamma") else None
        self.gamma = resolve_gamma(gamma, self._ac)
        # The config keeps Γ as plain floats so that it saves as JSON and reloads.
        self.register_to_config(gamma=[float(g) for g in self.gamma])
        self.data_range = (lo, hi)
        self.init_noise_sigma = 1.0
        self.timesteps = self._timesteps_array(
            np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64)
        )
        self.variances: np.ndarray | None = None
        self._core: _AnalyticDpm | None = None
        self._built_from = self.config

    # -- schedule --------------------------------------------------------------------------
    def _trajectory(self, k: int) -> np.ndarray:
        n = len(self._ac)
        kind = self.config.trajectory
        if kind == "optimal":
            return optimal_trajectory(self.gamma, self._ac, k)
        if k == 1:
            return np.array([n - 1], dtype=np.int64)
        if kind == "uniform":
            # The authors' 'linear' choice (`_choice_steps_linear`): 1-based steps from a
            # running float64 sum of the stride, rounded half to even, made 0-based. Exact .5
            # ties (K = 5 gives 499, not linspace's 500) follow that sum's rounding.
            stride, cur, steps = (n - 1) / (k - 1), 1.0, []
            for _ in range(k):
                steps.append(round(cur) - 1)
                cur += stride
            ts = np.asarray(steps, dtype=np.int64)
        else:
            ts = (np.linspace(0, math.sqrt(n * 0.8), k) ** 2).astype(np.int64)
            # DDIM's quadratic spacing repeats small timesteps for large K: push them apart.
            for i in range(1, k):
                ts[i] = max(ts[i], ts[i - 1] + 1)
            if ts[-1] >= n:
                raise ValueError(f"num_inference_steps: {k} is too many for quadratic spacing")
        return ts[::-1].copy()

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        timesteps: list[int] | None = None,
        variances: Any = None,
    ) -> None:
        """Choose the K timesteps (``num_inference_steps`` with the configured trajectory, or
        custom descending ``timesteps``) and compute every step's variance.

        ``variances`` overrides the analytic σ² of every step (K float64 values), e.g. with
        DDPM's β̃ to compare against the fixed-variance sampler.
        """
        n = len(self._ac)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            if _tensor.is_torch(timesteps):
                timesteps = timesteps.detach().cpu().numpy()
            ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
            if ts.size == 0 or np.any(np.diff(ts) >= 0) or ts[-1] < 0 or ts[0] >= n:
                raise ValueError(f"timesteps: must be strictly decreasing integers in [0, {n - 1}]")
        else:
            k = num_inference_steps
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise TypeError(f"num_inference_steps: expected an integer, got {k!r}")
            if k < 1 or k > n:
                raise ValueError(
                    f"num_inference_steps: must lie in [1, {n}] (the training timesteps), got {k}"
                )
            ts = self._trajectory(int(k))
        cfg = self.config
        lo, hi = self.data_range
        cap = None
        if cfg.clip_sigma_pixels is not None:
            cap = (float(cfg.clip_sigma_pixels) * (hi - lo) / 255.0 * math.sqrt(math.pi / 2)) ** 2
        v = None
        if variances is not None:
            if _tensor.is_torch(variances):
                variances = variances.detach().cpu().numpy()
            v = [float(x) for x in np.asarray(variances, dtype=np.float64).reshape(-1)]
        self._core = _AnalyticDpm(
            [float(a) for a in self._ac],
            [int(t) for t in ts],
            [float(self.gamma[t]) for t in ts],
            cfg.form,
            float(cfg.eta),
            ((hi - lo) / 2.0) ** 2,
            cap,
            cfg.prediction_type,
            v,
        )
        self.variances = np.asarray(self._core.variances, dtype=np.float64)
        self.timesteps = self._timesteps_array(ts.astype(np.int64), device)
        self.num_inference_steps = len(ts)
        self._step_index = None
        self._begin_index = None

    def previous_timestep(self, timestep: Any) -> int:
        """The timestep the step from ``timestep`` goes to (−1 after the last one)."""
        ts = self._timesteps_numpy()
        i = self.index_for_timestep(timestep)
        return int(ts[i + 1]) if i + 1 < len(ts) else -1

    # -- the step --------------------------------------------------------------------------
    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: int | Any,
        sample: Any,
        generator: Any = None,
        variance_noise: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` from ``timestep`` to the next timestep of the trajectory.

        Returns ``SchedulerOutput(prev_sample, pred_original_sample)`` (or a tuple with
        ``return_dict=False``) of model_output's type, dtype and device. Noise is drawn from
        ``generator`` (a torch.Generator or a list of them for torch input, a numpy Generator
        for numpy input) as diffusers' DDPMScheduler draws it, unless ``variance_noise`` is
        given; the last step adds none.

        ``generator`` may also be an int seed in [0, 2**64): the noise of step index ``k`` is
        then ``rdiff.randn(sample.shape, seed, offset=k)``, drawn inside the fused pass (in the
        CUDA kernel for CUDA tensors, with no extra buffer or launch), and CPU and CUDA give
        the same samples for a seed. This stream is rdiff's own, not torch's.
        """
        mo, x = self._begin_step(model_output, timestep, sample)
        i = self._step_index
        shape = tuple(x.shape)
        noise = None
        philox = None
        t_now = int(self._timesteps_numpy()[i])
        if variance_noise is None and _is_seed(generator):
            philox = (_seed(generator), i)
        # diffusers' DDPMScheduler draws noise at every step from t > 0, so the generator
        # advances the same way here (the noise is unused where σ² = 0).
        elif self.variances[i] > 0 or t_now > 0:
            if variance_noise is not None:
                noise = _tensor.to_float32(variance_noise, x)
                if tuple(noise.shape) != shape:
                    raise ValueError(
                        f"variance_noise: shape {tuple(noise.shape)} does not match "
                        f"sample's {shape}"
                    )
            else:
                noise = _randn_as_diffusers(shape, x, model_output.dtype, generator)
        x0 = _tensor.empty_like(x, dtype=model_output.dtype)
        prev = _tensor.empty_like(x, dtype=model_output.dtype)
        self._core.step(
            i,
            model_output=mo,
            sample=x,
            x0=x0,
            prev=prev,
            noise=noise,
            clip=self.data_range if self.config.clip_x0 else None,
            philox=philox,
            stream=_tensor.cuda_stream(x),
        )
        self._step_index += 1
        if not return_dict:
            return (prev, x0)
        return self._output_type(prev_sample=prev, pred_original_sample=x0)

    # -- forward process -------------------------------------------------------------------
    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(timesteps, dtype=np.int64)
        n = len(self._ac)
        if np.any(t < 0) or np.any(t >= n):
            raise ValueError(f"timesteps: must lie in [0, {n - 1}]")
        ac = self._ac[t]
        return np.sqrt(ac), np.sqrt(1.0 - ac)
