"""Trajectory consistency distillation's sampler (Zheng et al. 2024), a drop-in for diffusers'
``TCDScheduler``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._base import exclusive
from .ddim import _noise_like, _step_buffers
from .lcm import LCMScheduler


@dataclass
class TCDSchedulerOutput:
    """What ``TCDScheduler.step`` returns: the next sample and the noised estimate at the
    intermediate timestep s, both of the model output's type, dtype and device."""

    prev_sample: Any
    pred_noised_sample: Any = None


class TCDScheduler(LCMScheduler):
    """Strategic stochastic sampling of a trajectory-consistency model with diffusers'
    interface: each step predicts x₀ and ε, forms the noised estimate at
    s = ⌊(1 − η)·t_prev⌋, and re-noises it from s to the next timestep (η = ``eta`` of
    ``step``, 0.3 by default; η = 0 is deterministic).

    The constructor and ``set_timesteps`` are LCM's (diffusers' TCD takes the same; its step
    ignores ``clip_sample`` and ``thresholding``, and so does rdiff's). ``step`` is one fused
    pass; noise is drawn as diffusers draws it.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _output_type: ClassVar[type] = TCDSchedulerOutput
    _step_fields = ("prev_sample", "pred_noised_sample")

    def _bounds(self) -> tuple:
        """TCD's step never bounds x₀ (diffusers' reads neither clip_sample nor
        thresholding), so neither does its core."""
        return (False, 1.0, False, 0.995, 1.0)

    def _origin_timesteps(self, given: int | None, original: int, strength: float) -> np.ndarray:
        """LCM's distillation schedule, or, when ``original_inference_steps`` is passed to
        ``set_timesteps``, every training timestep below N × strength (diffusers' TCD)."""
        if given is None:
            return super()._origin_timesteps(given, original, strength)
        return np.arange(0, int(len(self._ac) * strength))

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        eta: float = 0.3,
        generator: Any = None,
        return_dict: bool = True,
    ) -> TCDSchedulerOutput | tuple:
        """One TCD step from ``timestep`` (one of ``timesteps``) with stochasticity ``eta``.

        Returns ``TCDSchedulerOutput(prev_sample, pred_noised_sample)`` (a 2-tuple with
        ``return_dict=False``), both of model_output's type, dtype and device.
        """
        shape, t, i, ts = self._position(model_output, timestep, sample)
        eta = float(eta)
        if not (0.0 <= eta <= 1.0):
            raise ValueError(f"eta: must lie in [0, 1], got {eta}")
        prev_t = int(ts[i + 1]) if i + 1 < len(ts) else 0
        last = i == self.num_inference_steps - 1
        noisy = eta > 0 and not last
        noise = _noise_like(shape, model_output, generator, None) if noisy else None
        b = _step_buffers(model_output, sample, False)
        self._core.tcd(t, prev_t, eta, last, noise=noise, **b)
        self._step_index += 1
        prev, noised = b["prev"], b["x0"]
        if not return_dict:
            return (prev, noised)
        return self._output_type(prev_sample=prev, pred_noised_sample=noised)
