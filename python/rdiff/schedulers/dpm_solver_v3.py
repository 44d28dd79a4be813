"""DPM-Solver-v3 (Zheng, Lu et al., NeurIPS 2023) with diffusers' scheduler interface."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _DpmSolverV3
from ..ems import EMSTable
from ._base import SchedulerBase, check_choice, check_index, check_int, exclusive, loop_setup

_SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic", "edm")


class DPMSolverV3Scheduler(SchedulerBase):
    """DPM-Solver-v3: a multistep predictor-corrector whose linear part and parameterisation
    come from the model's empirical statistics (an :class:`rdiff.EMSTable`).

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Args:
        ems: the model's statistics (``rdiff.estimate_ems``), an ``EMSTable`` or the path of
            one saved with ``save`` (a path keeps the config JSON-serialisable).
        solver_order: the predictor's order, 1–3 (the authors recommend 3 unconditional, 2
            guided sampling).
        predictor_pseudo / corrector_pseudo: the paper's pseudo-order (divided differences)
            for the predictor / the corrector.
        use_corrector: the corrector of each interval with the next model output (no extra
            model call); ``corrector_half`` limits it to t > 0.5 as the authors' ``half``.
        lower_order_final: lower orders in the last steps.
        skip_type: the authors' time spacing: "time_uniform", "logSNR", "time_quadratic" or
            "edm"; the steps are snapped to the EMS grid.
        prediction_type: what the model predicts ("epsilon", "sample", "v_prediction").

    The defaults are the authors' recommended settings for discrete-time models (order 3,
    time_uniform, corrector with pseudo-order, lower_order_final). The run goes from the EMS
    grid's noisy end to its clean end (t = 1 → 1/N in the reference's time by default: the
    training timesteps N − 1 → 0), and ``timesteps`` are the model's fractional timestep
    inputs N·t − 1 on the grid. The last ``prev_sample`` is x at the grid's clean end, not a
    denoised x₀ (as the authors' sampler). Each step is one fused pass in Rust with
    per-element float64 coefficients computed by ``set_timesteps``.
    """

    _compatibles: ClassVar[list[str]] = [
        "DDIMScheduler",
        "DDPMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
    ]
    order = 1

    def __init__(
        self,
        ems: Any = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 3,
        predictor_pseudo: bool = False,
        use_corrector: bool = True,
        corrector_pseudo: bool = True,
        corrector_half: bool = False,
        lower_order_final: bool = True,
        skip_type: str = "time_uniform",
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        check_choice("skip_type", skip_type, _SKIP_TYPES)
        check_choice("prediction_type", prediction_type, ("epsilon", "sample", "v_prediction"))
        check_int(solver_order, "solver_order", 1, 3)
        self._init_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )
        if ems is None:
            raise ValueError(
                "ems: DPMSolverV3Scheduler needs the model's statistics: an rdiff.EMSTable "
                "(rdiff.estimate_ems) or the path of a saved one"
            )
        if isinstance(ems, (str, os.PathLike)):
            ems = EMSTable.load(ems)
        if not isinstance(ems, EMSTable):
            raise TypeError(f"ems: expected an rdiff.EMSTable or a path, got {type(ems).__name__}")
        ems.check_schedule(self._ac)
        if not ems.complete:
            raise ValueError("ems: the table holds only the l stage (estimate stage 'f' too)")
        self.ems = ems
        rows = ems.steps + 1
        options = dict(
            solver_order=int(solver_order),
            predictor_pseudo=bool(predictor_pseudo),
            use_corrector=bool(use_corrector),
            corrector_pseudo=bool(corrector_pseudo),
            lower_order_final=bool(lower_order_final),
            corrector_half=bool(corrector_half),
            prediction_type=prediction_type,
        )
        # The statistics' integrals, once per scheduler; set_timesteps adds a run's plan.
        self._core = _DpmSolverV3(
            self.schedule,
            ems.t_start,
            ems.t_end,
            ems.lambdas.tolist(),
            np.ascontiguousarray(ems.l.reshape(rows, -1)),
            np.ascontiguousarray(ems.s.reshape(rows, -1)),
            np.ascontiguousarray(ems.b.reshape(rows, -1)),
            options,
        )
        self.init_noise_sigma = 1.0
        self.timesteps = self._timesteps_array(np.zeros(0))
        self._reset_loop()
        self._built_from = self.config

    def _reset_loop(self) -> None:
        self.model_outputs: list[Any] = []
        self.last_sample: Any = None
        self._coef: np.ndarray | None = None
        self._coef_on: dict[tuple, Any] = {}
        self._coef_fits_f32 = True

    @exclusive
    @loop_setup
    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """Set the run's ``num_inference_steps`` (= NFE) time steps and their coefficients."""
        n = check_int(num_inference_steps, "num_inference_steps")
        core = self._core
        core.set_timesteps(n, self.config.skip_type)
        self._times = np.asarray(core.times)
        self._orders = core.orders
        n_train = self.config.num_train_timesteps
        ts = np.clip(n_train * self._times - 1.0, 0.0, n_train - 1.0)
        self.num_inference_steps = n
        self.timesteps = self._timesteps_array(ts[:-1].copy(), device)
        self._step_index = None
        self._begin_index = None
        self._reset_loop()
        self._take_coefficients()

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at step ``begin_index`` (img2img pipelines): the multistep warm-up
        (orders, corrector) restarts there, as the authors' sampler would from that time."""
        # (one of the steps: the plan restarts there)
        known = self.num_inference_steps is not None
        b = check_index(begin_index, "begin_index", len(self.timesteps) - 1 if known else None)
        super().set_begin_index(b)
        if self.num_inference_steps is not None:
            self._core.set_timesteps(self.num_inference_steps, self.config.skip_type, b)
            self._orders = self._core.orders
            self._take_coefficients()

    def _take_coefficients(self) -> None:
        """The run's coefficient table from the core: ValueError where it overflows float64;
        whether it fits float32 is kept for the passes (float64 samples keep what float32
        ones would read as inf, giving NaN samples)."""
        self._coef = self._core.coefficients()
        self._coef_on = {}
        if not np.isfinite(self._coef).all():
            raise ValueError(
                "ems: the step coefficients overflow (statistics out of range for this "
                "schedule and step count)"
            )
        with np.errstate(over="ignore"):
            self._coef_fits_f32 = bool(np.isfinite(self._coef.astype(np.float32)).all())

    def _coefficients_like(self, tensors: tuple, i: int) -> Any:
        """Step ``i``'s coefficient rows in the pass's arithmetic dtype (float64 only when the
        sample and the model output are) on their device; the run's table is converted once
        per device and dtype."""
        wide = all(_tensor.dtype_name(v) == "float64" for v in tensors)
        if not wide and not self._coef_fits_f32:
            raise ValueError(
                "ems: the step coefficients overflow float32 (statistics out of range for this "
                "schedule); a float64 sample and model output would keep them"
            )
        x = tensors[0]
        if _tensor.is_torch(x):
            key = ("torch", str(x.device), wide)
            if key not in self._coef_on:
                torch = _tensor.torch_module()
                dt = torch.float64 if wide else torch.float32
                self._coef_on[key] = torch.from_numpy(self._coef).to(device=x.device, dtype=dt)
        else:
            key = ("numpy", "cpu", wide)
            if key not in self._coef_on:
                dt = np.float64 if wide else np.float32
                self._coef_on[key] = np.ascontiguousarray(self._coef, dtype=dt)
        return self._coef_on[key][i]

    @exclusive
    def step(
        self,
        model_output: Any,
        timestep: float | Any,
        sample: Any,
        return_dict: bool = True,
    ) -> Any:
        """Advance ``sample`` from ``timestep`` to the next time step.

        model_output: the network's output at ``sample`` (shape like sample). Corrects the
        previous step's result with it (when the corrector runs), then predicts the next
        sample. Returns ``SchedulerOutput(prev_sample)`` (a 1-tuple with
        ``return_dict=False``) of model_output's type, dtype and device.
        """
        mo, x = self._begin_step(model_output, timestep, sample)
        i = self._step_index
        corrector, _ = self._orders[i]
        need = self._core.history_needed(i)
        if len(self.model_outputs) < need:
            raise ValueError(
                f"step: step {i} needs {need} earlier model outputs; steps must run in order "
                "from the first (or from set_begin_index's)"
            )
        x_all = self.last_sample is None or not corrector
        hist = _tensor.empty_like(x, dtype=mo.dtype)
        prev = _tensor.empty_like(x, dtype=mo.dtype)
        corrected = None if x_all else _tensor.empty_like(x)
        self._core.step(
            i,
            model_output=mo,
            sample=x,
            # (in this sample's dtype, as UniPC's)
            last_sample=None if x_all else _tensor.as_dtype_of(self.last_sample, x),
            history=self.model_outputs[:need],
            coef=self._coefficients_like((x, mo), i),
            hist=hist,
            prev=prev,
            corrected=corrected,
            stream=_tensor.cuda_stream(x),
        )
        self.last_sample = x if corrected is None else corrected
        self.model_outputs = [hist, *self.model_outputs[:2]]
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return self._output_type(prev_sample=prev)

    def _index_for_missing_timestep(self, t: Any, ts: np.ndarray) -> int:
        raise ValueError(
            f"timestep: {t} is not one of this run's time steps (first {ts[:3].tolist()}...); "
            "DPM-Solver-v3's timesteps are fractional: pass the scheduler's own"
        )

    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """α, σ at (fractional) training timesteps, as the reference's t = (τ + 1)/N."""
        n = self.config.num_train_timesteps
        tau = np.asarray(timesteps, dtype=np.float64)
        # (the schedule's own range, t in [1/N, 1]; below it σ → 0 and the log-SNR diverges)
        if np.any(tau < -1e-6) or np.any(tau > n - 1 + 1e-6):
            raise ValueError(f"timesteps: must lie in [0, {n - 1}], got {tau.tolist()}")
        t = (tau + 1.0) / n
        return (
            np.asarray(self.schedule.alpha_t(t), dtype=np.float64),
            np.asarray(self.schedule.sigma_t(t), dtype=np.float64),
        )
