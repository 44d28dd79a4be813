"""The DDPM scheduler (Ho et al. 2020), a drop-in for diffusers' own."""

from __future__ import annotations

import warnings
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
)
from .ddim import (
    _COMPATIBLES,
    _PREDICTIONS,
    _SPACINGS,
    _check_pair,
    _DiscreteAlphasMixin,
    _int_timestep,
    _noise_like,
    _step_buffers,
)

_VARIANCE_TYPES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)


class _PreviousTimestepMixin:
    """diffusers' ``previous_timestep`` of DDPM and LCM: the next timestep of the schedule
    (−1 after the last), or t − 1 before any set_timesteps."""

    custom_timesteps: bool
    num_inference_steps: int | None

    def previous_timestep(self, timestep: Any) -> Any:
        """The next timestep of the schedule (−1 after the last), or t − 1 with no schedule:
        an int, or a 0-d int64 tensor where ``timesteps`` is a tensor (as diffusers')."""
        return self._as_timestep(self._prev_timestep(_int_timestep(timestep)))

    def _prev_timestep(self, t: int) -> int:
        """``previous_timestep`` as an int (what ``step`` and ``_get_variance`` use)."""
        if self.custom_timesteps or self.num_inference_steps:
            ts = self._timesteps_numpy()
            hits = np.nonzero(ts == t)[0]
            if len(hits) == 0:
                raise ValueError(f"timestep: {t} is not in this scheduler's timesteps")
            i = int(hits[0])
            return -1 if i == len(ts) - 1 else int(ts[i + 1])
        return t - 1


class DDPMScheduler(_PreviousTimestepMixin, _DiscreteAlphasMixin, SchedulerBase):
    """Denoising diffusion probabilistic models (Ho et al. 2020) with diffusers' interface.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Every constructor argument has diffusers' meaning and default, including every
    ``variance_type`` but ``fixed_large_log`` (all-NaN samples in diffusers: a ValueError);
    learned variances read the model output's second half of channels, as diffusers splits it.
    ``step`` runs one fused pass in Rust (x₀ prediction, clipping or dynamic thresholding, the
    posterior mean and the variance times noise); noise is drawn as diffusers draws it, in the
    model output's dtype, whenever the timestep is above 0.
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
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        check_choice("prediction_type", prediction_type, _PREDICTIONS)
        check_choice("timestep_spacing", timestep_spacing, _SPACINGS)
        if variance_type == "fixed_large_log":
            raise ValueError(
                "variance_type: 'fixed_large_log' gives all-NaN samples in diffusers (its step "
                "takes the square root of log β, which is negative); 'fixed_large' is the same "
                "variance (β) in linear form"
            )
        if variance_type not in _VARIANCE_TYPES:
            # diffusers accepts any string and steps with β̃ (its `_get_variance` falls through
            # every branch); so does rdiff, saying so.
            warnings.warn(
                f"variance_type: unknown {variance_type!r}, stepping with 'fixed_small' as "
                f"diffusers does; expected one of {', '.join(_VARIANCE_TYPES)}",
                UserWarning,
                stacklevel=2,
            )
        self._init_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )
        self.one = 1.0
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.variance_type = variance_type
        n = len(self._ac)
        self.timesteps = self._timesteps_array(np.arange(n - 1, -1, -1, dtype=np.int64))
        self._core = _Ddim(
            [float(a) for a in self._ac],
            1.0,
            prediction_type,
            bool(clip_sample),
            float(clip_sample_range),
            bool(thresholding),
            float(dynamic_thresholding_ratio),
            float(sample_max_value),
            variance_type if variance_type in _VARIANCE_TYPES else "fixed_small",
        )
        self._built_from = self.config

    def __len__(self) -> int:
        return len(self._ac)

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """diffusers' DDPM timesteps: spaced for ``num_inference_steps`` or custom (descending)."""
        n_train = len(self._ac)
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("set_timesteps: pass only one of num_inference_steps or timesteps")
        if timesteps is not None:
            ts = np.asarray(
                timesteps.detach().cpu().numpy() if _tensor.is_torch(timesteps) else timesteps,
                dtype=np.int64,
            ).reshape(-1)
            if len(ts) == 0:
                raise ValueError("timesteps: must not be empty")
            if np.any(np.diff(ts) >= 0):
                raise ValueError("timesteps: custom timesteps must be in descending order")
            if ts[0] >= n_train:
                raise ValueError(f"timesteps: must start before num_train_timesteps: {n_train}")
            if ts[-1] < 0:
                raise ValueError(f"timesteps: must be >= 0, got {int(ts[-1])}")
            self.custom_timesteps = True
        else:
            num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
            cfg = self.config
            ts = _ddim_timesteps(
                n_train, int(num_inference_steps), cfg.timestep_spacing, int(cfg.steps_offset)
            ).astype(np.int64)
            self.num_inference_steps = int(num_inference_steps)
            self.custom_timesteps = False
        self.timesteps = self._timesteps_array(ts, device)

    def _get_variance(
        self, t: Any, predicted_variance: Any = None, variance_type: str | None = None
    ) -> Any:
        """diffusers' ``DDPMScheduler._get_variance``, with its return values: the variance
        (``fixed_small``, ``fixed_large``, unknown types), its square root
        (``fixed_small_log``), log β (``fixed_large_log``), ``predicted_variance``
        (``learned``) or the interpolated log variance (``learned_range``). A float32 scalar
        (a 0-d tensor where ``timesteps`` is a tensor)."""
        t = _int_timestep(t)
        prev_t = self._prev_timestep(t)
        small, beta = self._core.ddpm_variances(t, prev_t)
        kind = self.variance_type if variance_type is None else variance_type
        if kind == "learned":
            return predicted_variance
        if kind == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * float(np.log(beta)) + (1 - frac) * float(np.log(small))
        value = {
            "fixed_small_log": np.exp(0.5 * np.log(small)),
            "fixed_large": beta,
            "fixed_large_log": np.log(beta),
        }.get(kind, small)
        return self._as_scalar(value)

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: int | Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One DDPM ancestral step. Returns ``SchedulerOutput(prev_sample,
        pred_original_sample)`` (a 2-tuple with ``return_dict=False``)."""
        self._sync_config()
        shape = _check_pair(model_output, sample)
        mo_shape = tuple(model_output.shape)
        learned = self.variance_type in ("learned", "learned_range")
        split = (
            learned
            and len(mo_shape) == len(shape)
            and len(shape) >= 2
            and mo_shape[0] == shape[0]
            and mo_shape[1] == 2 * shape[1]
            and mo_shape[2:] == shape[2:]
        )
        if mo_shape != shape and not split:
            raise ValueError(f"model_output: shape {mo_shape} does not match sample's {shape}")
        t = _int_timestep(timestep)
        prev_t = self._prev_timestep(t)
        noise = None
        if t > 0:
            if learned and not split:
                raise ValueError(
                    f"model_output: variance_type {self.variance_type!r} needs the predicted "
                    f"variance as extra channels, shape {(shape[0], 2 * shape[1], *shape[2:])}"
                )
            noise = _noise_like(shape, model_output, generator, None)
        b = _step_buffers(model_output, sample, self.config.thresholding)
        self._core.ddpm(t, prev_t, noise=noise, **b)
        prev, x0 = b["prev"], b["x0"]
        if not return_dict:
            return (prev, x0)
        return self._output_type(prev_sample=prev, pred_original_sample=x0)
