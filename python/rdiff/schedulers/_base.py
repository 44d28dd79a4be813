"""What every rdiff scheduler shares: the β schedule, the step counter and ``add_noise``."""

from __future__ import annotations

import functools
import inspect
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from .. import _tensor
from .._config import ConfigMixin
from .._rdiff import ConcurrentUseError, NoiseSchedule
from ._compile import compilable, compiling, register, traced_call

# Schedulers are stateful (step index, multistep history, the core built by set_timesteps)
# and release the GIL inside `step`, so two threads in one instance would interleave their
# updates. Instead of waiting (which would hide the bug and still mix two loops' histories),
# a second concurrent call raises. The busy set is keyed by id() rather than a lock attribute
# so that schedulers stay deep-copyable and picklable, as diffusers' are; `dict.setdefault`
# claims an entry atomically under the GIL, so no lock is taken on the step's hot path.
_BUSY: dict[int, list] = {}  # id(scheduler) -> [owning thread, depth]
_F = TypeVar("_F", bound=Callable[..., Any])


def exclusive(method: _F, traced: bool = False) -> _F:
    """Makes ``method`` raise ``rdiff.ConcurrentUseError`` when another thread is inside an
    exclusive method of the same scheduler instance. With ``traced`` it is also
    ``compilable`` (one wrapper, not two: a step is a few microseconds)."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if traced and compiling():
            return traced_call(self, name, args, kwargs)
        key, me = id(self), threading.get_ident()
        entry = _BUSY.setdefault(key, [me, 0])
        if entry[0] != me:
            raise ConcurrentUseError(
                f"{type(self).__name__}.{method.__name__}: this scheduler is in use by "
                "another thread (a scheduler keeps per-loop state: give each thread its "
                "own instance, e.g. copy.deepcopy(scheduler) or from_config)"
            )
        entry[1] += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _BUSY[key]

    wrapper._exclusive_of = method  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def loop_setup(method: _F) -> _F:
    """For ``set_timesteps``: first rebuild from a replaced config (``_sync_config``), then
    remember the call (a later rebuild repeats it) and the config the loop was built from."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._sync_config()
        out = method(self, *args, **kwargs)
        self._loop_call = (args, kwargs)
        self._built_from = self.config
        register(self)  # (torch.compile finds the instance by this handle)
        return out

    return wrapper  # type: ignore[return-value]


# diffusers' σ-placement flags and rdiff's names for them (what `_sigma_kind` reads).
SIGMA_FLAGS = (
    ("use_karras_sigmas", "karras"),
    ("use_lu_lambdas", "lu"),
    ("use_exponential_sigmas", "exponential"),
    ("use_beta_sigmas", "beta"),
    ("use_flow_sigmas", "flow"),
)

# What a rebuild keeps of a loop in progress (the step counter, the history, the group's start).
_LOOP_STATE = (
    "_step_index",
    "_begin_index",
    "lower_order_nums",
    "sample",
    "custom_timesteps",
    "last_sample",
    "this_order",
    "dt",  # Heun / KDPM2 between an interval's two stages (with "sample")
    "_first_x0",
    "_first_gamma",
    "derivatives",  # LMS's earlier slopes
)


def _is_native(v: Any) -> bool:
    """A Rust object (the schedule, a step family's core): not copyable, rebuilt instead."""
    return type(v).__module__ in ("rdiff", "rdiff._rdiff")


def _rdiff_init(cls: type) -> Callable[..., None]:
    """The ``__init__`` of the rdiff scheduler ``cls`` is, or wraps (diffusers' subclasses)."""
    for c in cls.__mro__:
        if "__init__" in c.__dict__ and c.__module__.startswith("rdiff.schedulers"):
            return c.__dict__["__init__"]
    raise TypeError(f"{cls.__name__} is not an rdiff scheduler")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """ValueError naming the argument unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"{name}: unknown {value!r}; expected one of {', '.join(map(str, choices))}"
        )


def shift_from_mu(mu: Any, exponential: bool = True) -> float:
    """Dynamic shifting's flow shift from ``mu``: e^μ (or μ itself); ValueError naming ``mu``
    unless it is a finite number whose shift is finite and positive."""
    try:
        m = float(mu)
    except (TypeError, ValueError):
        raise TypeError(f"mu: expected a number, got {type(mu).__name__}") from None
    try:
        shift = math.exp(m) if exponential else m
    except OverflowError:
        shift = math.inf
    if not (math.isfinite(m) and math.isfinite(shift) and shift > 0.0):
        what = "e^mu" if exponential else "mu"
        raise ValueError(f"mu: {what} must be a finite positive shift, got mu = {mu}")
    return shift


def check_int(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int: TypeError unless it is an integer (bool is not), ValueError
    unless ``low <= value <= high``; both messages name the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        bound = f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: must be {bound}, got {v}")
    return v


def check_index(value: Any, name: str, high: int | None) -> int:
    """``check_int(value, name, 0, high)``, also taking 0-d integer tensors."""
    if _tensor.is_torch(value) and value.numel() == 1 and not value.is_floating_point():
        if value.dtype != _tensor.torch_module().bool:
            value = int(value.item())
    return check_int(value, name, 0, high)


def _check_timestep_type(timestep: Any) -> None:
    """TypeError unless ``timestep`` is a number or a one-element integer/float array."""
    if isinstance(timestep, bool):
        raise TypeError("timestep: expected a number, got bool")
    if isinstance(timestep, (int, float, np.integer, np.floating)):
        return
    if _tensor.is_torch(timestep) or isinstance(timestep, np.ndarray):
        kind = np.dtype(_tensor.dtype_name(timestep).replace("bfloat16", "float32")).kind
        n = timestep.numel() if _tensor.is_torch(timestep) else timestep.size
        if kind in "iuf" and n == 1:
            return
    raise TypeError(
        f"timestep: expected a number or a one-element array, got {type(timestep).__name__} "
        f"{timestep!r}"
    )


def thresholding_scratch(x: Any, batch: int) -> Any:
    """The per-sample thresholding bounds a step writes: `batch` values on x's device, from
    the caller's framework (torch's caching allocator is stream-ordered, and allocates from
    the graph's private pool under CUDA-graph capture), so no step allocates memory itself
    and concurrent streams never share it. Keep it alive until the step has been enqueued."""
    return _tensor.scratch(x, batch)


@dataclass
class SchedulerOutput:
    """What ``step`` returns: ``prev_sample`` has the model output's type, dtype and device."""

    prev_sample: Any
    pred_original_sample: Any = None


class SchedulerBase(ConfigMixin):
    """Discrete-time scheduler state: betas, alphas_cumprod, timesteps and the step index.

    Thread safety: a scheduler is stateful; use one instance per thread. ``step`` and
    ``set_timesteps`` called on one instance while another thread is inside either raise
    ``rdiff.ConcurrentUseError`` and change nothing.
    """

    order = 1
    _compatibles: ClassVar[list[str]] = []
    # The diffusers subclasses keep timesteps as torch tensors; plain rdiff schedulers keep
    # numpy arrays unless set_timesteps is given a device.
    _torch_timesteps = False
    # Whether ``step`` may run before ``set_timesteps`` (over the training schedule).
    _steps_before_set_timesteps = False
    # What ``step`` returns; the diffusers subclasses return diffusers' own output types.
    _output_type: ClassVar[type] = SchedulerOutput
    # The fields of what ``step`` returns (its tuple with ``return_dict=False``).
    _step_fields: ClassVar[tuple[str, ...]] = ("prev_sample",)
    # The config object __init__ and set_timesteps last built from, and set_timesteps' call.
    _built_from: Any = None
    _loop_call: tuple | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # ``step`` and ``scale_model_input`` are one operator each inside torch.compile
        # (``_compile``); every class's own definitions are wrapped
        super().__init_subclass__(**kwargs)
        for name in ("step", "scale_model_input"):
            if name in cls.__dict__:
                method = cls.__dict__[name]
                body = getattr(method, "_exclusive_of", None)
                setattr(cls, name, compilable(method) if body is None else exclusive(body, True))

    def _sync_config(self) -> None:
        """Honour a replaced config, as diffusers does by reading ``self.config`` at use.

        Pipelines rewrite a scheduler's config after construction (StableDiffusionPipeline
        sets ``clip_sample=False`` through ``_internal_dict``; ``register_to_config`` does the
        same). When ``self.config`` is another object than the one this scheduler was built
        from, ``__init__`` runs again on the current config and, mid-loop, ``set_timesteps``
        with its last arguments, keeping the step counter and the history. One identity test
        per call otherwise.
        """
        cfg = self.config
        if cfg is self._built_from:
            return
        loop = self._loop_call  # repeating an ended loop's set_timesteps is harmless
        kept = {k: self.__dict__[k] for k in _LOOP_STATE if k in self.__dict__}
        history = self.__dict__.get("model_outputs")
        init = _rdiff_init(type(self))
        names = [n for n in inspect.signature(init).parameters if n != "self"]
        init(self, **{n: cfg[n] for n in names if n in cfg})
        if loop is not None:
            self.set_timesteps(*loop[0], **loop[1])
            self.__dict__.update(kept)
            if history is not None:
                # the newest outputs, in a history as long as the (maybe new) order
                n = len(self.model_outputs)
                self.model_outputs = ([None] * n + list(history))[-n:]
        self._built_from = self.config

    # -- copies and pickles --------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """Everything but the native (Rust) objects, which `__setstate__` rebuilds."""
        return {
            k: v
            for k, v in self.__dict__.items()
            if not _is_native(v) and k != "_compile_handle"  # (a copy gets its own)
        }

    def __setstate__(self, state: dict) -> None:
        """Rebuild from the config (the schedule and, mid-loop, the Rust core through
        `set_timesteps` with its last arguments), then restore the loop's state: a copy
        continues exactly where the original is (``copy.deepcopy``, ``pickle``)."""
        self.__dict__.update(state)
        cfg = self.config
        init = _rdiff_init(type(self))
        names = [n for n in inspect.signature(init).parameters if n != "self"]
        init(self, **{n: cfg[n] for n in names if n in cfg})
        loop = state.get("_loop_call")
        if loop is not None:
            self.set_timesteps(*loop[0], **loop[1])
        self.__dict__.update(state)
        if loop is not None and state.get("_begin_index") is not None:
            self.set_begin_index(state["_begin_index"])  # a plan that depends on it is rebuilt
        self._built_from = self.config
        register(self)

    def _init_schedule(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Any,
        rescale_betas_zero_snr: bool,
    ) -> None:
        num_train_timesteps = check_int(num_train_timesteps, "num_train_timesteps")
        for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not isinstance(v, (int, float, np.number)):
                raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
        if trained_betas is not None:
            if _tensor.is_torch(trained_betas):
                trained_betas = trained_betas.detach().cpu().double().numpy()
            try:
                arr = np.asarray(trained_betas, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise TypeError(f"trained_betas: expected a sequence of floats ({e})") from None
            if arr.ndim == 0:
                raise TypeError(
                    f"trained_betas: expected a sequence of floats (one β per training "
                    f"timestep), got {type(trained_betas).__name__} {trained_betas!r}"
                )
            arr = arr.reshape(-1)
            trained_betas = [float(b) for b in arr]
        rescale_betas_zero_snr = bool(rescale_betas_zero_snr)
        args = (num_train_timesteps, beta_schedule, beta_start, beta_end, trained_betas)
        sqrt = None
        torch = _tensor.torch_module()
        if rescale_betas_zero_snr and self._torch_timesteps and torch is not None:
            # diffusers rescales with torch's float32 sqrt, which is not correctly rounded on
            # every CPU; β₀ = 1 − ᾱ₀' cancels, so its last bit moves σ_min by 10⁻³
            raw = NoiseSchedule.discrete(*args, False).alphas_cumprod
            sqrt = torch.from_numpy(raw.astype(np.float32)).sqrt().double().tolist()
        schedule = NoiseSchedule.discrete(*args, rescale_betas_zero_snr, sqrt)
        self.schedule = schedule
        # ᾱ in float64, what every computation reads; the public arrays are `_publish`ed.
        self._ac = schedule.alphas_cumprod.copy()
        betas = schedule.betas
        self._publish(betas=betas, alphas=1.0 - betas, alphas_cumprod=self._ac)
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def _sigma_kind(self) -> str:
        """The config's σ placement ("karras", "lu", "exponential", "beta", "flow" from its
        use_*_sigmas / use_lu_lambdas flags) or "default"; a class without a flag reads it
        as off."""
        cfg = self.config
        for flag, kind in SIGMA_FLAGS:
            if cfg.get(flag, False):
                return kind
        return "default"

    def _sigma_table(self) -> tuple[np.ndarray, np.ndarray]:
        """diffusers' σ table and its log, with diffusers' own arithmetic: σ by torch's
        float32 ``** 0.5`` (the torch-facing classes; numpy's correctly rounded sqrt for the
        numpy ones) and log σ by numpy's float32 ``log``. Neither is correctly rounded and
        both vary by machine; ``_sigma_to_t`` near the table's ends follows their last bits
        (the first Karras/exponential timestep of a cosine schedule is 998 or 999 by them)."""
        a32 = np.asarray(self._ac, dtype=np.float32)
        if self._torch_timesteps:
            torch = _tensor.torch_module()
            ac = torch.from_numpy(a32)
            sigmas = (((1 - ac) / ac) ** 0.5).numpy()
        else:
            sigmas = np.sqrt((np.float32(1) - a32) / a32)
        return sigmas, np.log(sigmas)

    # -- the step counter, as diffusers keeps it -------------------------------------------
    @property
    def step_index(self) -> int | None:
        """The index of the next step in ``timesteps`` (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first step index, set by pipelines (img2img) with ``set_begin_index``."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at step ``begin_index`` (img2img pipelines: ``t_start * order``);
        an int in [0, len(timesteps)] (equal: an empty loop, as diffusers' slice gives);
        before set_timesteps only its type and sign can be checked."""
        known = getattr(self, "num_inference_steps", None) is not None
        high = len(self.timesteps) if known or self._steps_before_set_timesteps else None
        self._begin_index = check_index(begin_index, "begin_index", high)

    def _timesteps_array(self, timesteps: np.ndarray, device: Any = None) -> Any:
        if self._torch_timesteps or device is not None:
            import torch

            return torch.from_numpy(np.ascontiguousarray(timesteps)).to(device=device)
        return timesteps

    def _publish(self, **arrays: Any) -> None:
        """Sets public schedule arrays (``betas``, ``alphas_cumprod``, ``sigmas``, ...) as
        diffusers exposes them: float32 torch tensors for the torch-facing (diffusers)
        classes, so code written for diffusers (``compute_snr``, inversion loops) runs on
        them; numpy arrays (a copy, same dtype) otherwise. Nothing in rdiff reads them back."""
        for name, value in arrays.items():
            a = np.array(value)
            if self._torch_timesteps:
                a = _tensor.torch_module().from_numpy(a.astype(np.float32))
            setattr(self, name, a)

    def _as_timestep(self, t: int) -> Any:
        """A timestep as diffusers returns one: a 0-d int64 tensor for the torch-facing
        classes, an int otherwise."""
        if self._torch_timesteps:
            return _tensor.torch_module().tensor(t)
        return t

    def _as_scalar(self, v: float) -> Any:
        """A float32 scalar as diffusers returns one: a 0-d tensor for the torch-facing
        classes, a numpy float32 otherwise."""
        if self._torch_timesteps:
            return _tensor.torch_module().tensor(v, dtype=_tensor.torch_module().float32)
        return np.float32(v)

    def _timesteps_numpy(self) -> np.ndarray:
        ts = self.timesteps
        if _tensor.is_torch(ts):
            return ts.detach().cpu().numpy()
        return np.asarray(ts)

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Any = None) -> int:
        """The position of ``timestep`` in the schedule (the second one if it appears twice)."""
        if schedule_timesteps is None:
            ts = self._timesteps_numpy()
        elif _tensor.is_torch(schedule_timesteps):
            ts = schedule_timesteps.detach().cpu().numpy()
        else:
            ts = np.asarray(schedule_timesteps)
        _check_timestep_type(timestep)
        t = timestep.item() if hasattr(timestep, "item") else timestep
        candidates = np.nonzero(ts == t)[0]
        if len(candidates) == 0:
            return self._index_for_missing_timestep(t, ts)
        return int(candidates[1] if len(candidates) > 1 else candidates[0])

    def _index_for_missing_timestep(self, t: Any, ts: np.ndarray) -> int:
        raise ValueError(
            f"timestep: {t} is not in this scheduler's timesteps (first {ts[:3].tolist()}...)"
        )

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
        elif _tensor.capturing(timestep):
            # finding a CUDA timestep's position reads it on the host: no graph can hold that
            raise RuntimeError(
                f"{type(self).__name__}: under CUDA-graph capture the first step's position "
                "cannot be read from a CUDA timestep; call set_begin_index(0) (or the loop's "
                "first index) after set_timesteps, or keep the timesteps on the CPU"
            )
        else:
            self._step_index = self.index_for_timestep(timestep)

    def _begin_step(self, model_output: Any, timestep: Any, sample: Any) -> tuple[Any, Any]:
        """Checks that a step can run now; returns model_output and sample, contiguous."""
        self._sync_config()
        if self._core is None or (
            self.num_inference_steps is None and not self._steps_before_set_timesteps
        ):
            raise ValueError(
                "step: the number of inference steps is not set; call set_timesteps first"
            )
        inputs = _tensor.step_inputs(model_output, sample)
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError(self._loop_done_message())
        return inputs

    def _loop_done_message(self) -> str:
        """Why a step cannot run past the end; naming the cause when the loop was a step short
        from its start (found by fuzzing: 2,000 steps of a 1,000-timestep model)."""
        ts = self._timesteps_numpy()
        msg = f"step: all {len(ts)} steps are done; call set_timesteps to start a new loop"
        twice = int(np.sum(ts == ts[0])) if len(ts) else 0
        if twice > 1:
            msg += (
                f" (the first timestep, {ts[0]}, appears {twice} times in timesteps, so the loop "
                "began at its second occurrence, as diffusers' index_for_timestep does, a step "
                "short: ask for at most num_train_timesteps steps, or distinct timesteps)"
            )
        return msg

    @compilable
    def scale_model_input(self, sample: Any, *args: Any, **kwargs: Any) -> Any:
        """Identity: these schedulers need no input scaling (diffusers' interface)."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- forward process -------------------------------------------------------------------
    def _alpha_sigma_for_noise(self, timesteps: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _noise_indices(self, timesteps: np.ndarray) -> list[int]:
        """The schedule positions ``add_noise`` reads, as diffusers' σ-indexed classes pick
        them: each timestep's own (no begin index set), else the current step's, else the
        begin index (img2img)."""
        if self._begin_index is None:
            return [self.index_for_timestep(t) for t in timesteps]
        if self._step_index is not None:
            return [self._step_index] * len(timesteps)
        return [self._begin_index] * len(timesteps)

    def add_noise(self, original_samples: Any, noise: Any, timesteps: Any) -> Any:
        """x_t = α_t x_0 + σ_t ε with one timestep per sample (shape (B,)), or a scalar.

        Returns the type, dtype and device of ``original_samples``.
        """
        self._sync_config()
        _tensor.check_float(original_samples, "original_samples")
        _tensor.same_framework(original_samples, noise, "add_noise")
        if tuple(original_samples.shape) != tuple(noise.shape):
            raise ValueError(
                f"noise: shape {tuple(noise.shape)} differs from original_samples' "
                f"{tuple(original_samples.shape)}"
            )
        if _tensor.is_torch(timesteps):
            timesteps = timesteps.detach().cpu().numpy()
        ts = np.atleast_1d(np.asarray(timesteps))
        if ts.dtype.kind not in "iuf" or ts.ndim != 1:
            raise TypeError(f"timesteps: expected a number or a 1-d array, got {timesteps!r}")
        if not np.isfinite(ts).all():
            raise ValueError(f"timesteps: must be finite, got {ts.tolist()}")
        batch = int(original_samples.shape[0]) if original_samples.ndim else 1
        if ts.shape[0] not in (1, batch):
            raise ValueError(f"timesteps: {ts.shape[0]} values for a batch of {batch}")
        alpha, sigma = self._alpha_sigma_for_noise(ts)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        if _tensor.is_torch(original_samples):
            torch = _tensor.torch_module()
            kw = dict(device=original_samples.device, dtype=original_samples.dtype)
            a = torch.as_tensor(alpha, **kw).reshape(shape)
            s = torch.as_tensor(sigma, **kw).reshape(shape)
        else:
            a = alpha.astype(original_samples.dtype).reshape(shape)
            s = sigma.astype(original_samples.dtype).reshape(shape)
        return a * original_samples + s * noise
