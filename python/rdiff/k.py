"""k-diffusion-style samplers on rdiff's fused Rust core (``rdiff.k``).

Drop-in replacements for ``k_diffusion.sampling``'s ``sample_euler``,
``sample_euler_ancestral``, ``sample_heun``, ``sample_dpm_2``, ``sample_dpm_2_ancestral``,
``sample_lms``, ``sample_dpmpp_2s_ancestral``, ``sample_dpmpp_sde``,
``sample_dpmpp_2m``, ``sample_dpmpp_2m_sde``, ``sample_dpmpp_3m_sde``, ``get_sigmas_karras``
and ``get_sigmas_exponential``, with the same
signatures and semantics: ``model(x, sigma, **extra_args)`` is a denoiser D(x; σ) (x = x₀ + σ·n),
``sigmas`` a decreasing schedule ending in 0, ``callback`` receives k-diffusion's dict
(``x``, ``i``, ``sigma``, ``sigma_hat``, ``denoised``) and ``disable`` turns the tqdm bar off.

Each update's weights come from Rust in float64 (``src/schedule/karras.rs``) and the update is
one fused pass over the caller's buffers (torch CPU or CUDA tensors, numpy arrays; float32
arithmetic, float64 for float64 inputs; rdiff's kernel on the current stream for CUDA). With
the same model, sigmas and seed, the results equal k-diffusion's up to float32 rounding.

Randomness: the samplers draw exactly what k-diffusion draws, in the same order, from the same
generators, so a seeded run reproduces k-diffusion's noise:

- ``sample_euler`` / ``sample_heun`` / ``sample_dpm_2`` draw ``torch.randn_like(x)`` at every
  step (k-diffusion does, even without churn); ``sample_euler_ancestral``,
  ``sample_dpm_2_ancestral`` and ``sample_dpmpp_2s_ancestral`` use ``noise_sampler`` (default
  ``torch.randn_like(x)``) where k-diffusion calls it.
- ``sample_dpmpp_sde`` (two draws per step), ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde``
  default to a :class:`BrownianTreeNoiseSampler`
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
from ._rdiff import (
    _k_churn_gamma,
    _k_dpm_solver_step,
    _k_heun_correction,
    _k_sigmas,
    _k_step,
    _k_two_stage,
    _lincomb,
    _Lms,
)
from .schedulers.lms import lms_scratch

__all__ = [
    "BrownianTreeNoiseSampler",
    "default_noise_sampler",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
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
    """torch.randn_like(x) (drawn by rdiff on the CPU, torch's numbers), or numpy noise."""
    if _tensor.is_torch(x):
        return _tensor.torch_randn(tuple(x.shape), None, x.device, x.dtype, False)
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

    def __init__(
        self, x: Any, sigmas: Any, *, eta: Any = 0.0, s_churn: Any = 0.0, ordered: bool = True
    ):
        """Checks the arguments every sampler shares: ``sigmas`` finite, non-negative and (for
        the samplers that take a list, ``ordered``) strictly decreasing, so every step starts
        from a positive σ; ``eta`` and ``s_churn`` non-negative. (k-diffusion would return
        NaN for the rest.)"""
        _tensor.check_float(x, "x")
        if x.ndim == 0:
            raise ValueError("x: expected a batch (shape (B, ...)), got a 0-d value")
        self.like = x
        self.stream = _tensor.cuda_stream(x)
        self.torch = _tensor.is_torch(x)
        self.batch = int(x.shape[0])
        self.sig = [float(s) for s in sigmas]
        if len(self.sig) < 1:
            raise ValueError("sigmas: expected at least one value")
        if not all(math.isfinite(s) and s >= 0.0 for s in self.sig):
            raise ValueError(f"sigmas: must be finite and non-negative, got {self.sig}")
        for i in range(len(self.sig) - 1) if ordered else ():
            if not self.sig[i + 1] < self.sig[i]:
                raise ValueError(
                    f"sigmas: must decrease strictly (each step from a positive σ to a smaller "
                    f"one), got σ[{i}] = {self.sig[i]} then σ[{i + 1}] = {self.sig[i + 1]}"
                )
        for name, v in (("eta", eta), ("s_churn", s_churn)):
            if not (math.isfinite(float(v)) and float(v) >= 0.0):
                raise ValueError(f"{name}: must be a non-negative finite number, got {v}")
        self.ones = x.new_ones([self.batch]) if self.torch else np.ones(self.batch)

    def denoise(self, model: Callable, x: Any, sigma: Any, extra_args: dict) -> Any:
        """D(x; σ), the model called with σ·ones(batch) as k-diffusion calls it."""
        return self.buf(model(x, sigma * self.ones, **extra_args), "model")

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


def _report(callback: Any, x: Any, i: int, sigma: Any, sigma_hat: Any, denoised: Any) -> None:
    """k-diffusion's per-step callback dict."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


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
    loop = _Loop(x, sigmas, eta=eta)
    x = loop.buf(x, "x")
    olds: list = [None, None]
    for i in _trange(len(loop.sig) - 1, disable):
        denoised = loop.buf(model(x, loop.s_in(sigmas, i), **extra_args), "model")
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
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
    loop = _Loop(x, sigmas, s_churn=s_churn)
    x = loop.buf(x, "x")
    for i in _trange(len(loop.sig) - 1, disable):
        x, sigma_hat, sigma_hat_t = _churn(loop, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(model, x, sigma_hat_t, extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat_t, denoised)
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


# -- the two-evaluation samplers and LMS ------------------------------------------------------
# The σ a model sees is formed as k-diffusion forms it (in the caller's framework and dtype);
# the weights come from Rust in float64.


def _log(s: Any) -> Any:
    return s.log() if _tensor.is_torch(s) else np.log(s)


def _exp(s: Any) -> Any:
    return s.exp() if _tensor.is_torch(s) else np.exp(s)


def _log_mid(a: Any, b: Any) -> Any:
    """exp(lerp(log a, log b, ½)), torch's lerp at ½ being end − (end − start)·½."""
    la, lb = _log(a), _log(b)
    return _exp(lb - (lb - la) * 0.5)


def _ancestral(sigma_from: Any, sigma_to: Any, eta: float) -> tuple[Any, Any]:
    """k-diffusion's get_ancestral_step on the schedule's own values (σ_down, σ_up)."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def _to(loop: _Loop, x: Any, denoised: Any, sigma: float, target: float, extra=()) -> Any:
    """An Euler step of dx/dσ = (x − D)/σ from σ to ``target`` (plus ``extra`` terms)."""
    cx, cd, _ = _k_step("euler", [sigma, target], 0)
    return loop.comb([(cx, x), (cd[0], denoised), *extra])


def sample_dpm_2(
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
    """A sampler inspired by DPM-Solver-2 and Algorithm 2 of Karras et al. (2022): an Euler
    step to the log-midpoint σ, the model there, the whole step with its slope (Euler to 0)."""
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, sigmas, s_churn=s_churn)
    x = loop.buf(x, "x")
    for i in _trange(len(loop.sig) - 1, disable):
        x, sigma_hat, sigma_hat_t = _churn(loop, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(model, x, sigma_hat_t, extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat_t, denoised)
        sn = loop.sig[i + 1]
        if sn == 0.0:
            x = _to(loop, x, denoised, sigma_hat, sn)
            continue
        mid_t = _log_mid(sigma_hat_t, sigmas[i + 1])
        first, _, second, _ = _k_two_stage("dpm_2", sigma_hat, float(mid_t), sn)
        x2 = loop.comb([(first[0], x), (first[1], denoised)])
        d2 = loop.denoise(model, x2, mid_t, extra_args)
        x = loop.comb([(second[0], x), (second[2], x2), (second[3], d2)])
    return x


def sample_dpm_2_ancestral(
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
    """Ancestral sampling with DPM-Solver second-order steps (to σ_down, then σ_up·n)."""
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, sigmas, eta=eta)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    x = loop.buf(x, "x")
    for i in _trange(len(loop.sig) - 1, disable):
        denoised = loop.buf(model(x, loop.s_in(sigmas, i), **extra_args), "model")
        down_t, up_t = _ancestral(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        sigma, down, up = loop.sig[i], float(down_t), float(up_t)
        if down == 0.0:
            x = _to(loop, x, denoised, sigma, down)
            continue
        mid_t = _log_mid(sigmas[i], down_t)
        first, _, second, _ = _k_two_stage("dpm_2", sigma, float(mid_t), down)
        x2 = loop.comb([(first[0], x), (first[1], denoised)])
        d2 = loop.denoise(model, x2, mid_t, extra_args)
        noise = loop.buf(noise_sampler(sigmas[i], sigmas[i + 1]), "noise_sampler")
        x = loop.comb([(second[0], x), (second[2], x2), (second[3], d2), (s_noise * up, noise)])
    return x


def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep: the Lagrange polynomial through the last ``order`` slopes, integrated
    over each step exactly."""
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, sigmas)
    x = loop.buf(x, "x")
    order = int(order)
    if order < 1:
        raise ValueError(f"order: must be at least 1, got {order}")
    # LMSDiscreteScheduler's core: a denoiser is a "sample" predictor (x₀ = D)
    core = _Lms(loop.sig, "sample")
    ds: list = []  # the slopes (x − D)/σ, oldest first, as k-diffusion keeps them
    for i in _trange(len(loop.sig) - 1, disable):
        denoised = loop.buf(model(x, loop.s_in(sigmas, i), **extra_args), "model")
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        o = min(i + 1, order)
        history = list(reversed(ds[-(order - 1) :] if order > 1 else []))[: o - 1]
        d, x0, prev = (_tensor.empty_like(x) for _ in range(3))
        core.step(
            i,
            o,
            model_output=denoised,
            sample=x,
            history=history,
            derivative=d,
            x0=x0,
            prev=prev,
            scratch=lms_scratch(history, x, x.dtype),
            stream=loop.stream,
        )
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        x = prev
    return x


def sample_dpmpp_2s_ancestral(
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
    """Ancestral sampling with DPM-Solver++(2S) second-order steps."""
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, sigmas, eta=eta)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    x = loop.buf(x, "x")
    for i in _trange(len(loop.sig) - 1, disable):
        denoised = loop.buf(model(x, loop.s_in(sigmas, i), **extra_args), "model")
        down_t, up_t = _ancestral(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        sigma, down, up = loop.sig[i], float(down_t), float(up_t)
        noise = None
        if down == 0.0:
            if loop.sig[i + 1] > 0:
                noise = loop.buf(noise_sampler(sigmas[i], sigmas[i + 1]), "noise_sampler")
            x = _to(loop, x, denoised, sigma, down, [(s_noise * up, noise)])
            continue
        # t = −log σ; the midpoint s = t + h/2 in the schedule's dtype, as k-diffusion's
        t, t_next = -_log(sigmas[i]), -_log(down_t)
        sigma_s_t = _exp(-(t + 0.5 * (t_next - t)))
        first, _, second, _ = _k_two_stage("dpmpp_2s", sigma, float(sigma_s_t), down)
        x2 = loop.comb([(first[0], x), (first[1], denoised)])
        d2 = loop.denoise(model, x2, sigma_s_t, extra_args)
        if loop.sig[i + 1] > 0:
            noise = loop.buf(noise_sampler(sigmas[i], sigmas[i + 1]), "noise_sampler")
        x = loop.comb([(second[0], x), (second[3], d2), (s_noise * up, noise)])
    return x


def sample_dpmpp_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
    r=1 / 2,
):
    """DPM-Solver++ (stochastic): two ancestral stages per step, the second from the mix
    (1 − 1/2r)·D + 1/2r·D₂ (default noise: a Brownian tree, see the module docs)."""
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, sigmas, eta=eta)
    if noise_sampler is None:
        noise_sampler = _default_sde_noise_sampler(x, sigmas)
    x = loop.buf(x, "x")
    for i in _trange(len(loop.sig) - 1, disable):
        denoised = loop.buf(model(x, loop.s_in(sigmas, i), **extra_args), "model")
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if loop.sig[i + 1] == 0.0:
            x = _to(loop, x, denoised, loop.sig[i], 0.0)
            continue
        t, t_next = -_log(sigmas[i]), -_log(sigmas[i + 1])
        sig_t, sig_s, sig_next = _exp(-t), _exp(-(t + (t_next - t) * r)), _exp(-t_next)
        first, n1, second, n2 = _k_two_stage(
            "dpmpp_sde",
            float(sig_t),
            float(sig_s),
            float(sig_next),
            eta=float(eta),
            s_noise=float(s_noise),
            r=float(r),
        )
        noise = loop.buf(noise_sampler(sig_t, sig_s), "noise_sampler")
        x2 = loop.comb([(first[0], x), (first[1], denoised), (n1, noise)])
        d2 = loop.denoise(model, x2, sig_s, extra_args)
        noise = loop.buf(noise_sampler(sig_t, sig_next), "noise_sampler")
        x = loop.comb([(second[0], x), (second[1], denoised), (second[3], d2), (n2, noise)])
    return x


# -- k-diffusion's DPMSolver: sample_dpm_fast, sample_dpm_adaptive ------------------------------


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _pbar(total: int | None, disable: Any):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return _NoBar()
    return tqdm(total=total, disable=disable)


class _Times:
    """t = −log σ as k-diffusion forms it: float32 torch scalars (numpy float32 for numpy)."""

    def __init__(self, torch_input: bool):
        self.torch = _torch() if torch_input else None

    def scalar(self, v: float) -> Any:
        return self.torch.tensor(v) if self.torch else np.float32(v)

    def linspace(self, a: Any, b: Any, n: int) -> Any:
        if self.torch:
            return self.torch.linspace(a, b, n)
        return np.linspace(a, b, n, dtype=np.float32)

    def minimum(self, a: Any, b: Any) -> Any:
        return self.torch.minimum(a, b) if self.torch else np.minimum(a, b)


class _KDpmSolver:
    """k-diffusion's ``DPMSolver`` over a ``_Loop``: ε = (x − D)/σ, cached per step under its
    keys, and the order-1/2/3 steps with weights from Rust (``_k_dpm_solver_step``)."""

    def __init__(self, loop: _Loop, model, extra_args, bar):
        self.loop, self.model, self.extra, self.bar = loop, model, extra_args, bar

    @staticmethod
    def sigma(t: Any) -> Any:
        return _exp(-t)

    def eps(self, cache: dict, key: str, x: Any, t: Any) -> Any:
        if key in cache:
            return cache[key]
        sig = self.sigma(t)
        d = self.loop.denoise(self.model, x, sig, self.extra)
        s = float(sig)
        cache[key] = self.loop.comb([(1.0 / s, x), (-1.0 / s, d)])
        self.bar.update(1)
        return cache[key]

    def step(self, order: int, x: Any, t: Any, t_next: Any, cache: dict, r1=None) -> list:
        """The terms of x_next (the caller adds its noise and runs the pass)."""
        r1 = (0.5 if order == 2 else 1 / 3) if r1 is None else r1
        r2 = 2 / 3
        u1, u2, w = _k_dpm_solver_step(order, float(t), float(t_next), r1, r2)
        c = self.loop.comb
        eps = self.eps(cache, "eps", x, t)
        if order == 1:
            return [(1.0, x), (w[0], eps)]
        h = t_next - t
        e1 = self.eps(cache, "eps_r1", c([(1.0, x), (u1, eps)]), t + r1 * h)
        if order == 2:
            return [(1.0, x), (w[0], eps), (w[1], e1)]
        e2 = self.eps(cache, "eps_r2", c([(1.0, x), (u2[0], eps), (u2[1], e1)]), t + r2 * h)
        return [(1.0, x), (w[0], eps), (w[2], e2)]

    def ancestral(self, times: _Times, t: Any, t_next: Any, t_end: Any, eta: float):
        """(t_next', σ_up): the ancestral target time and the noise that tops it up to σ(t_next)."""
        if not eta:
            return t_next, 0.0
        sd, _ = _ancestral(self.sigma(t), self.sigma(t_next), eta)
        t_next_ = times.minimum(t_end, -_log(sd))
        return t_next_, float((self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5)


def _check_sigma_range(sigma_min: Any, sigma_max: Any) -> None:
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")


def sample_dpm_fast(
    model,
    x,
    sigma_min,
    sigma_max,
    n,
    extra_args=None,
    callback=None,
    disable=None,
    eta=0.0,
    s_noise=1.0,
    noise_sampler=None,
):
    """DPM-Solver-Fast (fixed step size, ``n`` model evaluations: third-order steps, the last
    one or two lower), uniform in t = −log σ from σ_max to σ_min."""
    _check_sigma_range(sigma_min, sigma_max)
    n = _check_n(n)
    if n < 1:
        raise ValueError("n: DPM-Solver-Fast needs at least one model evaluation")
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, [float(sigma_max), float(sigma_min)], eta=eta, ordered=False)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    times = _Times(loop.torch)
    t_start, t_end = -_log(times.scalar(sigma_max)), -_log(times.scalar(sigma_min))
    if not t_end > t_start and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    m = n // 3 + 1
    ts = times.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    x = loop.buf(x, "x")
    with _pbar(n, disable) as bar:
        solver = _KDpmSolver(loop, model, extra_args, bar)
        for i, order in enumerate(orders):
            cache: dict = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = solver.ancestral(times, t, t_next, t_end, eta)
            eps = solver.eps(cache, "eps", x, t)
            if callback is not None:
                denoised = loop.comb([(1.0, x), (-float(solver.sigma(t)), eps)])
                sig = solver.sigma(ts[i])
                callback(
                    {
                        "sigma": sig,
                        "sigma_hat": solver.sigma(t),
                        "x": x,
                        "i": i,
                        "t": ts[i],
                        "t_up": t,
                        "denoised": denoised,
                    }
                )
            terms = solver.step(order, x, t, t_next_, cache)
            noise = loop.buf(noise_sampler(solver.sigma(t), solver.sigma(t_next)), "noise_sampler")
            x = loop.comb([*terms, (su * s_noise, noise)])
    return x


class _PidStepSize:
    """k-diffusion's PIDStepSizeController (step size h in t, proposed from the error)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


def _scaled_error(x_low: Any, x_high: Any, x_prev: Any, atol: float, rtol: float) -> float:
    """‖(x_low − x_high)/δ‖/√numel, δ = max(atol, rtol·max(|x_low|, |x_prev|)), in x's dtype."""
    if _tensor.is_torch(x_low):
        torch = _torch()
        delta = torch.maximum(
            torch.tensor(atol), torch.tensor(rtol) * torch.maximum(x_low.abs(), x_prev.abs())
        )
        return float(torch.linalg.norm((x_low - x_high) / delta) / x_low.numel() ** 0.5)
    a, r = np.float32(atol), np.float32(rtol)
    delta = np.maximum(a, r * np.maximum(np.abs(x_low), np.abs(x_prev)))
    return float(np.linalg.norm((x_low - x_high) / delta) / x_low.size**0.5)


def sample_dpm_adaptive(
    model,
    x,
    sigma_min,
    sigma_max,
    extra_args=None,
    callback=None,
    disable=None,
    order=3,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    pcoeff=0.0,
    icoeff=1.0,
    dcoeff=0.0,
    accept_safety=0.81,
    eta=0.0,
    s_noise=1.0,
    noise_sampler=None,
    return_info=False,
):
    """DPM-Solver-12 and 23 (adaptive step size in t = −log σ, a PID controller on the
    difference of the order-``order`` step and the one below). Returns x, or (x, info) with
    ``return_info`` (steps, nfe, n_accept, n_reject)."""
    _check_sigma_range(sigma_min, sigma_max)
    if order not in {2, 3}:
        raise ValueError("order should be 2 or 3")
    extra_args = {} if extra_args is None else extra_args
    loop = _Loop(x, [float(sigma_max), float(sigma_min)], eta=eta, ordered=False)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    times = _Times(loop.torch)
    t_start, t_end = -_log(times.scalar(sigma_max)), -_log(times.scalar(sigma_min))
    forward = t_end > t_start
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    h_init = abs(h_init) * (1 if forward else -1)
    x = loop.buf(x, "x")
    s, x_prev = t_start, x
    pid = _PidStepSize(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    with _pbar(None, disable) as bar:
        solver = _KDpmSolver(loop, model, extra_args, bar)
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            cache: dict = {}
            t = times.minimum(t_end, s + pid.h) if forward else -times.minimum(-t_end, -(s + pid.h))
            t_, su = solver.ancestral(times, s, t, t_end, eta)
            eps = solver.eps(cache, "eps", x, s)
            denoised = None
            if callback is not None:
                denoised = loop.comb([(1.0, x), (-float(solver.sigma(s)), eps)])
            if order == 2:
                x_low = loop.comb(solver.step(1, x, s, t_, cache))
                high = solver.step(2, x, s, t_, cache)
            else:
                x_low = loop.comb(solver.step(2, x, s, t_, cache, r1=1 / 3))
                high = solver.step(3, x, s, t_, cache)
            x_high = loop.comb(high)
            error = _scaled_error(x_low, x_high, x_prev, atol, rtol)
            if pid.propose_step(error):
                x_prev = x_low
                noise = loop.buf(noise_sampler(solver.sigma(s), solver.sigma(t)), "noise_sampler")
                # (without ancestral noise the step is x_high, already formed)
                x = x_high if su == 0.0 else loop.comb([*high, (su * s_noise, noise)])
                s = t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += order
            info["steps"] += 1
            if callback is not None:
                callback(
                    {
                        "sigma": solver.sigma(s),
                        "sigma_hat": solver.sigma(s),
                        "x": x,
                        "i": info["steps"] - 1,
                        "t": s,
                        "t_up": s,
                        "denoised": denoised,
                        "error": error,
                        "h": pid.h,
                        **info,
                    }
                )
    if return_info:
        return x, info
    return x
