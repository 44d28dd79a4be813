"""UniPC (Zhao et al. 2023), a drop-in for diffusers' ``UniPCMultistepScheduler``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _diffusers_schedule, _UniPc
from ._base import (
    SchedulerOutput,
    check_choice,
    check_int,
    exclusive,
    loop_setup,
    shift_from_mu,
)
from ._dpm_solver import DPMSolverBase

_PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow_prediction")


class UniPCMultistepScheduler(DPMSolverBase):
    """UniPC: the B(h) predictor UniP-p with the corrector UniC-p, diffusers' interface.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Every constructor argument has diffusers' meaning and default. Each ``step`` is one fused
    pass in Rust: the conversion of the model output (kept in ``model_outputs``), the
    corrector of the interval just taken (its result kept in ``last_sample``) and the
    predictor of the next, on numpy arrays or torch CPU or CUDA tensors of float32, float16,
    bfloat16 (torch) or float64 (on the CPU); the result has the model output's type, dtype
    and device. Coefficients are float64. Where diffusers divides by zero (a step to σ = 0
    with ``solver_type="bh1"`` or an order above 1, a repeated timestep) rdiff takes the
    update's limit: a step to σ = 0 is first order, a zero-length one the identity.
    """

    _compatibles: ClassVar[list[str]] = [
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
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 (diffusers' signature)
        solver_p: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if sum([use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas]) > 1:
            raise ValueError(
                "use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: only one can be used"
            )
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("shift_terminal: only supported with use_flow_sigmas=True")
        # diffusers maps its siblings' solver types onto bh2, in the config too.
        if solver_type in ("midpoint", "heun", "logrho"):
            solver_type = "bh2"
            self.register_to_config(solver_type=solver_type)
        check_choice("solver_type", solver_type, ("bh1", "bh2"))
        check_int(solver_order, "solver_order", 1, 4)
        check_choice("prediction_type", prediction_type, _PREDICTIONS)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        check_choice("time_shift_type", time_shift_type, ("exponential", "linear"))
        self._init_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )
        if rescale_betas_zero_snr:
            # diffusers' fix so that σ stays finite at the last training step.
            self._ac[-1] = 2.0**-24
        self._training_sigmas(self._ac)
        self.init_noise_sigma = 1.0
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector)
        self.solver_p = solver_p
        self.timesteps = self._timesteps_array(
            np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64)
        )
        self.model_outputs: list[Any] = [None] * solver_order
        self.timestep_list: list[Any] = [None] * solver_order
        self.lower_order_nums = 0
        self.last_sample: Any = None
        self.this_order: int | None = None
        self._core: _UniPc | None = None
        self._built_from = self.config

    # -- schedule --------------------------------------------------------------------------
    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Choose the sampling timesteps (``num_inference_steps``, or flow ``sigmas``).

        Fills ``timesteps`` (int64, descending, length n) and ``sigmas`` (float32, length
        n + 1, the last one 0 or σ_min) exactly as diffusers does, and resets the loop.
        ``mu``: the dynamic shift (``use_dynamic_shifting``).
        """
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu: must be passed when use_dynamic_shifting is True")
        flow_sigmas = None
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError("sigmas: custom sigmas need use_flow_sigmas=True")
            flow_sigmas = [float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
            num_inference_steps = len(flow_sigmas)
        if num_inference_steps is None:
            raise ValueError("set_timesteps: pass num_inference_steps (or flow sigmas)")
        num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
        shift = float(cfg.flow_shift)
        if cfg.use_dynamic_shifting:
            # diffusers' time_shift(mu, 1, σ) is the flow shift with shift = e^μ (or μ).
            shift = shift_from_mu(mu, cfg.time_shift_type == "exponential")
        kind = self._sigma_kind()
        karras_flow = kind == "karras" and bool(cfg.use_flow_sigmas)
        ts, sig = _diffusers_schedule(
            self._ac,
            num_inference_steps,
            None,
            cfg.timestep_spacing,
            int(cfg.steps_offset),
            kind,
            shift,
            cfg.final_sigmas_type,
            -float("inf"),
            True,
            sigma_table=self._sigma_table(),
            unipc=True,
            flow_sigmas=flow_sigmas,
            shift_terminal=None if cfg.shift_terminal is None else float(cfg.shift_terminal),
            karras_flow=karras_flow,
            sigma_min=None if cfg.sigma_min is None else float(cfg.sigma_min),
            sigma_max=None if cfg.sigma_max is None else float(cfg.sigma_max),
        )
        self._sigmas = sig.astype(np.float32)
        self._publish(sigmas=self._sigmas)
        self.timesteps = self._timesteps_array(ts.astype(np.int64), device)
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * cfg.solver_order
        self.timestep_list = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self.last_sample = None
        self.this_order = None
        if self.solver_p is not None:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)
        self._step_index = None
        self._begin_index = None
        self._core_thresholding = bool(cfg.thresholding) and bool(self.predict_x0)
        self._core_solver_order = int(cfg.solver_order)
        self._core = _UniPc(
            {
                "solver_type": cfg.solver_type,
                "prediction_type": cfg.prediction_type,
                "predict_x0": bool(self.predict_x0),
                "thresholding": bool(cfg.thresholding),
                "dynamic_thresholding_ratio": float(cfg.dynamic_thresholding_ratio),
                "sample_max_value": float(cfg.sample_max_value),
                "flow": bool(cfg.use_flow_sigmas),
                "solver_order": int(cfg.solver_order),
                "lower_order_final": bool(cfg.lower_order_final),
                "sigmas": [float(s) for s in self._sigmas],
            }
        )

    # -- the step --------------------------------------------------------------------------
    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: int | Any,
        sample: Any,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` from ``timestep`` to the next timestep of the schedule.

        model_output: the network's output at ``sample``, shape (B, C, ...) like sample.
        Corrects the previous step's result with this output (UniC, unless the previous step
        index is in ``disable_corrector``), then predicts the next sample (UniP, or
        ``solver_p``). Returns ``SchedulerOutput(prev_sample)`` (a 1-tuple with
        ``return_dict=False``), of model_output's type, dtype and device.
        """
        mo, x = self._begin_step(model_output, timestep, sample)
        k = self._step_index
        corrector = k > 0 and (k - 1) not in self.disable_corrector and self.last_sample is not None
        predict = self.solver_p is None
        out = self._outputs(x, mo)
        if corrector and predict:
            out["corrected"] = _tensor.empty_like(x)
        order = self._core.step(
            k,
            self.lower_order_nums,
            self.this_order if corrector else None,
            model_output=mo,
            sample=x,
            # (in this sample's dtype: the last step's output took its model output's, which
            # may differ, e.g. a bf16 model on float32 latents)
            last_sample=_tensor.as_dtype_of(self.last_sample, x) if corrector else None,
            history=self.model_outputs[::-1],
            predict=predict,
            **out,
        )
        self._push_history(out["hist"])
        self.timestep_list[:-1] = self.timestep_list[1:]
        self.timestep_list[-1] = timestep
        if predict:
            self.last_sample = out["corrected"] if corrector else x
            self.this_order = order
            prev = out["prev"]
        else:
            # The pass wrote the corrected sample (or x itself); the other scheduler predicts.
            self.last_sample = out["prev"] if corrector else x
            self.this_order = self._core.order(k, self.lower_order_nums)
            prev = self.solver_p.step(model_output, timestep, self.last_sample).prev_sample
        if self.lower_order_nums < self._core_solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return self._output_type(prev_sample=prev)

    def convert_model_output(
        self, model_output: Any, *args: Any, sample: Any = None, **kwargs: Any
    ) -> Any:
        """diffusers' conversion at the current step: x₀ (thresholded when configured) with
        ``predict_x0``, else ε; model_output's type and dtype."""
        sample = self._sample_arg(args, kwargs, sample, 1)
        if self._core is None or self._step_index is None:
            raise ValueError(
                "the step index is not set: call set_timesteps, then step (or "
                "_init_step_index(timestep)) first"
            )
        mo, x = _tensor.contiguous(model_output), _tensor.contiguous(sample)
        p, q, r, w = self._core.conversion(self._step_index)
        return self._fused(x, [(r, x)], (x, mo, p, q, w), self._core_thresholding)

    def _index_for_missing_timestep(self, t: Any, ts: np.ndarray) -> int:
        return len(ts) - 1

    # -- diffusers' update methods, for code written against diffusers' class --------------
    # Each is one fused pass with the core's float64 weights, on ``model_outputs`` as
    # diffusers keeps it (the converted outputs, newest last).

    def _weights(self, step_index: int, order: Any, corrector: bool) -> tuple:
        if self._core is None or self._step_index is None:
            raise ValueError(
                "the step index is not set: call set_timesteps, then step (or "
                "_init_step_index(timestep)) first"
            )
        if order is None:
            raise ValueError("missing `order` as a required keyword argument")
        return self._core.weights(step_index, int(order), corrector)

    def multistep_uni_p_bh_update(
        self, model_output: Any, *args: Any, sample: Any = None, order: Any = None, **kwargs: Any
    ) -> Any:
        """diffusers' UniP-``order`` update from the current step to the next, from
        ``sample`` and ``model_outputs`` (the current converted output last); with
        ``solver_p``, that scheduler's step on the raw ``model_output``."""
        sample = self._sample_arg(args, kwargs, sample, 1)
        order = args[2] if order is None and len(args) > 2 else order
        if self.solver_p is not None:
            return self.solver_p.step(model_output, self.timestep_list[-1], sample).prev_sample
        a, w0, ws, _ = self._weights(self._step_index, order, False)
        x = _tensor.contiguous(sample)
        ms = [_tensor.contiguous(m) for m in self.model_outputs[::-1][: int(order)]]
        return self._fused(x, [(a, x), (w0, ms[0]), *zip(ws, ms[1:], strict=False)])

    def multistep_uni_c_bh_update(
        self,
        this_model_output: Any,
        *args: Any,
        last_sample: Any = None,
        this_sample: Any = None,
        order: Any = None,
        **kwargs: Any,
    ) -> Any:
        """diffusers' UniC-``order`` correction of ``this_sample`` (the predictor's result at
        the current step) from ``last_sample`` (the sample it was predicted from), the
        earlier converted outputs in ``model_outputs`` and ``this_model_output`` (the
        converted output at the current step)."""
        if last_sample is None and len(args) > 1:
            last_sample = args[1]
        if this_sample is None and len(args) > 2:
            this_sample = args[2]
        if order is None and len(args) > 3:
            order = args[3]
        if last_sample is None or this_sample is None:
            raise ValueError(
                "missing `last_sample` or `this_sample` as a required keyword argument"
            )
        a, w0, ws, wt = self._weights(self._step_index - 1, order, True)
        x = _tensor.contiguous(last_sample)
        ms = [_tensor.contiguous(m) for m in self.model_outputs[::-1][: int(order)]]
        mt = _tensor.contiguous(this_model_output)
        terms = [(a, x), (w0, ms[0]), *zip(ws, ms[1:], strict=False), (wt, mt)]
        return self._fused(x, terms)
