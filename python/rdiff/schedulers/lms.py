"""Linear multistep in σ (Karras et al. 2022's LMS, k-diffusion's ``sample_lms``), a drop-in
for diffusers' ``LMSDiscreteScheduler``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .. import _tensor
from .._rdiff import _euler_schedule, _Lms
from ._base import SchedulerOutput, check_choice, check_int, exclusive, loop_setup
from .euler import _SPACINGS, EulerDiscreteScheduler


def lms_scratch(history: list, x: Any, dtype: Any) -> Any:
    """The LMS core's scratch buffer (shaped like x, in dtype) above order 4, else None."""
    return _tensor.empty_like(x, dtype=dtype) if len(history) > 3 else None


class LMSDiscreteScheduler(EulerDiscreteScheduler):
    """Linear multistep steps of the probability-flow ODE in σ with diffusers' interface:
    each step integrates the Lagrange polynomial through the last ``order`` slopes
    d = (x − x₀)/σ over [σ, σ_next] (``step``'s ``order``, default 4, lower while fewer slopes
    exist; at most 4 here).

    Every constructor argument has diffusers' meaning and default (Karras, exponential and
    beta sigmas). ``step`` is one fused pass that converts the model output to the slope
    (kept in ``derivatives``, the model output's dtype), writes ``pred_original_sample`` and
    the new sample. Call ``scale_model_input`` on the model's input each step.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _kind = "lms"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
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
        self.derivatives: list[Any] = []
        self._init_common(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False
        )

    def _make_core(self, sigmas: list[float]) -> Any:
        return _Lms(sigmas, self.config.prediction_type)

    @exclusive
    @loop_setup
    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """diffusers' schedule for ``num_inference_steps``: ``timesteps`` float32 (n,),
        ``sigmas`` float32 (n + 1,), the last 0."""
        cfg = self.config
        n = check_int(num_inference_steps, "num_inference_steps")
        table, log_table = self._sigma_table()
        ts, sig = _euler_schedule(
            table,
            log_table,
            n,
            None,
            cfg.timestep_spacing,
            int(cfg.steps_offset),
            "linear",
            self._sigma_kind(),
        )
        self.num_inference_steps = n
        self._set_schedule(ts, sig, device)
        self.derivatives = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """The weight of the slope ``current_order`` steps back in step ``t`` of order
        ``order``: the integral over [σ_t, σ_{t+1}] of its Lagrange basis polynomial."""
        return self._core.coefficients(int(t), int(order))[int(current_order)]

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        order: int = 4,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One linear multistep step of order ``order`` (≥ 1; lower while fewer slopes are
        kept) from ``timestep`` (one of ``timesteps``) to the next σ.

        model_output, sample: (B, C, ...) arrays or tensors of one framework. Returns
        ``SchedulerOutput(prev_sample, pred_original_sample)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        order = check_int(order, "order")
        if not self.is_scale_input_called:
            warnings.warn(
                "scale_model_input should be called before step to ensure correct denoising",
                UserWarning,
                stacklevel=2,
            )
        mo, x = self._begin_step(model_output, timestep, sample)
        x = _tensor.as_dtype_of(x, mo)
        i = self._step_index
        o = min(i + 1, order)
        # diffusers appends the new slope, drops the oldest past `order`, then zips its o
        # coefficients with the slopes newest first
        kept = self.derivatives[-(order - 1) :] if order > 1 else []
        history = list(reversed(kept))[: o - 1]
        deriv, x0, prev = (_tensor.empty_like(x, dtype=mo.dtype) for _ in range(3))
        self._core.step(
            i,
            o,
            model_output=mo,
            sample=x,
            history=history,
            derivative=deriv,
            x0=x0,
            prev=prev,
            scratch=lms_scratch(history, x, mo.dtype),
            stream=_tensor.cuda_stream(x),
        )
        self.derivatives.append(deriv)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        self._step_index += 1
        if not return_dict:
            return (prev, x0)
        return self._output_type(prev_sample=prev, pred_original_sample=x0)
