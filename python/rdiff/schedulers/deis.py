"""DEIS (Zhang & Chen 2022), a drop-in for diffusers' ``DEISMultistepScheduler``: the
multistep DPM-Solver machinery with DEIS's log-ρ polynomial weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._rdiff import _diffusers_schedule, _DpmMultistep
from ._base import check_choice, check_int, exclusive, loop_setup
from .dpm_multistep import _PREDICTIONS, DPMSolverMultistepScheduler


class DEISMultistepScheduler(DPMSolverMultistepScheduler):
    """Multistep DEIS with diffusers' interface: the model output is converted to ε, the
    first order is DDIM (DPM-Solver-1), orders 2 and 3 integrate the Lagrange polynomial in
    log ρ (ρ = σ/α) through the last 2 or 3 ε over [ρ_s, ρ_t] (``solver_type="logrho"``).

    Every constructor argument has diffusers' meaning and default (Karras, exponential, beta
    and flow sigmas, dynamic shifting with ``mu``, thresholding, ``lower_order_final``); like
    diffusers, ``algorithm_type`` "dpmsolver"/"dpmsolver++" and ``solver_type``
    "midpoint"/"heun"/"bh1"/"bh2" (a sibling scheduler's config) become "deis" and "logrho".
    ``step`` is one fused pass (conversion, update, history write) on numpy arrays or torch
    tensors, returning the new sample in the model output's dtype.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

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
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if sum([use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas]) > 1:
            raise ValueError(
                "use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: only one can be used"
            )
        if algorithm_type in ("dpmsolver", "dpmsolver++"):
            algorithm_type = "deis"
            self.register_to_config(algorithm_type=algorithm_type)
        check_choice("algorithm_type", algorithm_type, ("deis",))
        if solver_type in ("midpoint", "heun", "bh1", "bh2"):
            solver_type = "logrho"
            self.register_to_config(solver_type=solver_type)
        check_choice("solver_type", solver_type, ("logrho",))
        check_choice("solver_order", solver_order, (1, 2, 3))
        check_choice("prediction_type", prediction_type, _PREDICTIONS)
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self._algorithm_type, self._solver_type = algorithm_type, solver_type
        self._init_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False
        )
        # (float32 training timesteps here, where the DPM-Solver class has int64)
        n = num_train_timesteps
        self._init_state(np.linspace(0, n - 1, n, dtype=np.float32)[::-1], solver_order)

    @exclusive
    @loop_setup
    def set_timesteps(
        self, num_inference_steps: int, device: Any = None, mu: float | None = None
    ) -> None:
        """diffusers' schedule for ``num_inference_steps``: ``timesteps`` int64 (n,), ``sigmas``
        float32 (n + 1,) ending at the training σ_min (the default spacing) or repeating the
        last σ (Karras, exponential, beta and flow sigmas); resets the history."""
        self._apply_mu(mu)
        cfg = self.config
        n = check_int(num_inference_steps, "num_inference_steps")
        kind = self._sigma_kind()
        ts, sigmas = _diffusers_schedule(
            self._ac,
            n,
            None,
            cfg.timestep_spacing,
            int(cfg.steps_offset),
            kind,
            float(cfg.flow_shift),
            "sigma_min",
            -float("inf"),
            True,  # DEIS rounds Karras timesteps on every β schedule
            sigma_table=self._sigma_table(),
        )
        if kind != "default":
            sigmas = sigmas.copy()
            sigmas[-1] = sigmas[-2]
        self._start_loop(ts, sigmas, device)

    def _make_core(self) -> Any:
        cfg = self.config
        return _DpmMultistep(
            self._solver_args("deis", "logrho"),
            int(cfg.solver_order),
            bool(cfg.lower_order_final),
            False,
            False,
        )

    # diffusers' names for the solver methods
    def deis_first_order_update(self, model_output: Any, *args: Any, **kwargs: Any) -> Any:
        """diffusers' first-order (DDIM) update with the converted ``model_output``."""
        return self.dpm_solver_first_order_update(model_output, *args, **kwargs)

    def multistep_deis_second_order_update(self, model_output_list: list, *args, **kwargs):
        """diffusers' second-order DEIS update (the last two converted outputs)."""
        return self.multistep_dpm_solver_second_order_update(model_output_list, *args, **kwargs)

    def multistep_deis_third_order_update(self, model_output_list: list, *args, **kwargs):
        """diffusers' third-order DEIS update (the last three converted outputs)."""
        return self.multistep_dpm_solver_third_order_update(model_output_list, *args, **kwargs)
