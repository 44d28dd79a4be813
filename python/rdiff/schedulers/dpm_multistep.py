"""The multistep DPM-Solver / DPM-Solver++ scheduler, a drop-in for diffusers' own."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _diffusers_schedule, _DpmMultistep
from ._base import (
    SchedulerOutput,
    check_choice,
    check_int,
    exclusive,
    loop_setup,
    shift_from_mu,
)
from ._dpm_solver import DPMSolverBase

_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
_PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow_prediction")


class DPMSolverMultistepScheduler(DPMSolverBase):
    """Multistep DPM-Solver (Lu et al. 2022) and DPM-Solver++ with diffusers' interface.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Every constructor argument has diffusers' meaning and default. ``step`` runs one fused pass
    in Rust (model-output conversion, the order-1/2/3 update and the history write) on numpy
    arrays or torch CPU or CUDA tensors of float32, float16, bfloat16 (torch) or float64 (on the
    CPU), with arithmetic in float32 (float64 when every buffer is); the result has the model
    output's type, dtype and device. ``model_outputs`` is a list of the caller's arrays, as in
    diffusers.
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
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if sum([use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas]) > 1:
            raise ValueError(
                "use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: only one can be used"
            )
        # diffusers maps the names of its sibling schedulers onto its own, in the config too
        # (so that from_config(UniPC's config) round-trips, as diffusers' test_compatibles
        # checks).
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
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(
                f"final_sigmas_type: 'zero' is not supported with algorithm_type "
                f"{algorithm_type!r}; choose 'sigma_min'"
            )
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self._algorithm_type = algorithm_type
        self._solver_type = solver_type
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
        self._init_state(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64), solver_order)

    def _init_state(self, timesteps: np.ndarray, solver_order: int) -> None:
        """The state before set_timesteps: the σ̃ tables, the training timesteps, no history."""
        self._training_sigmas(self._ac)
        self.init_noise_sigma = 1.0
        self.timesteps = self._timesteps_array(timesteps)
        self.model_outputs: list[Any] = [None] * solver_order
        self.lower_order_nums = 0
        self._core: _DpmMultistep | None = None
        self._built_from = self.config

    # -- schedule --------------------------------------------------------------------------
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

        Fills ``timesteps`` (int64, descending, length n) and ``sigmas`` (float32, length
        n + 1, the last one 0 or σ_min) exactly as diffusers does, and resets the history.
        """
        self._apply_mu(mu)
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if num_inference_steps is not None:
            num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
        sigma_kind = self._sigma_kind()
        if timesteps is not None and sigma_kind not in ("default",):
            raise ValueError(f"timesteps: custom timesteps cannot be used with {sigma_kind} sigmas")
        custom = None if timesteps is None else [int(t) for t in np.asarray(timesteps).tolist()]
        ts, sigmas = _diffusers_schedule(
            self._ac,
            num_inference_steps,
            custom,
            cfg.timestep_spacing,
            int(cfg.steps_offset),
            sigma_kind,
            float(cfg.flow_shift),
            cfg.final_sigmas_type,
            float(cfg.lambda_min_clipped),
            cfg.beta_schedule != "squaredcos_cap_v2",
            sigma_table=self._sigma_table(),
        )
        self._start_loop(ts, sigmas, device)

    def _apply_mu(self, mu: float | None) -> None:
        """Dynamic shifting: ``flow_shift`` = e^μ for this and later schedules."""
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError(
                    "mu: needs use_dynamic_shifting=True and time_shift_type 'exponential'"
                )
            self.register_to_config(flow_shift=shift_from_mu(mu))

    def _start_loop(self, ts: np.ndarray, sigmas: np.ndarray, device: Any) -> None:
        """The loop's timesteps (int64) and σ̃ (float32, one more), a fresh history and core."""
        self._sigmas = sigmas.astype(np.float32)
        self._publish(sigmas=self._sigmas)
        self.timesteps = self._timesteps_array(ts.astype(np.int64), device)
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._core = self._make_core()

    def _make_core(self) -> Any:
        cfg = self.config
        return _DpmMultistep(
            self._solver_args(self._algorithm_type, self._solver_type),
            int(cfg.solver_order),
            bool(cfg.lower_order_final),
            bool(cfg.euler_at_final),
            cfg.final_sigmas_type == "zero",
        )

    # -- the step --------------------------------------------------------------------------
    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: int | Any,
        sample: Any,
        generator: Any = None,
        variance_noise: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` from ``timestep`` to the next timestep of the schedule.

        model_output: the network's output, shape (B, C, ...) (or (B, 2C, ...) with a learned
        variance); sample: (B, C, ...). Returns ``SchedulerOutput(prev_sample)`` (or a 1-tuple
        with ``return_dict=False``), prev_sample of model_output's type, dtype and device.
        SDE algorithm types draw float32 noise as diffusers does from ``generator`` (a
        torch.Generator or list of them for torch input, a numpy Generator for numpy input)
        unless ``variance_noise`` is given.
        """
        mo, x = self._begin_step(model_output, timestep, sample)
        noise = None
        if self._algorithm_type.startswith("sde"):
            if variance_noise is not None:
                noise = self._given_noise(variance_noise, x)
            else:
                noise = _tensor.randn(tuple(x.shape), x, generator)
        out = self._outputs(x, mo)
        self._core.step(
            self._step_index,
            self.lower_order_nums,
            model_output=mo,
            sample=x,
            history=self._history(),
            noise=noise,
            **out,
        )
        self._push_history(out["hist"])
        if self.lower_order_nums < self._core_solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (out["prev"],)
        return self._output_type(prev_sample=out["prev"])

    def multistep_dpm_solver_second_order_update(
        self,
        model_output_list: list,
        *args: Any,
        sample: Any = None,
        noise: Any = None,
        **kwargs: Any,
    ) -> Any:
        """diffusers' second-order multistep update from the converted outputs
        ``model_output_list`` (oldest first; the last two are used)."""
        sample = self._sample_arg(args, kwargs, sample, 2)
        return self._update(list(model_output_list), sample, noise, 2)

    def multistep_dpm_solver_third_order_update(
        self,
        model_output_list: list,
        *args: Any,
        sample: Any = None,
        noise: Any = None,
        **kwargs: Any,
    ) -> Any:
        """diffusers' third-order multistep update (the last three converted outputs)."""
        sample = self._sample_arg(args, kwargs, sample, 2)
        return self._update(list(model_output_list), sample, noise, 3)
