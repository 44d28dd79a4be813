"""Heun's method for flow-matching (velocity-predicting) models, a drop-in for diffusers'
``FlowMatchHeunDiscreteScheduler``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _Euler
from ._base import SchedulerOutput, check_int, exclusive, loop_setup
from .ddim import _noise_like
from .flow_match import _FlowSchedule
from .heun import HeunDiscreteScheduler


class FlowMatchHeunDiscreteScheduler(_FlowSchedule, HeunDiscreteScheduler):
    """Heun steps of a flow-matching model, x_t = (1 − σ)·x₀ + σ·ε, with diffusers'
    interface: two model calls per interval, so ``timesteps`` and ``sigmas`` hold every inner
    σ twice (``order = 2``), σ statically shifted by ``shift``.

    Each stage is one fused pass (the first an Euler step, the second the trapezoid from the
    interval's sample) returning ``prev_sample`` in the model output's dtype. The
    churn arguments of ``step`` (``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``) act as
    diffusers' do: the first stage starts from σ̂ = σ·(γ + 1) with noise drawn as diffusers
    draws it; in the second its draw only advances the generator, as there.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _compatibles: ClassVar[list[str]] = []
    _kind = "flow_heun"
    _step_fields = ("prev_sample",)
    init_noise_sigma = 1.0
    # diffusers' own fails before set_timesteps (no stage state yet); rdiff says why
    _steps_before_set_timesteps = False

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self._init_flow(num_train_timesteps, shift, True)
        self._reset_stage()
        self._built_from = self.config

    def _make_core(self, sigmas: list[float]) -> Any:
        return _Euler(sigmas, "flow_prediction", "heun")

    @exclusive
    @loop_setup
    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """diffusers' schedule for ``num_inference_steps``: σ spaced linearly between the
        training σ_max and σ_min, shifted; ``timesteps`` float32 (2n − 1,) and ``sigmas``
        float32 (2n,), every inner value twice."""
        n = check_int(num_inference_steps, "num_inference_steps")
        big_n = int(self.config.num_train_timesteps)
        shift = float(self.config.shift)
        # diffusers' float64 numpy spacing and shift, then float32
        ts = np.linspace(self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), n)
        s = ts / big_n
        sig = (shift * s / (1 + (shift - 1) * s)).astype(np.float32)
        ts = sig * np.float32(big_n)
        self._check_spread(ts, shift)
        sig = np.concatenate([sig, np.zeros(1, np.float32)])
        self.num_inference_steps = n
        sig2 = np.concatenate([sig[:1], np.repeat(sig[1:-1], 2), sig[-1:]])
        ts2 = np.concatenate([ts[:1], np.repeat(ts[1:], 2)])
        self._set_schedule(ts2, sig2, device)
        self._reset_stage()

    def scale_noise(self, sample: Any, timestep: Any, noise: Any) -> Any:
        """The forward process at ``timestep`` (one value; it sets the step index as
        diffusers' does): σ·noise + (1 − σ)·sample, of sample's type and dtype."""
        self._sync_config()
        _tensor.check_float(sample, "sample")
        _tensor.same_framework(sample, noise, "scale_noise")
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = np.float32(self._sigmas[self._step_index])
        if _tensor.is_torch(sample):
            # a 0-d float32 tensor, as diffusers' σ (the result keeps the sample's dtype)
            sigma = _tensor.torch_module().tensor(sigma)
            return sigma * noise + (1.0 - sigma) * sample
        return (sigma * noise + (np.float32(1.0) - sigma) * sample).astype(sample.dtype)

    def scale_model_input(self, sample: Any, *args: Any, **kwargs: Any) -> Any:
        """Identity: flow-matching models take the sample as it is."""
        return sample

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
        """One stage of a Heun step of the flow from ``timestep`` (one of ``timesteps``).

        model_output (the predicted velocity), sample: (B, ...) of one framework. Returns
        ``SchedulerOutput(prev_sample)`` (a 1-tuple with ``return_dict=False``) of
        model_output's type, dtype and device.
        """
        self._sync_config()
        if self.num_inference_steps is None:
            raise ValueError(
                "step: the number of inference steps is not set; call set_timesteps first"
            )
        self._check_float_timestep(timestep, "step")
        _tensor.check_array(model_output, "model_output")
        _tensor.check_array(sample, "sample")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        first = self.state_in_first_order
        gamma = 0.0
        if i < len(self.timesteps) and (first or i > 0):
            j = i if first else i - 1  # the interval's start
            gamma = self._core.churn(j, float(s_churn), float(s_tmin), float(s_tmax))
        if gamma > 0 and first:
            sample = self._churn(model_output, sample, gamma, float(s_noise), generator)
        elif gamma > 0:
            # diffusers adds this noise to the sample whose slope it then cancels: only the
            # generator moves
            _noise_like(tuple(model_output.shape), model_output, generator, None)
        prev, _ = self._stage(model_output, timestep, sample, False, gamma=gamma if first else 0.0)
        if not return_dict:
            return (prev,)
        return self._output_type(prev_sample=prev)
