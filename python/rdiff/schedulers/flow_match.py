"""The flow-matching Euler scheduler (rectified flow; SD3, Flux, Qwen-Image, Wan), a drop-in
for diffusers' ``FlowMatchEulerDiscreteScheduler``."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .. import _tensor
from .._rdiff import _Euler, _flow_match_schedule, _flow_match_training_sigmas
from ._base import (
    SchedulerOutput,
    check_choice,
    check_int,
    exclusive,
    loop_setup,
    shift_from_mu,
)
from .euler import SigmaSchedulerBase, _float_array


def _check_shift(shift: Any) -> float:
    """``shift`` as a float: TypeError unless a number, ValueError unless finite and > 0."""
    if isinstance(shift, (bool, np.bool_)) or not isinstance(
        shift, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"shift: expected a number, got {type(shift).__name__} {shift!r}")
    shift = float(shift)
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift: must be a positive number, got {shift}")
    return shift


class _FlowSchedule:
    """What the flow-matching classes share: the training σ (statically shifted), the σ → t
    map and the forward process x_t = (1 − σ)·x₀ + σ·ε."""

    def _init_flow(self, num_train_timesteps: int, shift: float, static: bool) -> float:
        """The training schedule (shifted by ``shift`` when ``static``); the checked shift."""
        n = check_int(num_train_timesteps, "num_train_timesteps")
        shift = _check_shift(shift)
        sigmas = _flow_match_training_sigmas(n, shift if static else None)
        self.num_inference_steps: int | None = None
        self._set_schedule(sigmas * np.float32(n), np.asarray(sigmas), None)
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])
        return shift

    def _sigma_to_t(self, sigma: Any) -> Any:
        return sigma * self.config.num_train_timesteps

    def _check_spread(self, timesteps: np.ndarray, shift: float) -> None:
        """ValueError naming ``shift`` where the static shift crowds every σ of a loop of
        several steps to one value (every timestep equal: the loop would stop at its first)."""
        ts = np.asarray(timesteps)
        if shift > 1.0 and len(ts) > 1 and ts.min() == ts.max():
            raise ValueError(
                f"shift: {shift:g} crowds every σ of the loop to {float(ts[0]) / len(self):g} "
                f"(all {len(ts)} timesteps are {float(ts[0]):g}); use a smaller shift"
            )

    def _loop_done_message(self) -> str:
        msg = super()._loop_done_message()  # type: ignore[misc]
        shift = float(self.config.shift)
        if "appears" in msg and shift > 1.0 and not self.config.get("use_dynamic_shifting"):
            msg += (
                f"; here shift = {shift:g} crowds the σs towards 1 so that timesteps repeat: "
                "use a smaller shift, or call set_begin_index(0) after set_timesteps"
            )
        return msg

    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, sigma = SigmaSchedulerBase._alpha_sigma_for_noise(self, timesteps)
        return 1.0 - sigma, sigma


class FlowMatchEulerDiscreteScheduler(_FlowSchedule, SigmaSchedulerBase):
    """Euler steps of a flow-matching (velocity-predicting) model, x_t = (1 − σ)·x₀ + σ·ε,
    with diffusers' interface.

    Every constructor argument has diffusers' meaning and default: the static ``shift`` or
    ``use_dynamic_shifting`` with ``mu`` at ``set_timesteps`` (exponential or linear
    ``time_shift_type``), ``shift_terminal``, Karras / exponential / beta sigmas,
    ``invert_sigmas`` and ``stochastic_sampling``. ``set_timesteps`` takes
    ``num_inference_steps``, custom ``sigmas`` (Flux) and/or ``timesteps``. ``step`` is one
    fused pass, x + (σ_next − σ)·v (or (1 − σ_next)·x₀ + σ_next·n when stochastic, the
    noise drawn as diffusers draws it), in float32, returned in the model output's dtype.
    ``per_token_timesteps`` (a (B, T) tensor for a (B, T, C) token sample) steps each token
    from its own σ, with diffusers' torch arithmetic (not a fused pass).

    Thread safety: stateful, so one instance per thread; ``step`` or ``set_timesteps`` on an
    instance another thread is using raises ``rdiff.ConcurrentUseError``.
    """

    _compatibles: ClassVar[list[str]] = []
    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        self._register(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if sum(bool(f) for f in (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)) > 1:
            raise ValueError(
                "use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: only one can be used"
            )
        check_choice("time_shift_type", time_shift_type, ("exponential", "linear"))
        if shift_terminal is not None and not (0.0 <= float(shift_terminal) < 1.0):
            raise ValueError(f"shift_terminal: must lie in [0, 1), got {shift_terminal}")
        self._shift = self._init_flow(num_train_timesteps, shift, not use_dynamic_shifting)
        self._built_from = self.config

    @property
    def shift(self) -> float:
        """The static time shift (``set_shift`` changes it for the next ``set_timesteps``)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = _check_shift(shift)

    def time_shift(self, mu: float, sigma: float, t: Any) -> Any:
        """diffusers' dynamic shift of t: e^μ/(e^μ + (1/t − 1)^σ) (exponential) or
        μ/(μ + (1/t − 1)^σ) (linear)."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t: Any) -> Any:
        """Stretches the shifted schedule so that its last σ is ``shift_terminal``."""
        one_minus_z = 1 - t
        scale_factor = one_minus_z[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus_z / scale_factor)

    @exclusive
    @loop_setup
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        """diffusers' flow schedule: ``timesteps`` float32 (n,) = σ·N (unless given) and
        ``sigmas`` float32 (n + 1,) ending at 0 (1 when inverted). ``mu`` is required with
        ``use_dynamic_shifting``."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu: must be passed when use_dynamic_shifting is True")
        if cfg.use_dynamic_shifting:
            shift_from_mu(mu, cfg.time_shift_type == "exponential")  # (the check alone)
        s = None if sigmas is None else _float_array(sigmas, "sigmas")
        t = None if timesteps is None else _float_array(timesteps, "timesteps")
        if s is not None and t is not None and len(s) != len(t):
            raise ValueError("sigmas and timesteps: must have the same length")
        if num_inference_steps is not None:
            num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
            for arr, name in ((s, "sigmas"), (t, "timesteps")):
                if arr is not None and len(arr) != num_inference_steps:
                    raise ValueError(f"{name}: must have num_inference_steps values")
        elif s is None and t is None:
            raise ValueError("set_timesteps: pass num_inference_steps, sigmas or timesteps")
        if cfg.use_dynamic_shifting:
            shift_type, shift = cfg.time_shift_type, float(mu)
        else:
            shift_type, shift = "static", self._shift
        ts, sig = _flow_match_schedule(
            num_inference_steps,
            None if s is None else s.tolist(),
            None if t is None else t.tolist(),
            int(cfg.num_train_timesteps),
            shift_type,
            shift,
            None if not cfg.shift_terminal else float(cfg.shift_terminal),
            self._sigma_kind(),
            bool(cfg.invert_sigmas),
            self.sigma_min,
            self.sigma_max,
        )
        if shift_type == "static" and s is None and t is None:
            self._check_spread(ts, shift)
        self.num_inference_steps = len(ts)
        self._set_schedule(ts, sig, device)

    def _make_core(self, sigmas: list[float]) -> Any:
        return _Euler(sigmas, "flow_prediction", "flow", bool(self.config.stochastic_sampling))

    def scale_noise(self, sample: Any, timestep: Any, noise: Any = None) -> Any:
        """The forward process at ``timestep`` (shape (B,) or one value): σ·noise + (1 − σ)·sample,
        of sample's type and dtype."""
        self._sync_config()
        _tensor.check_float(sample, "sample")
        _tensor.same_framework(sample, noise, "scale_noise")
        ts = timestep.detach().cpu().numpy() if _tensor.is_torch(timestep) else timestep
        ts = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        _, sigma = self._alpha_sigma_for_noise(ts)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        if _tensor.is_torch(sample):
            torch = _tensor.torch_module()
            s = torch.as_tensor(sigma, device=sample.device, dtype=sample.dtype).reshape(shape)
        else:
            s = sigma.astype(sample.dtype).reshape(shape)
        return s * noise + (1.0 - s) * sample

    def _per_token_step(self, model_output: Any, timestep: Any, sample: Any, ts: Any, gen: Any):
        """diffusers' per-token step (torch, sample (B, T, C), ``ts`` (B, T)): each token from
        its own σ to the largest schedule σ below it, in float32 and returned in float32, as
        diffusers does. Not a fused pass: the weights differ per token (torch ops, diffusers'
        own arithmetic)."""
        if not (_tensor.is_torch(sample) and _tensor.is_torch(ts)):
            raise TypeError("per_token_timesteps: needs torch tensors (sample and timesteps)")
        mo, x = self._begin_step(model_output, timestep, sample)
        torch = _tensor.torch_module()
        if ts.ndim != 2 or tuple(ts.shape) != tuple(x.shape[:2]) or x.ndim != 3:
            raise ValueError(
                f"per_token_timesteps: expected shape (B, T) for a (B, T, C) sample, got "
                f"{tuple(ts.shape)} for {tuple(x.shape)}"
            )
        x = x.to(torch.float32)
        per_token = ts / self.config.num_train_timesteps
        sigmas = torch.from_numpy(self._sigmas).to(x.device)[:, None, None]
        lower = ((sigmas < per_token[None] - 1e-6) * sigmas).max(dim=0).values
        current, nxt = per_token[..., None], lower[..., None]
        if self.config.stochastic_sampling:
            noise = _tensor.randn(tuple(x.shape), x, gen, dtype=x.dtype)
            prev = (1.0 - nxt) * (x - current * mo) + nxt * noise
        else:
            prev = x + (current - nxt) * mo
        self._step_index += 1
        return prev

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
        per_token_timesteps: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One Euler step of the flow from ``timestep`` to the next σ (the s_* churn
        arguments are accepted and unused, as in diffusers).

        model_output (the predicted velocity), sample: (B, ...) of one framework. Returns
        ``SchedulerOutput(prev_sample)`` (a 1-tuple with ``return_dict=False``) of
        model_output's type, dtype and device.
        """
        self._check_float_timestep(timestep, "step")
        if per_token_timesteps is not None:
            prev = self._per_token_step(
                model_output, timestep, sample, per_token_timesteps, generator
            )
            return (prev,) if not return_dict else self._output_type(prev_sample=prev)
        noise = None
        if self.config.stochastic_sampling:
            _tensor.check_array(sample, "sample")
            noise = _tensor.randn(tuple(sample.shape), sample, generator)
        prev, _ = self._run_step(model_output, timestep, sample, noise=noise, want_x0=False)
        if not return_dict:
            return (prev,)
        return self._output_type(prev_sample=prev)
