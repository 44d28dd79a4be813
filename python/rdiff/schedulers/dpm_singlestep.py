"""The singlestep DPM-Solver / DPM-Solver++ scheduler, a drop-in for diffusers' own."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _diffusers_schedule, _singlestep_order_list, _SinglestepCore
from ._base import (
    SchedulerBase,
    SchedulerOutput,
    check_choice,
    check_int,
    exclusive,
    thresholding_scratch,
)

logger = logging.getLogger(__name__)

_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")
_PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow_prediction")


class DPMSolverSinglestepScheduler(SchedulerBase):
    """Singlestep DPM-Solver (Lu et al. 2022) and DPM-Solver++ with diffusers' interface.

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.

    Every constructor argument has diffusers' meaning and default (note ``lower_order_final``
    defaults to False here, as in diffusers). The steps are grouped by ``order_list`` (for
    ``solver_order=2``: ``[1, 2, 1, 2, ...]``); the first step of a group saves the sample in
    ``self.sample`` and every step of the group updates from it with the converted model
    outputs of the group so far. ``step`` runs one fused pass in Rust (conversion from the
    current sample, the order-1/2/3 update from the group's start, the history write) on numpy
    arrays or torch CPU tensors of float32, float16, bfloat16 (torch) or float64 (numpy), with
    arithmetic in float32; the result has the model output's type, dtype and device.
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
        ac = self.alphas_cumprod
        self.alpha_t = np.sqrt(ac)
        self.sigma_t = np.sqrt(1.0 - ac)
        self.lambda_t = np.log(self.alpha_t) - np.log(self.sigma_t)
        self.sigmas = ((1.0 - ac) / ac) ** 0.5
        self.init_noise_sigma = 1.0
        # diffusers' placeholder before set_timesteps: float32 [N-1, ..., 0].
        ramp = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)
        self.timesteps = self._timesteps_array(ramp[::-1].copy())
        self.model_outputs: list[Any] = [None] * solver_order
        self.sample: Any = None
        self.order_list = self.get_order_list(num_train_timesteps)
        self._core: _SinglestepCore | None = None

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
            flow_shift = float(np.exp(mu))
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if num_inference_steps is not None:
            num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
        sigma_kind = "default"
        for flag, kind in (
            ("use_karras_sigmas", "karras"),
            ("use_exponential_sigmas", "exponential"),
            ("use_beta_sigmas", "beta"),
            ("use_flow_sigmas", "flow"),
        ):
            if cfg[flag]:
                sigma_kind = kind
                break
        if timesteps is not None and sigma_kind in ("karras", "exponential", "beta"):
            raise ValueError(f"timesteps: custom timesteps cannot be used with {sigma_kind} sigmas")
        custom = None if timesteps is None else [int(t) for t in np.asarray(timesteps).tolist()]
        if custom is not None and sigma_kind == "flow":
            # diffusers places flow sigmas by count only: custom timesteps give just their number.
            num_inference_steps, custom = len(custom), None
        ts, sigmas = _diffusers_schedule(
            self.alphas_cumprod,
            num_inference_steps,
            custom,
            "linspace",
            0,
            sigma_kind,
            flow_shift,
            cfg.final_sigmas_type,
            float(cfg.lambda_min_clipped),
            True,
        )
        n = len(ts)
        self.sigmas = sigmas.astype(np.float32)
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
        self._core = _SinglestepCore(
            self.config.algorithm_type,
            self.config.solver_type,
            cfg.prediction_type,
            bool(cfg.thresholding),
            float(cfg.dynamic_thresholding_ratio),
            float(cfg.sample_max_value),
            bool(cfg.use_flow_sigmas),
            [float(s) for s in self.sigmas],
        )

    def _index_for_missing_timestep(self, t: Any, ts: np.ndarray) -> int:
        # diffusers falls back to the last step for a timestep it does not know.
        return len(ts) - 1

    def _step_order(self) -> int:
        """The order of this step: ``order_list``'s, lowered while the history lacks outputs
        (a loop that starts mid-group, e.g. img2img)."""
        i = self._step_index
        if i >= len(self.order_list):
            raise ValueError(
                f"step: order_list has {len(self.order_list)} entries, none for step {i}; call "
                "set_timesteps again"
            )
        order = int(self.order_list[i])
        # The history after this step's shift: [..., model_outputs[-1], <this step's output>].
        shifted = [*self.model_outputs[1:], True]
        while order > 1 and shifted[-order] is None:
            order -= 1
        return order

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
        if self.num_inference_steps is None or self._core is None:
            raise ValueError(
                "step: the number of inference steps is not set; call set_timesteps first"
            )
        _tensor.check_float(model_output, "model_output")
        _tensor.check_float(sample, "sample")
        _tensor.same_framework(model_output, sample, "step")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError(
                f"step: all {len(self.timesteps)} steps are done; call set_timesteps to start "
                "a new loop"
            )
        cfg = self.config
        shape = tuple(sample.shape)
        if len(shape) < 1 or shape[0] == 0:
            raise ValueError(f"sample: expected a non-empty batch, got shape {shape}")
        mo_shape = tuple(model_output.shape)
        learned = (
            cfg.variance_type in ("learned", "learned_range") and cfg.prediction_type == "epsilon"
        )
        if mo_shape != shape and not (
            learned
            and len(mo_shape) == len(shape)
            and mo_shape[0] == shape[0]
            and mo_shape[2:] == shape[2:]
            and mo_shape[1] >= shape[1]
        ):
            raise ValueError(f"model_output: shape {mo_shape} does not match sample's {shape}")
        order = self._step_order()
        mo = _tensor.contiguous(model_output)
        x = _tensor.contiguous(sample)
        m1 = self.model_outputs[-1] if order >= 2 else None
        m2 = self.model_outputs[-2] if order >= 3 else None
        for m, what in ((m1, "model_outputs[-2]"), (m2, "model_outputs[-3]")):
            if m is not None and (
                tuple(m.shape) != shape or _tensor.dtype_name(m) != _tensor.dtype_name(model_output)
            ):
                raise ValueError(
                    f"{what}: the history entry does not match this step's "
                    "shape and dtype; call set_timesteps to start a new loop"
                )
        start = None
        if order > 1:
            start = self.sample
            if start is None:
                raise ValueError(
                    f"step: an order-{order} step needs the sample saved at its group's first "
                    "step, and there is none; call set_timesteps to start a new loop"
                )
            _tensor.same_framework(start, sample, "step")
            if tuple(start.shape) != shape:
                raise ValueError(
                    f"sample: shape {shape} differs from the group's start sample "
                    f"{tuple(start.shape)}"
                )
            if _tensor.dtype_name(start) != _tensor.dtype_name(x):
                start = start.to(x.dtype) if _tensor.is_torch(start) else start.astype(x.dtype)
            start = _tensor.contiguous(start)
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            if variance_noise is not None:
                noise = _tensor.to_float32(variance_noise, x)
                if tuple(noise.shape) != shape:
                    raise ValueError(
                        f"variance_noise: shape {tuple(noise.shape)} does not match "
                        f"sample's {shape}"
                    )
            else:
                # diffusers draws in the converted output's dtype: round to it, compute in f32.
                drawn = _tensor.randn(shape, x, generator)
                if _tensor.is_torch(drawn):
                    drawn = drawn.to(model_output.dtype)
                else:
                    drawn = drawn.astype(model_output.dtype)
                noise = _tensor.to_float32(drawn, x)
        hist = _tensor.empty_like(x, dtype=model_output.dtype)
        prev = _tensor.empty_like(x, dtype=model_output.dtype)
        # Kept alive until the kernel is enqueued (then stream order protects its reuse).
        bounds = thresholding_scratch(x, shape[0]) if cfg.thresholding else None
        self._core.step(
            self._step_index,
            order,
            _tensor.describe(mo),
            _tensor.describe(x),
            None if start is None else _tensor.describe(start),
            None if m1 is None else _tensor.describe(m1),
            None if m2 is None else _tensor.describe(m2),
            None if noise is None else _tensor.describe(noise),
            _tensor.describe(hist),
            _tensor.describe(prev),
            shape[0],
            math.prod(mo_shape[1:]),
            _tensor.cuda_stream(x),
            None if bounds is None else _tensor.describe(bounds),
        )
        for i in range(cfg.solver_order - 1):
            self.model_outputs[i] = self.model_outputs[i + 1]
        self.model_outputs[-1] = hist
        if order == 1:
            self.sample = x
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    # -- forward process -------------------------------------------------------------------
    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps]
        elif self._step_index is not None:
            idx = [self._step_index] * len(timesteps)
        else:
            idx = [self._begin_index] * len(timesteps)
        sigma = np.asarray(self.sigmas, dtype=np.float64)[idx]
        if self.config.use_flow_sigmas:
            return 1.0 - sigma, sigma
        alpha = 1.0 / np.sqrt(sigma**2 + 1.0)
        return alpha, sigma * alpha
