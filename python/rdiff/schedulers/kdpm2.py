"""DPM-Solver-2 in σ (Karras et al. 2022's "DPM2"), a drop-in for diffusers'
``KDPM2DiscreteScheduler``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._rdiff import _Euler, _euler_schedule, _sigma_to_t
from ._base import SchedulerOutput, check_choice, check_int, exclusive, loop_setup
from ._float32 import float32_math
from .euler import _SPACINGS
from .heun import HeunDiscreteScheduler


class KDPM2DiscreteScheduler(HeunDiscreteScheduler):
    """DPM-Solver-2 steps in σ with diffusers' interface: each interval takes an Euler step to
    its log-midpoint σ_mid = √(σ·σ_next), evaluates the model there and steps the whole
    interval with that slope. ``timesteps`` interleave the midpoints' timesteps, ``sigmas``
    and ``sigmas_interpol`` double every inner value, as diffusers' do (``order = 2``).

    Every constructor argument has diffusers' meaning and default (Karras, exponential and
    beta sigmas, the ``exp`` β schedule); ``prediction_type="sample"`` is refused, as by
    diffusers. Each stage is one fused pass writing the new sample and
    ``pred_original_sample`` in the model output's dtype. Call ``scale_model_input`` on the
    model's input each step (at the midpoint it divides by √(σ_mid² + 1)).

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _kind = "kdpm2"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
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
        self._init_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False
        )
        self.is_scale_input_called = True
        self._reset_stage()
        self._built_from = self.config
        self.set_timesteps(num_train_timesteps)
        self._loop_call = None

    def _make_core(self, sigmas: list[float]) -> Any:
        # the first midpoint is NaN in diffusers (log 0 at the roll) and never read
        interpol = np.nan_to_num(self._interpol.astype(np.float64), nan=0.0)
        return _Euler(
            sigmas, self.config.prediction_type, "kdpm2", sigmas_interpol=interpol.tolist()
        )

    def _interval_schedule(self, n: int, num_train_timesteps: int | None):
        """The intervals' float32 (timesteps, σ) before the midpoints are interleaved, and the
        log σ table the midpoints' timesteps are read from."""
        cfg = self.config
        self._check_train_steps(num_train_timesteps)
        kind = self._sigma_kind()
        table, log_table = self._sigma_table()
        ts, sig = _euler_schedule(
            table, log_table, n, None, cfg.timestep_spacing, int(cfg.steps_offset), "linear", kind
        )
        if kind == "karras":
            ts = np.round(ts.astype(np.float64)).astype(np.float32)  # diffusers rounds these
        return ts, sig, log_table

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int,
        device: Any = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        """diffusers' schedule for ``num_inference_steps``: ``timesteps`` float32 (2n − 1,)
        alternating the intervals' starts and midpoints, ``sigmas`` and ``sigmas_interpol``
        float32 (2n + 2,)."""
        n = check_int(num_inference_steps, "num_inference_steps")
        ts, sig, log_table = self._interval_schedule(n, num_train_timesteps)
        # σ_mid = exp(lerp(log σ, log σ_prev, ½)) as diffusers forms it in float32; log 0
        # makes the first NaN and the last 0
        m = float32_math(self)
        ls = m.log(sig)
        mid = m.exp(m.lerp_half(ls, np.roll(ls, 1)))
        ti = _sigma_to_t(
            np.nan_to_num(mid[1:-1].astype(np.float64), nan=0.0), log_table.astype(np.float32)
        ).astype(np.float32)
        ts2 = np.concatenate([ts[:1], np.stack([ti, ts[1:]], axis=-1).reshape(-1)])
        self._interpol = np.concatenate([mid[:1], np.repeat(mid[1:], 2), mid[-1:]])
        self._publish(sigmas_interpol=self._interpol)
        self.num_inference_steps = n
        sig2 = np.concatenate([sig[:1], np.repeat(sig[1:], 2), sig[-1:]])
        self._set_schedule(ts2, sig2, device)
        self._reset_stage()

    def scale_model_input(self, sample: Any, timestep: Any) -> Any:
        """The model's input: ``sample`` / √(σ² + 1) at ``timestep``, σ the midpoint's in an
        interval's second stage (same type and dtype)."""
        if self.state_in_first_order:
            return self._scale(sample, timestep)
        if self._step_index is None:
            self._init_step_index(timestep)
        return self._scale_by(sample, self._interpol[self._step_index])

    @exclusive
    def step(
        self, model_output: Any, timestep: Any, sample: Any, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """One stage of a DPM-Solver-2 step from ``timestep`` (one of ``timesteps``).

        Returns ``SchedulerOutput(prev_sample, pred_original_sample)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        return super().step(model_output, timestep, sample, return_dict)
