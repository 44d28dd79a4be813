"""The DDIM scheduler (Song et al. 2021), a drop-in for diffusers' own."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _Ddim, _ddim_timesteps
from ._base import (
    SchedulerBase,
    SchedulerOutput,
    check_choice,
    check_int,
    exclusive,
    loop_setup,
    thresholding_scratch,
)

_COMPATIBLES = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
]
_PREDICTIONS = ("epsilon", "sample", "v_prediction")
_SPACINGS = ("linspace", "leading", "trailing")


def _int_timestep(timestep: Any) -> int:
    if hasattr(timestep, "item"):
        timestep = timestep.item()
    if isinstance(timestep, float):
        if not timestep.is_integer():
            raise ValueError(f"timestep: expected an integer timestep, got {timestep}")
        return int(timestep)
    try:
        t = int(timestep)
    except (TypeError, ValueError):
        raise TypeError(
            f"timestep: expected an int or a 0-d tensor, got {type(timestep).__name__}"
        ) from None
    if abs(t) >= 1 << 62:  # (past what the core's integers hold: no training timestep)
        raise ValueError(f"timestep: {t} is not a training timestep")
    return t


class _DiscreteAlphasMixin:
    """add_noise / get_velocity from ᾱ at the given training timesteps, as DDIM and DDPM do."""

    alphas_cumprod: np.ndarray

    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ts = np.asarray(timesteps).astype(np.int64).reshape(-1)
        n = len(self._ac)
        if ts.size and (ts.min() < 0 or ts.max() >= n):
            raise ValueError(f"timesteps: must lie in [0, {n}), got {ts.tolist()}")
        ac = self._ac[ts]
        return np.sqrt(ac), np.sqrt(1.0 - ac)

    def get_velocity(self, sample: Any, noise: Any, timesteps: Any) -> Any:
        """v = √ᾱ_t ε − √(1−ᾱ_t) x₀ with one timestep per sample; sample's type and dtype."""
        _tensor.check_float(sample, "sample")
        _tensor.same_framework(sample, noise, "get_velocity")
        if tuple(sample.shape) != tuple(noise.shape):
            raise ValueError(
                f"noise: shape {tuple(noise.shape)} differs from sample's {tuple(sample.shape)}"
            )
        if _tensor.is_torch(timesteps):
            timesteps = timesteps.detach().cpu().numpy()
        alpha, sigma = self._alpha_sigma_for_noise(np.atleast_1d(np.asarray(timesteps)))
        shape = (-1,) + (1,) * (sample.ndim - 1)
        if _tensor.is_torch(sample):
            torch = _tensor.torch_module()
            kw = dict(device=sample.device, dtype=sample.dtype)
            a = torch.as_tensor(alpha, **kw).reshape(shape)
            s = torch.as_tensor(sigma, **kw).reshape(shape)
        else:
            a = alpha.astype(sample.dtype).reshape(shape)
            s = sigma.astype(sample.dtype).reshape(shape)
        return a * noise - s * sample


def _check_pair(model_output: Any, sample: Any) -> tuple:
    _tensor.check_array(model_output, "model_output")
    _tensor.check_array(sample, "sample")
    _tensor.same_framework(model_output, sample, "step", devices=False)
    shape = tuple(sample.shape)
    if len(shape) < 1 or shape[0] == 0:
        raise ValueError(f"sample: expected a non-empty batch, got shape {shape}")
    return shape


def _noise_like(shape: tuple, model_output: Any, generator: Any, variance_noise: Any) -> Any:
    """diffusers' randn_tensor(shape, dtype=model_output.dtype), or the given noise cast to
    it, as float32 (the dtype the fused pass reads noise in; widening is exact)."""
    if variance_noise is not None:
        _tensor.same_framework(model_output, variance_noise, "variance_noise")
        if tuple(variance_noise.shape) != shape:
            raise ValueError(
                f"variance_noise: shape {tuple(variance_noise.shape)} does not match {shape}"
            )
        if _tensor.is_torch(variance_noise):
            noise = variance_noise.to(dtype=model_output.dtype)
        else:
            noise = np.asarray(variance_noise).astype(model_output.dtype)
    else:
        noise = _tensor.randn(shape, model_output, generator, model_output.dtype, widen=True)
    return _tensor.to_float32(noise, model_output)


def _step_buffers(model_output: Any, sample: Any, thresholding: bool) -> dict:
    """The contiguous inputs, the output buffers (x₀, the new sample) and, with
    thresholding, its scratch, as the core's keyword arguments."""
    x = _tensor.contiguous(sample)
    out = {
        "model_output": _tensor.contiguous(model_output),
        "sample": x,
        "x0": _tensor.empty_like(x, dtype=model_output.dtype),
        "prev": _tensor.empty_like(x, dtype=model_output.dtype),
        "stream": _tensor.cuda_stream(x),
    }
    if thresholding:
        out["bounds"] = thresholding_scratch(x, int(x.shape[0]))
    return out


class DDIMScheduler(_DiscreteAlphasMixin, SchedulerBase):
    """Denoising diffusion implicit models (Song et al. 2021) with diffusers' interface.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Every constructor argument has diffusers' meaning and default. ``step`` runs one fused pass
    in Rust (x₀ prediction, clipping or dynamic thresholding, the ε recomputation, the η update
    and its noise) on numpy arrays or torch CPU or CUDA tensors of float32, float16, bfloat16
    (torch) or float64 (on the CPU), with arithmetic in float32 (float64 when every buffer is);
    outputs have the model output's type, dtype and device.
    """

    _step_fields = ("prev_sample", "pred_original_sample")

    _compatibles: ClassVar[list[str]] = list(_COMPATIBLES)
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        check_choice("prediction_type", prediction_type, _PREDICTIONS)
        check_choice("timestep_spacing", timestep_spacing, _SPACINGS)
        self._init_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self._ac[0])
        self.init_noise_sigma = 1.0
        n = len(self._ac)
        self.timesteps = self._timesteps_array(np.arange(n - 1, -1, -1, dtype=np.int64))
        self._core = _Ddim(
            [float(a) for a in self._ac],
            self.final_alpha_cumprod,
            prediction_type,
            bool(clip_sample),
            float(clip_sample_range),
            bool(thresholding),
            float(dynamic_thresholding_ratio),
            float(sample_max_value),
        )
        self._built_from = self.config

    def __len__(self) -> int:
        return len(self._ac)

    def _get_variance(self, timestep: Any, prev_timestep: Any) -> Any:
        """β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev), as diffusers' DDIM computes it: a float32
        scalar (a 0-d tensor where ``timesteps`` is a tensor, as diffusers')."""
        v = self._core.variance(_int_timestep(timestep), _int_timestep(prev_timestep))
        return self._as_scalar(v)

    @exclusive
    @loop_setup
    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """diffusers' DDIM timesteps (int64, descending) for ``num_inference_steps``."""
        cfg = self.config
        num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
        ts = _ddim_timesteps(
            len(self._ac),
            int(num_inference_steps),
            cfg.timestep_spacing,
            int(cfg.steps_offset),
        )
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = self._timesteps_array(ts.astype(np.int64), device)

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: int | Any,
        sample: Any,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Any = None,
        variance_noise: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One DDIM step from ``timestep`` to ``timestep − N // num_inference_steps``.

        Returns ``SchedulerOutput(prev_sample, pred_original_sample)`` (a 2-tuple with
        ``return_dict=False``). With ``eta > 0`` noise is drawn as diffusers does, in the model
        output's dtype, from ``generator`` (torch.Generator or a list of them; a numpy Generator
        for numpy input) unless ``variance_noise`` is given.
        """
        self._sync_config()
        if self.num_inference_steps is None:
            raise ValueError(
                "step: the number of inference steps is not set; call set_timesteps first"
            )
        shape = _check_pair(model_output, sample)
        if tuple(model_output.shape) != shape:
            raise ValueError(
                f"model_output: shape {tuple(model_output.shape)} does not match sample's {shape}"
            )
        eta = float(eta)
        t = _int_timestep(timestep)
        prev_t = t - len(self._ac) // self.num_inference_steps
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("step: pass either generator or variance_noise, not both")
            noise = _noise_like(shape, model_output, generator, variance_noise)
        b = _step_buffers(model_output, sample, self.config.thresholding)
        self._core.ddim(t, prev_t, eta, bool(use_clipped_model_output), noise=noise, **b)
        prev, x0 = b["prev"], b["x0"]
        if not return_dict:
            return (prev, x0)
        return self._output_type(prev_sample=prev, pred_original_sample=x0)
