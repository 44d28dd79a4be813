"""The Euler schedulers (Karras et al. 2022's Algorithm 2 and its ancestral variant), drop-ins
for diffusers' ``EulerDiscreteScheduler`` and ``EulerAncestralDiscreteScheduler``."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _Euler, _euler_schedule, _euler_schedule_from_sigmas, _lincomb
from ._base import SchedulerBase, SchedulerOutput, check_choice, check_int, exclusive, loop_setup
from .ddim import _COMPATIBLES, _noise_like

_SPACINGS = ("linspace", "leading", "trailing")


def _float_array(values: Any, name: str) -> np.ndarray:
    if _tensor.is_torch(values):
        values = values.detach().cpu().double().numpy()
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a sequence of numbers ({e})") from None


class SigmaSchedulerBase(SchedulerBase):
    """What diffusers' σ-parametrised schedulers share: ``sigmas`` (float32, one more than
    the timesteps), fractional float32 ``timesteps``, the step index found by timestep value,
    ``add_noise`` as x + σ·n, and the fused step through ``_Euler``."""

    _core: Any = None
    _sigmas: np.ndarray
    is_scale_input_called = False
    # diffusers' σ classes step over the training schedule before any set_timesteps
    _steps_before_set_timesteps = True

    def _set_schedule(self, timesteps: Any, sigmas: np.ndarray, device: Any) -> None:
        """The loop's timesteps and σ, and the core stepping over them (diffusers' classes
        step over the training schedule before any set_timesteps)."""
        self._sigmas = np.asarray(sigmas, dtype=np.float32)
        self._publish(sigmas=self._sigmas)
        self.timesteps = self._timesteps_array(np.asarray(timesteps), device)
        self._step_index = None
        self._begin_index = None
        self._core = self._make_core(self._sigmas.astype(np.float64).tolist())

    def _make_core(self, sigmas: list[float]) -> Any:
        return _Euler(sigmas, self.config.prediction_type, self._kind)

    def _sigma_at(self, timestep: Any) -> float:
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self._sigmas):
            raise ValueError(
                f"step index {self._step_index} is past the schedule's {len(self._sigmas)} sigmas"
            )
        return float(self._sigmas[self._step_index])

    def _check_float_timestep(self, timestep: Any, who: str) -> None:
        """diffusers refuses integer timesteps (a loop index passed by mistake)."""
        if isinstance(timestep, float):
            return
        if _tensor.is_torch(timestep):
            integer = not (timestep.is_floating_point() or timestep.is_complex())
        elif isinstance(timestep, (np.ndarray, np.generic)):
            integer = timestep.dtype.kind in "iu"
        else:
            integer = isinstance(timestep, int) and not isinstance(timestep, bool)
        if integer:
            raise ValueError(
                f"{type(self).__name__}.{who}: integer timesteps (e.g. from "
                "enumerate(timesteps)) are not supported; pass one of scheduler.timesteps"
            )

    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sigma = self._sigmas[self._noise_indices(timesteps)].astype(np.float64)
        return np.ones_like(sigma), sigma

    def _run_step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        gamma: float = 0.0,
        noise: Any = None,
        want_x0: bool = True,
    ) -> tuple[Any, Any]:
        """The fused step from ``sample`` (churned already when γ > 0): (prev, x₀ or None)."""
        mo, x = self._begin_step(model_output, timestep, sample)
        prev = _tensor.empty_like(x, dtype=mo.dtype)
        x0 = _tensor.empty_like(x, dtype=mo.dtype) if want_x0 else None
        self._core.step(
            self._step_index,
            gamma,
            model_output=mo,
            sample=x,
            prev=prev,
            x0=x0,
            noise=noise,
            stream=_tensor.cuda_stream(x),
        )
        self._step_index += 1
        return prev, x0

    def _scale(self, sample: Any, timestep: Any) -> Any:
        """sample / √(σ² + 1) at ``timestep``."""
        return self._scale_by(sample, self._sigma_at(timestep))

    def _scale_by(self, sample: Any, sigma: float) -> Any:
        """sample / √(σ² + 1), the divisor in float32 as diffusers forms it."""
        self.is_scale_input_called = True
        if _tensor.is_torch(sample):
            # (σ² + 1) ** 0.5 by torch, a 0-d float32 CPU tensor, as diffusers divides by
            # (torch's sqrt is not numpy's on every CPU, and torch rounds a half-precision
            # quotient differently for a Python float)
            s = _tensor.torch_module().tensor(np.float32(sigma))
            return sample / (s**2 + 1) ** 0.5
        sigma = np.float32(sigma)
        return sample / float(np.sqrt(sigma * sigma + np.float32(1.0)))


class EulerDiscreteScheduler(SigmaSchedulerBase):
    """Euler steps of the probability-flow ODE in σ (Karras et al. 2022, Algorithm 2), with
    diffusers' interface.

    Every constructor argument has diffusers' meaning and default (Karras, exponential and
    beta sigmas, ``interpolation_type``, ``timestep_type="continuous"`` for v-prediction,
    ``final_sigmas_type``, zero terminal SNR). Call ``scale_model_input`` on the model's input
    each step, as diffusers' pipelines do. ``step`` is one fused pass writing the new sample
    and ``pred_original_sample`` (both in the model output's dtype, computed in float32 as
    diffusers computes them); with churn (``s_churn`` > 0 inside [s_tmin, s_tmax]) noise is
    drawn as diffusers draws it and added by a first pass.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _compatibles: ClassVar[list[str]] = list(_COMPATIBLES)
    order = 1
    _kind = "euler"
    _step_fields = ("prev_sample", "pred_original_sample")
    # diffusers' training timesteps before set_timesteps: float32 here, float64 in the
    # ancestral class
    _init_timestep_dtype: Any = np.float32

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if sum(bool(f) for f in (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)) > 1:
            raise ValueError(
                "use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: only one can be used"
            )
        check_choice("prediction_type", prediction_type, ("epsilon", "sample", "v_prediction"))
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"))
        check_choice("timestep_spacing", timestep_spacing, _SPACINGS)
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"))
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        self._init_common(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )

    def _init_common(self, n, beta_start, beta_end, beta_schedule, trained, zero_snr) -> None:
        self._init_schedule(n, beta_start, beta_end, beta_schedule, trained, zero_snr)
        if zero_snr:
            # diffusers' fix so that σ stays finite at the last training step.
            self._ac[-1] = 2.0**-24
            self._publish(alphas_cumprod=self._ac)
        table, _ = self._sigma_table()
        sigmas = np.concatenate([table[::-1], [0.0]]).astype(np.float32)
        ts = np.linspace(0, n - 1, n, dtype=self._init_timestep_dtype)[::-1].copy()
        if self._continuous():
            ts = 0.25 * np.log(table[::-1])
        self._set_schedule(ts, sigmas, None)
        self.is_scale_input_called = False
        self._built_from = self.config

    def _continuous(self) -> bool:
        cfg = self.config
        return cfg.get("timestep_type") == "continuous" and cfg.prediction_type == "v_prediction"

    @property
    def init_noise_sigma(self) -> Any:
        """The initial noise's standard deviation: σ_max (linspace, trailing) or
        √(σ_max² + 1) (leading), as a float32 scalar."""
        m = np.float32(self._sigmas.max())
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return self._as_scalar(m)
        return self._as_scalar(np.sqrt(m * m + np.float32(1.0)))

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        timesteps: list[float] | None = None,
        sigmas: list[float] | None = None,
    ) -> None:
        """diffusers' schedule for ``num_inference_steps``, custom ``timesteps`` or custom
        ``sigmas`` (exactly one): ``timesteps`` float32 (n,), ``sigmas`` float32 (n + 1,)."""
        cfg = self.config
        given = [a is not None for a in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError(
                "set_timesteps: pass exactly one of num_inference_steps, timesteps or sigmas"
            )
        kind = self._sigma_kind()
        if timesteps is not None and kind != "default":
            raise ValueError(f"timesteps: custom timesteps cannot be used with {kind} sigmas")
        if timesteps is not None and self._continuous():
            raise ValueError(
                "timesteps: custom timesteps cannot be used with timestep_type='continuous' and "
                "v_prediction"
            )
        table, log_table = self._sigma_table()
        if sigmas is not None:
            s = _float_array(sigmas, "sigmas")
            ts, sig = _euler_schedule_from_sigmas(log_table, s.tolist(), self._continuous())
        else:
            custom = None
            if timesteps is not None:
                custom = _float_array(timesteps, "timesteps").astype(np.float32).tolist()
            else:
                num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
            ts, sig = _euler_schedule(
                table,
                log_table,
                num_inference_steps,
                custom,
                cfg.timestep_spacing,
                int(cfg.steps_offset),
                cfg.get("interpolation_type", "linear"),
                kind,
                cfg.get("sigma_min"),
                cfg.get("sigma_max"),
                cfg.get("final_sigmas_type", "zero"),
                self._continuous(),
            )
        self.num_inference_steps = len(ts)
        self._set_schedule(ts, sig, device)

    def scale_model_input(self, sample: Any, timestep: Any) -> Any:
        """The model's input: ``sample`` / √(σ² + 1) at ``timestep`` (same type and dtype)."""
        return self._scale(sample, timestep)

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One Euler step from ``timestep`` (one of ``timesteps``) to the next σ.

        model_output, sample: (B, C, ...) arrays or tensors of one framework. Returns
        ``SchedulerOutput(prev_sample, pred_original_sample)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        self._check_float_timestep(timestep, "step")
        self._sync_config()
        if not self.is_scale_input_called:
            warnings.warn(
                "scale_model_input should be called before step to ensure correct denoising",
                UserWarning,
                stacklevel=2,
            )
        gamma = 0.0
        if self._step_index is None:
            self._init_step_index(timestep)
        # (γ is 0 without churn: no call into the core for it)
        if s_churn != 0.0 and self._step_index < len(self.timesteps):
            gamma = self._core.churn(self._step_index, float(s_churn), float(s_tmin), float(s_tmax))
        if gamma > 0:
            sample = self._churn(model_output, sample, gamma, float(s_noise), generator)
        prev, x0 = self._run_step(model_output, timestep, sample, gamma)
        if not return_dict:
            return (prev, x0)
        return self._output_type(prev_sample=prev, pred_original_sample=x0)

    def _churn(self, model_output: Any, sample: Any, gamma: float, s_noise: float, gen: Any):
        """x̂ = x + s_noise·√(σ̂² − σ²)·n in float32 (noise drawn as diffusers draws it)."""
        _tensor.check_array(model_output, "model_output")
        _tensor.check_array(sample, "sample")
        sigma = float(self._sigmas[self._step_index])
        hat = sigma * (gamma + 1.0)
        noise = _noise_like(tuple(model_output.shape), model_output, gen, None)
        x = _tensor.to_float32(_tensor.contiguous(sample), sample)
        out = _tensor.empty_like(x)
        c = s_noise * float(np.sqrt(hat * hat - sigma * sigma))
        _lincomb(out, [(1.0, x), (c, noise)], stream=_tensor.cuda_stream(x))
        return out


class EulerAncestralDiscreteScheduler(EulerDiscreteScheduler):
    """Ancestral sampling with Euler steps, with diffusers' interface: each step goes to
    σ_down by Euler and adds σ_up·n (η = 1), one fused pass; noise is drawn as diffusers
    draws it, in the model output's dtype, at every step. Call ``scale_model_input`` on the
    model's input each step. ``prediction_type="sample"`` is refused, as by diffusers.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _kind = "ancestral"
    _init_timestep_dtype = np.float64

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        check_choice("prediction_type", prediction_type, ("epsilon", "sample", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, _SPACINGS)
        self._init_common(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )

    @exclusive
    @loop_setup
    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """diffusers' schedule for ``num_inference_steps``: ``timesteps`` float32 (n,),
        ``sigmas`` float32 (n + 1,), σ interpolated linearly, the last 0."""
        cfg = self.config
        n = check_int(num_inference_steps, "num_inference_steps")
        table, log_table = self._sigma_table()
        ts, sig = _euler_schedule(
            table, log_table, n, None, cfg.timestep_spacing, int(cfg.steps_offset)
        )
        self.num_inference_steps = n
        self._set_schedule(ts, sig, device)

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One ancestral Euler step from ``timestep`` to the next σ.

        Returns ``SchedulerOutput(prev_sample, pred_original_sample)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        self._check_float_timestep(timestep, "step")
        self._sync_config()
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        if not self.is_scale_input_called:
            warnings.warn(
                "scale_model_input should be called before step to ensure correct denoising",
                UserWarning,
                stacklevel=2,
            )
        _tensor.check_array(model_output, "model_output")
        noise = _noise_like(tuple(model_output.shape), model_output, generator, None)
        prev, x0 = self._run_step(model_output, timestep, sample, noise=noise)
        if not return_dict:
            return (prev, x0)
        return self._output_type(prev_sample=prev, pred_original_sample=x0)
