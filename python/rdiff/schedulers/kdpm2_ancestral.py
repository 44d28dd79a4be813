"""Ancestral DPM-Solver-2 in σ (k-diffusion's ``sample_dpm_2_ancestral``), a drop-in for
diffusers' ``KDPM2AncestralDiscreteScheduler``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._rdiff import _Euler, _sigma_to_t
from ._base import SchedulerOutput, check_int, exclusive, loop_setup
from ._float32 import float32_math
from .ddim import _noise_like
from .kdpm2 import KDPM2DiscreteScheduler


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """Ancestral DPM-Solver-2 steps in σ with diffusers' interface: each interval from σ to
    σ_next takes an Euler step to the log-midpoint of σ and σ_down, evaluates the model there,
    steps from σ to σ_down with that slope and adds σ_up·n (η = 1); the last interval is one
    Euler step to 0. ``timesteps`` interleave the midpoints' timesteps (2n − 1 of them);
    ``sigmas``, ``sigmas_interpol``, ``sigmas_up`` and ``sigmas_down`` double every inner value,
    as diffusers' do (``order = 2``).

    Every constructor argument has diffusers' meaning and default; ``prediction_type="sample"``
    is refused, as by diffusers. Each stage is one fused pass writing the new sample and
    ``pred_original_sample`` in the model output's dtype; the second stage's noise is drawn as
    diffusers draws it (``generator``, the model output's dtype). Call ``scale_model_input`` on
    the model's input each step.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _kind = "kdpm2_ancestral"

    def _make_core(self, sigmas: list[float]) -> Any:
        # diffusers' padding (NaN σ_up, σ_down past the last interval) is never read
        def clean(a: np.ndarray) -> list[float]:
            return np.nan_to_num(a.astype(np.float64), nan=0.0).tolist()

        return _Euler(
            sigmas,
            self.config.prediction_type,
            "kdpm2_ancestral",
            sigmas_interpol=clean(self._interpol),
            sigmas_down=clean(self._down),
            sigmas_up=clean(self._up),
        )

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int,
        device: Any = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        """diffusers' schedule for ``num_inference_steps``: ``timesteps`` float32 (2n − 1,)
        alternating the intervals' starts and midpoints; ``sigmas``, ``sigmas_interpol``,
        ``sigmas_up`` and ``sigmas_down`` float32 (2n + 2,)."""
        n = check_int(num_inference_steps, "num_inference_steps")
        ts, sig, log_table = self._interval_schedule(n, num_train_timesteps)
        # diffusers' float32 arithmetic, operation by operation (its sqrt, log, exp and lerp
        # by the library it uses: _float32); log 0 makes the padding NaN, which no step reads
        m = float32_math(self)
        with np.errstate(divide="ignore", invalid="ignore"):
            nxt = np.roll(sig, -1)
            nxt[-1] = 0.0
            up = m.sqrt(nxt**2 * (sig**2 - nxt**2) / sig**2)
            down = m.sqrt(nxt**2 - up**2)
            # σ_up² rounds above σ_next² where σ ≫ σ_next (σ ≈ 2·10⁴: cosine schedules) and
            # diffusers' σ_down goes NaN; rdiff takes k-diffusion's finite value there
            # (σ_down = σ_next²/σ exactly)
            bad = np.isnan(down)
            down[bad] = (nxt**2 / sig)[bad]
            down[-1] = 0.0
        mid = m.exp(m.lerp_half(m.log(sig), m.log(down)))
        mid[-2:] = 0.0
        ti = _sigma_to_t(mid[:-2].astype(np.float64), log_table.astype(np.float32))
        ts2 = np.concatenate([ts[:1], np.stack([ti.astype(np.float32), ts[1:]], -1).reshape(-1)])

        def interleave(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a[:1], np.repeat(a[1:], 2), a[-1:]]).astype(np.float32)

        self._interpol, self._up, self._down = interleave(mid), interleave(up), interleave(down)
        self._publish(sigmas_interpol=self._interpol, sigmas_up=self._up, sigmas_down=self._down)
        self.num_inference_steps = n
        self._set_schedule(ts2, interleave(sig), device)
        self._reset_stage()

    def _second_stage_noise(self, model_output: Any, generator: Any) -> Any:
        # drawn as diffusers draws it, after the interval's second model call
        return _noise_like(tuple(model_output.shape), model_output, generator, None)

    def scale_model_input(self, sample: Any, timestep: Any) -> Any:
        """The model's input: ``sample`` / √(σ² + 1) at ``timestep``, σ the midpoint's in an
        interval's second stage (same type and dtype)."""
        if self.state_in_first_order:
            return self._scale(sample, timestep)
        if self._step_index is None:
            self._init_step_index(timestep)
        return self._scale_by(sample, self._interpol[self._step_index - 1])

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One stage of an ancestral DPM-Solver-2 step from ``timestep`` (one of
        ``timesteps``); the second stage draws its noise with ``generator``.

        Returns ``SchedulerOutput(prev_sample, pred_original_sample)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        return self._stage(model_output, timestep, sample, return_dict, generator)
