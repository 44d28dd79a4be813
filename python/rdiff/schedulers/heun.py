"""Heun's second-order method in σ (Karras et al. 2022, Algorithm 1), a drop-in for diffusers'
``HeunDiscreteScheduler``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _tensor
from .._rdiff import _Euler, _euler_schedule
from ._base import SchedulerOutput, check_choice, check_int, exclusive, loop_setup
from .euler import _SPACINGS, EulerDiscreteScheduler, _float_array


class HeunDiscreteScheduler(EulerDiscreteScheduler):
    """Heun steps of the probability-flow ODE in σ, with diffusers' interface: two model
    calls per interval, so ``timesteps`` and ``sigmas`` hold every inner σ twice, as
    diffusers' do (``order = 2``).

    Every constructor argument has diffusers' meaning and default (Karras, exponential and
    beta sigmas, ``clip_sample``, the ``exp`` β schedule). The first call of an interval is an
    Euler step (one fused pass); the second averages the two slopes and steps from the
    interval's start (one fused pass reading the first stage's sample and x₀, the Euler
    result and the model output). Both write the new sample and ``pred_original_sample`` in the
    model output's dtype. Call ``scale_model_input`` on the model's input each step.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    order = 2
    _kind = "heun"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if sum(bool(f) for f in (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)) > 1:
            raise ValueError(
                "use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: only one can be used"
            )
        check_choice("prediction_type", prediction_type, ("epsilon", "sample", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, _SPACINGS)
        self._init_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False
        )
        self.is_scale_input_called = True  # diffusers' Heun does not warn
        self._reset_stage()
        # diffusers' __init__ sets the training-length schedule with set_timesteps
        self._built_from = self.config
        self.set_timesteps(num_train_timesteps)
        self._loop_call = None

    def _reset_stage(self) -> None:
        self.dt: float | None = None
        self.sample: Any = None
        self._first_x0: Any = None
        self._first_gamma = 0.0

    def _check_train_steps(self, num_train_timesteps: int | None) -> None:
        """set_timesteps' num_train_timesteps: only the schedule's own length."""
        if num_train_timesteps is not None and int(num_train_timesteps) != len(self._ac):
            raise ValueError(
                f"num_train_timesteps: {num_train_timesteps} differs from the schedule's "
                f"{len(self._ac)} training timesteps; rdiff spaces over the schedule's own"
            )

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is an interval's first (Euler) stage."""
        return self.dt is None

    def _make_core(self, sigmas: list[float]) -> Any:
        cfg = self.config
        clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
        return _Euler(sigmas, cfg.prediction_type, "heun", False, clip)

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        num_train_timesteps: int | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        """diffusers' schedule for ``num_inference_steps`` (or custom ``timesteps``), every inner
        σ and timestep doubled: ``timesteps`` float32 (2n − 1,), ``sigmas`` float32 (2n,)."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        kind = self._sigma_kind()
        if timesteps is not None and kind != "default":
            raise ValueError(f"timesteps: custom timesteps cannot be used with {kind} sigmas")
        self._check_train_steps(num_train_timesteps)
        table, log_table = self._sigma_table()
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
            "linear",
            kind,
        )
        self.num_inference_steps = len(ts)
        sig2 = np.concatenate([sig[:1], np.repeat(sig[1:-1], 2), sig[-1:]])
        ts2 = np.concatenate([ts[:1], np.repeat(ts[1:], 2)])
        self._set_schedule(ts2, sig2, device)
        self._reset_stage()

    @exclusive
    def step(
        self, model_output: Any, timestep: Any, sample: Any, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """One stage of a Heun step from ``timestep`` (one of ``timesteps``).

        Returns ``SchedulerOutput(prev_sample, pred_original_sample)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        return self._stage(model_output, timestep, sample, return_dict)

    def _second_stage_noise(self, model_output: Any, generator: Any) -> Any:
        """The float32 noise the second stage adds (None: Heun and KDPM2 add none)."""
        return None

    def _stage(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        return_dict: bool,
        generator: Any = None,
        gamma: float = 0.0,
    ) -> SchedulerOutput | tuple:
        """One stage: the first (an Euler step from σ·(γ + 1), ``sample`` churned already when
        γ > 0; its sample, x₀ and γ kept) or the second (with ``_second_stage_noise``)."""
        mo, x = self._begin_step(model_output, timestep, sample)
        i = self._step_index
        prev = _tensor.empty_like(x, dtype=mo.dtype)
        x0 = _tensor.empty_like(x, dtype=mo.dtype)
        stream = _tensor.cuda_stream(x)
        if self.state_in_first_order:
            self._core.step(i, gamma, model_output=mo, sample=x, prev=prev, x0=x0, stream=stream)
            self.dt = float(self._sigmas[i + 1]) - float(self._sigmas[i]) * (gamma + 1.0)
            self.sample = x
            self._first_x0 = x0
            self._first_gamma = gamma
        else:
            x2 = _tensor.as_dtype_of(x, mo)
            first = _tensor.as_dtype_of(self.sample, mo)
            noise = self._second_stage_noise(mo, generator)
            self._core.second_stage(
                i,
                self._first_gamma,
                model_output=mo,
                sample=x2,
                first_sample=first,
                first_x0=self._first_x0,
                x0=x0,
                prev=prev,
                noise=noise,
                stream=stream,
            )
            self._reset_stage()
        self._step_index += 1
        if not return_dict:
            return (prev, x0)
        return self._output_type(prev_sample=prev, pred_original_sample=x0)
