"""k-diffusion-style samplers on rdiff's fused Rust core (``rdiff.k``).

Drop-in replacements for ``k_diffusion.sampling``'s ``sample_euler``,
``sample_euler_ancestral``, ``sample_heun``, ``sample_dpmpp_2m``, ``sample_dpmpp_2m_sde``,
``sample_dpmpp_3m_sde``, ``get_sigmas_karras`` and ``get_sigmas_exponential``, with the same
signatures and semantics: ``model(x, sigma, **extra_args)`` is a denoiser D(x; σ) (x = x₀ + σ·n),
``sigmas`` a decreasing schedule ending in 0, ``callback`` receives k-diffusion's dict
(``x``, ``i``, ``sigma``, ``sigma_hat``, ``denoised``) and ``disable`` turns the tqdm bar off.

Each update's weights come from Rust in float64 (``src/schedule/karras.rs``) and the update is
one fused pass over the caller's buffers (torch CPU or CUDA tensors, numpy arrays; float32
arithmetic, float64 for float64 inputs; rdiff's kernel on the current stream for CUDA). With
the same model, sigmas and seed, the results equal k-diffusion's up to float32 rounding.

Randomness: the samplers draw exactly what k-diffusion draws, in the same order, from the same
generators, so a seeded run reproduces k-diffusion's noise:

- ``sample_euler`` / ``sample_heun`` draw ``torch.randn_like(x)`` at every step (k-diffusion does,
  even without churn); ``sample_euler_ancestral`` uses ``noise_sampler`` (default
  ``torch.randn_like(x)`` per step with σ_next > 0).
- ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde`` default to a :class:`BrownianTreeNoiseSampler`
  over [σ_min, σ_max] seeded by ``torch.randint(0, 2**63 - 1, [])`` as k-diffusion's; it needs
  ``torchsde``. Without torchsde the default falls back to independent Gaussian noise
  (``torch.randn_like``; a valid SDE sampler, but not k-diffusion's numbers). Pass the same
  explicit ``noise_sampler`` to both libraries to compare them whatever is installed.
- numpy inputs draw from numpy's global generator (``np.random.standard_normal``) by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _tensor
from ._rdiff import _k_churn_gamma, _k_heun_correction, _k_sigmas, _k_step, _lincomb

__all__ = [
    "BrownianTreeNoiseSampler",
    "default_noise_sampler",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
]


def _torch():
    import torch

    return torch


def _sigmas_out(values: list[float], device: Any) -> Any:
    torch = _torch()
    out = torch.tensor([*values, 0.0], dtype=torch.float32)
    return out.to(device)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu"):
    """Karras et al. (2022)'s schedule: n sigmas from sigma_max to sigma_min, then 0
    (float32 torch tensor of shape (n + 1,), computed in float64)."""
    n = _check_n(n)
    return _sigmas_out(_k_sigmas("karras", n, float(sigma_min), float(sigma_max), rho), device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device="cpu"):
    """n sigmas uniform in log σ from sigma_max to sigma_min, then 0 (float32 torch tensor)."""
    n = _check_n(n)
    return _sigmas_out(_k_sigmas("exponential", n, float(sigma_min), float(sigma_max)), device)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an integer, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n: must be non-negative, got {n}")
    return int(n)


def _randn_like(x: Any) -> Any:
    if _tensor.is_torch(x):
        return _torch().randn_like(x)
    return np.random.standard_normal(x.shape).astype(x.dtype)


def default_noise_sampler(x: Any) -> Callable[[Any, Any], Any]:
    """k-diffusion's default: fresh standard normal noise shaped like x at every call."""
    return lambda sigma, sigma_next: _randn_like(x)


class _BatchedBrownianTree:
    """torchsde Brownian trees, one per seed, as k-diffusion's BatchedBrownianTree."""

    def __init__(self, x, t0, t1, seed=None, **kwargs):
        import torchsde

        torch = _torch()
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        w0 = kwargs.get("w0", torch.zeros_like(x))
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        if isinstance(seed, (list, tuple)):
            if len(seed) != x.shape[0]:
                raise ValueError(f"seed: expected {x.shape[0]} seeds, got {len(seed)}")
            self.batched = True
            w0 = w0[0]
            seeds = list(seed)
        else:
            self.batched = False
            seeds = [seed]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s, **kwargs) for s in seeds]

    def __call__(self, t0, t1):
        torch = _torch()
        sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """Noise from a torchsde Brownian tree over [sigma_min, sigma_max] (k-diffusion's).

    ``noise_sampler(sigma, sigma_next)`` returns (W(t₁) − W(t₀))/√|t₁ − t₀| with t = transform(σ),
    standard normal and consistent across step sizes. ``seed`` is an int, a list of one int per
    batch item, or None (drawn with ``torch.randint`` from torch's global generator, as
    k-diffusion does). Needs ``torchsde``.
    """

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x):
        torch = _torch()
        self.transform = transform
        t0 = self.transform(torch.as_tensor(sigma_min))
        t1 = self.transform(torch.as_tensor(sigma_max))
        self.tree = _BatchedBrownianTree(x, t0, t1, seed)

    def __call__(self, sigma, sigma_next):
        torch = _torch()
        t0 = self.transform(torch.as_tensor(sigma))
        t1 = self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


def _default_sde_noise_sampler(x: Any, sigmas: Any) -> Callable:
    _Loop(x, sigmas)  # the argument checks, before the noise sampler touches x
    if not _tensor.is_torch(x):
        return default_noise_sampler(x)
    try:
        import torchsde  # noqa: F401
    except ImportError:
        return default_noise_sampler(x)
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max)


class _Loop:
    """Buffers and fused passes of one sampler run."""

    def __init__(self, x: Any, sigmas: Any):
        _tensor.check_float(x, "x")
        self.like = x
        self.stream = _tensor.cuda_stream(x)
        self.torch = _tensor.is_torch(x)
        self.batch = int(x.shape[0])
        self.sig = [float(s) for s in sigmas]
        if len(self.sig) < 1:
            raise ValueError("sigmas: expected at least one value")
        if not all(math.isfinite(s) and s >= 0.0 for s in self.sig):
            raise ValueError(f"sigmas: must be finite and non-negative, got {self.sig}")

    def s_in(self, sigmas: Any, i: int) -> Any:
        """sigmas[i]·ones(batch) as k-diffusion passes σ to the model."""
        if self.torch:
            return sigmas[i] * self.like.new_ones([self.batch])
        return np.asarray(sigmas)[i] * np.ones(self.batch, dtype=np.asarray(sigmas).dtype)

    def buf(self, v: Any, what: str) -> Any:
        x = self.like
        if _tensor.is_torch(v) != self.torch:
            raise TypeError(f"{what}: returned a {type(v).__name__} for a {type(x).__name__} input")
        if tuple(v.shape) != tuple(x.shape):
            raise ValueError(f"{what}: returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        if self.torch:
            return v.detach().to(dtype=x.dtype).contiguous()
        return np.ascontiguousarray(v, dtype=x.dtype)

    def comb(self, pairs: list) -> Any:
        out = _tensor.empty_like(self.like)
        terms = [(float(c), b) for c, b in pairs if c != 0.0 and b is not None]
        _lincomb(out, terms, stream=self.stream)
        return out


def _trange(n: int, disable: Any):
    try:
        from tqdm.auto import trange
    except ImportError:  # pragma: no cover - tqdm is optional
        return range(n)
    return trange(n, disable=disable)


def _run(
    model,
    x,
    sigmas,
    extra_args,
    callback,
    disable,
    kind,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
    solver_type="midpoint",
):
    """The shared loop of the single-evaluation samplers (one model call per step)."""
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, sigmas)
    x = loop.buf(x, "x")
    olds: list = [None, None]
    for i in _trange(len(loop.sig) - 1, disable):
        denoised = loop.buf(model(x, loop.s_in(sigmas, i), **extra_args), "model")
        if callback is not None:
            callback(
                {"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised}
            )
        cx, cd, cn = _k_step(kind, loop.sig, i, float(eta), float(s_noise), solver_type)
        noise = None
        # Draw exactly when k-diffusion draws (even where the weight is 0).
        sn = loop.sig[i + 1]
        if (kind == "euler_ancestral" and sn > 0) or (kind.endswith("_sde") and sn != 0 and eta):
            noise = loop.buf(noise_sampler(sigmas[i], sigmas[i + 1]), "noise_sampler")
        x = loop.comb([(cx, x), (cd[0], denoised), (cd[1], olds[0]), (cd[2], olds[1]), (cn, noise)])
        olds = [denoised, olds[0]]
    return x


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M)."""
    return _run(model, x, sigmas, extra_args, callback, disable, "dpmpp_2m")


def sample_dpmpp_2m_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
    solver_type="midpoint",
):
    """DPM-Solver++(2M) SDE (default noise: a Brownian tree, see the module docs)."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    if noise_sampler is None:
        noise_sampler = _default_sde_noise_sampler(x, sigmas)
    return _run(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        "dpmpp_2m_sde",
        eta,
        s_noise,
        noise_sampler,
        solver_type,
    )


def sample_dpmpp_3m_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
):
    """DPM-Solver++(3M) SDE (default noise: a Brownian tree, see the module docs)."""
    if noise_sampler is None:
        noise_sampler = _default_sde_noise_sampler(x, sigmas)
    return _run(
        model, x, sigmas, extra_args, callback, disable, "dpmpp_3m_sde", eta, s_noise, noise_sampler
    )


def sample_euler_ancestral(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
):
    """Ancestral sampling with Euler method steps."""
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x)
    return _run(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        "euler_ancestral",
        eta,
        s_noise,
        noise_sampler,
    )


def _churn(loop: _Loop, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """k-diffusion's churn: always draws randn_like(x); adds it when γ > 0. Returns (x, σ̂·1)."""
    gamma = _k_churn_gamma(
        loop.sig[i], len(loop.sig) - 1, float(s_churn), float(s_tmin), float(s_tmax)
    )
    eps = loop.buf(_randn_like(loop.like), "noise")
    sigma_hat_t = sigmas[i] * (gamma + 1)
    sigma_hat = loop.sig[i] * (gamma + 1)
    if gamma > 0:
        x = loop.comb([(1.0, x), (s_noise * math.sqrt(sigma_hat**2 - loop.sig[i] ** 2), eps)])
    return x, sigma_hat, sigma_hat_t


def _euler_like(
    model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, heun: bool
):
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, sigmas)
    x = loop.buf(x, "x")
    ones = loop.like.new_ones([loop.batch]) if loop.torch else np.ones(loop.batch)
    for i in _trange(len(loop.sig) - 1, disable):
        x, sigma_hat, sigma_hat_t = _churn(loop, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.buf(model(x, sigma_hat_t * ones, **extra_args), "model")
        if callback is not None:
            callback(
                {"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat_t, "denoised": denoised}
            )
        sn = loop.sig[i + 1]
        cx, cd, _ = _k_step("euler", loop.sig, i, sigma_hat=sigma_hat)
        x2 = loop.comb([(cx, x), (cd[0], denoised)])
        if not heun or sn == 0.0:
            x = x2
            continue
        denoised_2 = loop.buf(model(x2, loop.s_in(sigmas, i + 1), **extra_args), "model")
        a, b, c, e = _k_heun_correction(sigma_hat, sn)
        x = loop.comb([(a, x), (b, denoised), (c, x2), (e, denoised_2)])
    return x


def sample_euler(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """Algorithm 2 (Euler steps) of Karras et al. (2022)."""
    return _euler_like(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        s_churn,
        s_tmin,
        s_tmax,
        s_noise,
        heun=False,
    )


def sample_heun(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """Algorithm 2 (Heun steps) of Karras et al. (2022)."""
    return _euler_like(
        model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, heun=True
    )
