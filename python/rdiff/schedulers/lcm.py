"""The latent consistency model scheduler (Luo et al. 2023), a drop-in for diffusers'
``LCMScheduler``: 2–8 steps of a distilled model (LCM, LCM-LoRA)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _Ddim
from ._base import SchedulerBase, check_choice, check_int, exclusive, loop_setup
from .ddim import (
    _PREDICTIONS,
    _check_pair,
    _DiscreteAlphasMixin,
    _int_timestep,
    _noise_like,
    _step_buffers,
)
from .ddpm import _PreviousTimestepMixin


@dataclass
class LCMSchedulerOutput:
    """What ``LCMScheduler.step`` returns: the next sample and the denoised (x₀) estimate, both
    of the model output's type, dtype and device."""

    prev_sample: Any
    denoised: Any = None


class LCMScheduler(_PreviousTimestepMixin, _DiscreteAlphasMixin, SchedulerBase):
    """Multistep consistency sampling with diffusers' interface: each step maps the sample to
    the consistency model's denoised estimate c_skip·x + c_out·x₀ (σ_data = 0.5, the timestep
    scaled by ``timestep_scaling``) and re-noises it to the next timestep (not after the last).

    Every constructor argument has diffusers' meaning and default (``original_inference_steps``,
    every prediction type, clipping or dynamic thresholding of x₀, ``set_alpha_to_one``,
    zero-SNR rescaling); ``set_timesteps`` takes ``num_inference_steps`` or custom
    ``timesteps`` and img2img's ``strength``. ``step`` is one fused pass (x₀, its bound, the
    denoised sample, kept, and the re-noised sample); noise is drawn as diffusers draws it.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _compatibles: ClassVar[list[str]] = []
    order = 1
    _output_type: ClassVar[type] = LCMSchedulerOutput
    _step_fields = ("prev_sample", "denoised")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        check_choice("prediction_type", prediction_type, _PREDICTIONS)
        if not math.isfinite(float(timestep_scaling)):
            raise ValueError(f"timestep_scaling: must be finite, got {timestep_scaling}")
        self._init_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )
        final = 1.0 if set_alpha_to_one else float(self._ac[0])
        self.final_alpha_cumprod = self._as_scalar(final)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        n = len(self._ac)
        self.timesteps = self._timesteps_array(np.arange(n - 1, -1, -1, dtype=np.int64))
        self._core = _Ddim([float(a) for a in self._ac], final, prediction_type, *self._bounds())
        self._built_from = self.config

    def _bounds(self) -> tuple:
        """The core's bound on x₀: (clip_sample, clip_sample_range, thresholding,
        dynamic_thresholding_ratio, sample_max_value) from the config."""
        cfg = self.config
        return (
            bool(cfg.clip_sample),
            float(cfg.clip_sample_range),
            bool(cfg.thresholding),
            float(cfg.dynamic_thresholding_ratio),
            float(cfg.sample_max_value),
        )

    def __len__(self) -> int:
        return len(self._ac)

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        """diffusers' LCM schedule: ``num_inference_steps`` evenly chosen (descending, int64)
        from the ``original_inference_steps × strength`` distillation timesteps, or custom
        descending ``timesteps`` (started at ``strength``, as img2img does)."""
        cfg = self.config
        n_train = len(self._ac)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        original = check_int(
            cfg.original_inference_steps
            if original_inference_steps is None
            else original_inference_steps,
            "original_inference_steps",
        )
        strength = float(strength)
        if not (0.0 < strength <= 1.0):
            raise ValueError(f"strength: must lie in (0, 1], got {strength}")
        origin = self._origin_timesteps(original_inference_steps, original, strength)
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
            off = sorted(set(ts[1:].tolist()) - set(origin.tolist()))
            if strength == 1.0 and ts[0] != n_train - 1:
                warnings.warn(
                    f"timesteps: the first is {int(ts[0])}, not {n_train - 1}", stacklevel=3
                )
            if off:
                warnings.warn(
                    f"timesteps: {off} are not on the distillation schedule", stacklevel=3
                )
            if len(ts) > original:
                warnings.warn(
                    f"timesteps: {len(ts)} exceed original_inference_steps={original}",
                    stacklevel=3,
                )
            self.num_inference_steps = len(ts)
            self.custom_timesteps = True
            start = max(self.num_inference_steps - min(int(len(ts) * strength), len(ts)), 0)
            ts = ts[start:]
        else:
            n = check_int(num_inference_steps, "num_inference_steps")
            if n > n_train:
                raise ValueError(
                    f"num_inference_steps: {n} is more than the {n_train} training timesteps"
                )
            if len(origin) // n < 1:
                raise ValueError(
                    f"num_inference_steps: {n} is more than original_inference_steps × strength "
                    f"= {original} × {strength}; lower it or raise strength"
                )
            if n > original:
                raise ValueError(
                    f"num_inference_steps: {n} is more than original_inference_steps={original}"
                )
            self.num_inference_steps = n
            origin = origin[::-1].copy()
            idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
            ts = origin[idx]
            self.custom_timesteps = False
        self.timesteps = self._timesteps_array(ts.astype(np.int64), device)
        self._step_index = None
        self._begin_index = None

    def _origin_timesteps(self, given: int | None, original: int, strength: float) -> np.ndarray:
        """The distillation schedule the inference timesteps are chosen from (ascending):
        every (N // original)-th training timestep, the first ``original × strength``."""
        n_train = len(self._ac)
        if original > n_train:
            raise ValueError(
                f"original_inference_steps: {original} is more than the {n_train} training "
                "timesteps"
            )
        return np.arange(1, int(original * strength) + 1) * (n_train // original) - 1

    def _position(self, model_output: Any, timestep: Any, sample: Any) -> tuple:
        """The checks a step starts with; (sample shape, timestep as an int, step index,
        the timesteps as numpy)."""
        self._sync_config()
        if self.num_inference_steps is None:
            raise ValueError("step: the number of inference steps is not set; call set_timesteps")
        shape = _check_pair(model_output, sample)
        if tuple(model_output.shape) != shape:
            raise ValueError(
                f"model_output: shape {tuple(model_output.shape)} does not match sample's {shape}"
            )
        t = _int_timestep(timestep)
        if self._step_index is None:
            self._init_step_index(timestep)
        ts = self._timesteps_numpy()
        if self._step_index >= len(ts):
            raise ValueError(self._loop_done_message())
        # (clip_sample bounds an infinite x₀; thresholding's quantile of it is NaN, and TCD
        # never clips)
        if (
            self.config.prediction_type == "epsilon"
            and not self._bounds()[0]
            and 0 <= t < len(self._ac)
            and self._ac[t] == 0
        ):
            # a zero-terminal-SNR schedule's last timestep: x₀ = (x − √(1−ᾱ)·ε)/√ᾱ divides by
            # 0 (diffusers returns NaN there)
            raise ValueError(
                f"timestep {t}: ᾱ = 0 (rescale_betas_zero_snr), where an epsilon prediction "
                "gives no x₀; use prediction_type='v_prediction' (as zero-SNR models are "
                "trained) or a schedule without the zero-SNR rescale"
            )
        return shape, t, self._step_index, ts

    def get_scalings_for_boundary_condition_discrete(self, timestep: Any) -> tuple[float, float]:
        """(c_skip, c_out) at ``timestep``: σ_data²/(s² + σ_data²) and s/√(s² + σ_data²),
        s = timestep × timestep_scaling, σ_data = 0.5."""
        s = _int_timestep(timestep) * float(self.config.timestep_scaling)
        return 0.25 / (s * s + 0.25), s / (s * s + 0.25) ** 0.5

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple:
        """One consistency step from ``timestep`` (one of ``timesteps``).

        Returns ``LCMSchedulerOutput(prev_sample, denoised)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        shape, t, i, ts = self._position(model_output, timestep, sample)
        prev_t = int(ts[i + 1]) if i + 1 < len(ts) else t
        last = i == self.num_inference_steps - 1
        noise = None if last else _noise_like(shape, model_output, generator, None)
        b = _step_buffers(model_output, sample, self.config.thresholding)
        self._core.lcm(t, prev_t, float(self.config.timestep_scaling), last, noise=noise, **b)
        self._step_index += 1
        prev, denoised = b["prev"], b["x0"]
        if not return_dict:
            return (prev, denoised)
        return self._output_type(prev_sample=prev, denoised=denoised)
