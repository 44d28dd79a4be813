"""The singlestep DPM-Solver / DPM-Solver++ scheduler, a drop-in for diffusers' own."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _diffusers_schedule, _DpmSinglestep, _singlestep_order_list
from ._base import (
    SchedulerOutput,
    check_choice,
    check_int,
    exclusive,
    loop_setup,
    shift_from_mu,
)
from ._dpm_solver import DPMSolverBase

logger = logging.getLogger(__name__)

_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")
_PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow_prediction")


class DPMSolverSinglestepScheduler(DPMSolverBase):
    """Singlestep DPM-Solver (Lu et al. 2022) and DPM-Solver++ with diffusers' interface.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Every constructor argument has diffusers' meaning and default (note ``lower_order_final``
    defaults to False here, as in diffusers). The steps are grouped by ``order_list`` (for
    ``solver_order=2``: ``[1, 2, 1, 2, ...]``); the first step of a group saves the sample in
    ``self.sample`` and every step of the group updates from it with the converted model outputs
    of the group so far. ``step`` runs one fused pass in Rust (conversion from the current
    sample, the order-1/2/3 update from the group's start, the history write) on numpy arrays or
    torch CPU or CUDA tensors of float32, float16, bfloat16 (torch) or float64 (on the CPU),
    with arithmetic in float32 (float64 when every buffer is); the result has the model output's
    type, dtype and device.
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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if sum([use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas]) > 1:
            raise ValueError(
                "use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: only one can be used"
            )
        # diffusers maps the names of its sibling schedulers onto its own, in the config too.
        if algorithm_type == "deis":
            algorithm_type = "dpmsolver++"
            self.register_to_config(algorithm_type=algorithm_type)
        check_choice("algorithm_type", algorithm_type, _ALGORITHMS)
        if solver_type in ("logrho", "bh1", "bh2"):
            solver_type = "midpoint"
            self.register_to_config(solver_type=solver_type)
        check_choice("solver_type", solver_type, ("midpoint", "heun"))
        check_choice("solver_order", solver_order, (1, 2, 3))
        check_choice("prediction_type", prediction_type, _PREDICTIONS)
        if prediction_type == "flow_prediction" and algorithm_type == "dpmsolver":
            raise ValueError(
                "prediction_type: 'flow_prediction' needs algorithm_type 'dpmsolver++' or "
                "'sde-dpmsolver++'"
            )
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        if algorithm_type == "dpmsolver" and final_sigmas_type == "zero":
            raise ValueError(
                "final_sigmas_type: 'zero' is not supported with algorithm_type 'dpmsolver'; "
                "choose 'sigma_min'"
            )
        self._init_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False
        )
        self._training_sigmas(self._ac)
        self.init_noise_sigma = 1.0
        # diffusers' placeholder before set_timesteps: float32 [N-1, ..., 0].
        ramp = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)
        self.timesteps = self._timesteps_array(ramp[::-1].copy())
        self.model_outputs: list[Any] = [None] * solver_order
        self.sample: Any = None
        self.order_list = self.get_order_list(num_train_timesteps)
        self._core: _DpmSinglestep | None = None
        self._built_from = self.config

    # -- schedule --------------------------------------------------------------------------
    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """The solver order of each step (diffusers' ``get_order_list``, computed in Rust)."""
        cfg = self.config
        return list(
            _singlestep_order_list(
                int(num_inference_steps),
                int(cfg.solver_order),
                bool(cfg.lower_order_final),
                cfg.final_sigmas_type == "zero",
            )
        )

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps (``num_inference_steps`` or custom ``timesteps``).

        Fills ``timesteps`` (int64, descending, length n), ``sigmas`` (float32, length n + 1,
        the last one 0 or σ_min) and ``order_list`` exactly as diffusers does, and resets the
        history. As in diffusers, ``lower_order_final`` is switched on in the config when
        ``solver_order`` does not divide n or the final σ is zero. ``mu`` (with
        ``use_dynamic_shifting``) shifts the flow sigmas of this call by ``exp(mu)``.
        """
        cfg = self.config
        flow_shift = float(cfg.flow_shift)
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError(
                    "mu: needs use_dynamic_shifting=True and time_shift_type 'exponential'"
                )
            flow_shift = shift_from_mu(mu)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if num_inference_steps is not None:
            num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
        sigma_kind = self._sigma_kind()
        if timesteps is not None and sigma_kind in ("karras", "exponential", "beta"):
            raise ValueError(f"timesteps: custom timesteps cannot be used with {sigma_kind} sigmas")
        custom = None if timesteps is None else [int(t) for t in np.asarray(timesteps).tolist()]
        if custom is not None and sigma_kind == "flow":
            # diffusers places flow sigmas by count only: custom timesteps give just their number.
            num_inference_steps, custom = len(custom), None
        ts, sigmas = _diffusers_schedule(
            self._ac,
            num_inference_steps,
            custom,
            "linspace",
            0,
            sigma_kind,
            flow_shift,
            cfg.final_sigmas_type,
            float(cfg.lambda_min_clipped),
            True,
            sigma_table=self._sigma_table(),
        )
        n = len(ts)
        self._sigmas = sigmas.astype(np.float32)
        self._publish(sigmas=self._sigmas)
        self.timesteps = self._timesteps_array(ts.astype(np.int64), device)
        self.num_inference_steps = n
        self.model_outputs = [None] * cfg.solver_order
        self.sample = None
        if not cfg.lower_order_final and n % cfg.solver_order != 0:
            logger.warning(
                "lower_order_final: switched on because solver_order=%d does not divide the %d "
                "inference steps",
                cfg.solver_order,
                n,
            )
            self.register_to_config(lower_order_final=True)
        if not self.config.lower_order_final and cfg.final_sigmas_type == "zero":
            logger.warning("lower_order_final: switched on because final_sigmas_type is 'zero'")
            self.register_to_config(lower_order_final=True)
        self.order_list = self.get_order_list(n)
        self._step_index = None
        self._begin_index = None
        self._core = _DpmSinglestep(
            self._solver_args(self.config.algorithm_type, self.config.solver_type),
            self.order_list,
        )

    # -- the step --------------------------------------------------------------------------
    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: int | Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
        variance_noise: Any = None,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` from ``timestep`` to the next timestep of the schedule.

        model_output: the network's output, shape (B, C, ...) (or (B, 2C, ...) with a learned
        variance); sample: (B, C, ...). Returns ``SchedulerOutput(prev_sample)`` (or a 1-tuple
        with ``return_dict=False``), prev_sample of model_output's type, dtype and device.
        ``sde-dpmsolver++`` draws noise as diffusers does (model_output's dtype) from
        ``generator`` (a torch.Generator or list of them for torch input, a numpy Generator for
        numpy input) unless ``variance_noise`` (an rdiff extension) is given.
        """
        mo, x = self._begin_step(model_output, timestep, sample)
        start = self.sample
        if start is not None:
            _tensor.same_framework(start, x, "step", devices=False)
            if start.dtype != x.dtype:
                start = start.to(x.dtype) if _tensor.is_torch(start) else start.astype(x.dtype)
            start = _tensor.contiguous(start)
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            if variance_noise is not None:
                noise = self._given_noise(variance_noise, x)
            else:
                # diffusers draws in the converted output's dtype: round to it, compute in f32.
                drawn = _tensor.randn(tuple(x.shape), x, generator)
                drawn = drawn.to(mo.dtype) if _tensor.is_torch(drawn) else drawn.astype(mo.dtype)
                noise = _tensor.to_float32(drawn, x)
        out = self._outputs(x, mo)
        order = self._core.step(
            self._step_index,
            model_output=mo,
            sample=x,
            start=start,
            history=self._history(),
            noise=noise,
            **out,
        )
        self._push_history(out["hist"])
        if order == 1:
            self.sample = x
        self._step_index += 1
        if not return_dict:
            return (out["prev"],)
        return self._output_type(prev_sample=out["prev"])
