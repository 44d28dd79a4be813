"""rdiff's schedulers inside ``torch.compile``.

A PyO3 call is opaque to TorchDynamo, so tracing a scheduler's ``step`` would break the graph
at every step. Instead, while Dynamo traces, ``step`` and ``scale_model_input`` become one
call each of the custom operator ``rdiff::scheduler_call``: its fake implementation gives the
outputs' shapes and dtypes, and at run time it calls the scheduler's own method (the fused
pass and the loop's state, exactly as in eager mode) on the instance its handle names. A
compiled loop of ``scale_model_input``, a torch model and ``step`` is then one graph
(``fullgraph=True``). Each call's inputs are the previous step's outputs, so the order of the
calls, and of their effects on the scheduler's state, is the data's.

Arguments are tensors, numbers, booleans, strings, None and CPU ``torch.Generator``s (alone or
a list, one per sample). A
generator cannot be an operator's argument, so it crosses by name: while Dynamo traces, a
function Dynamo runs for real (``torch.compiler.assume_constant_result``) files it in a
registry and returns its token, a constant of the graph; Dynamo guards on the generator's
identity, so another generator recompiles. The operator is registered when torch is present,
the first time a scheduler is set up (``set_timesteps``); the handle is set there too.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from typing import Any

_SCHEDULERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# Strong references: a compiled graph names its generator by id, and Dynamo's guard compares
# ids, so a filed generator must outlive its graphs (one entry per trace: a few KiB each).
_GENERATORS: dict = {}
_OP: Any = None
_GENERATOR_TOKEN: Any = None


def compiling() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def register(scheduler: Any) -> None:
    """Gives ``scheduler`` a handle the operator finds it by (eager code: set_timesteps)."""
    if "torch" not in sys.modules:
        return
    _ensure_op()
    _SCHEDULERS[id(scheduler)] = scheduler
    scheduler._compile_handle = id(scheduler)


def compilable(method: Callable) -> Callable:
    """``method`` (``step``, ``scale_model_input``) as itself, or as the operator while Dynamo
    traces."""

    name = method.__name__  # (read here: Dynamo sees a wrapper's code name instead)

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if compiling():
            return traced_call(self, name, args, kwargs)
        return method(self, *args, **kwargs)

    return wrapper


def _token(v: Any, tensors: list, torch: Any) -> str:
    if isinstance(v, torch.Tensor):
        tensors.append(v)
        return f"t{len(tensors) - 1}"
    if v is None:
        return "n"
    if isinstance(v, bool):
        return "b1" if v else "b0"
    if isinstance(v, int):
        return f"i{v}"
    if isinstance(v, float):
        return f"f{v!r}"
    if isinstance(v, str) and ";" not in v and "=" not in v:
        return f"s{v}"
    if _is_cpu_generator(v, torch):
        return "g" + _GENERATOR_TOKEN(v)
    if isinstance(v, list) and v and all(_is_cpu_generator(g, torch) for g in v):
        return "G" + ",".join(_GENERATOR_TOKEN(g) for g in v)  # one per sample
    raise TypeError(
        f"rdiff under torch.compile: an argument of type {type(v).__name__} is not supported "
        "(tensors, numbers, booleans, strings, None and CPU generators or lists of them are; "
        "run the scheduler eagerly)"
    )


def _is_cpu_generator(v: Any, torch: Any) -> bool:
    return isinstance(v, torch.Generator) and v.device.type == "cpu"


def _file_generator(g: Any) -> str:
    """The id naming ``g`` in a token (run for real while Dynamo traces, not traced)."""
    _GENERATORS[id(g)] = g
    return str(id(g))


def _generator(key: str) -> Any:
    g = _GENERATORS.get(int(key))
    if g is None:
        raise RuntimeError("rdiff::scheduler_call: a generator this graph did not file")
    return g


def _value(tok: str, tensors: list) -> Any:
    kind, rest = tok[0], tok[1:]
    if kind == "t":
        return tensors[int(rest)]
    if kind == "n":
        return None
    if kind == "b":
        return rest == "1"
    if kind == "i":
        return int(rest)
    if kind == "f":
        return float(rest)
    if kind == "g":
        return _generator(rest)
    if kind == "G":
        return [_generator(k) for k in rest.split(",")]
    return rest


def traced_call(self: Any, name: str, args: tuple, kwargs: dict) -> Any:
    torch = sys.modules["torch"]
    handle = getattr(self, "_compile_handle", None)
    if handle is None:
        raise RuntimeError(
            f"{type(self).__name__}.{name} under torch.compile: call set_timesteps (outside "
            "the compiled region) first"
        )
    kwargs = dict(kwargs)
    return_dict = kwargs.pop("return_dict", True)
    tensors: list = []
    parts = [_token(v, tensors, torch) for v in args]
    parts += [f"{k}={_token(v, tensors, torch)}" for k, v in kwargs.items()]
    if name == "step":
        fields = self._step_fields
        mo = args[0] if args else kwargs["model_output"]
        sample = args[2] if len(args) > 2 else kwargs["sample"]
    else:
        fields = ("sample",)
        sample = args[0] if args else kwargs["sample"]
        mo = sample
    like = _index(tensors, sample)
    dtype_of = _index(tensors, mo)
    outs = _OP(handle, name, ";".join(parts), tensors, len(fields), like, dtype_of)
    if name != "step":
        return outs[0]
    if not return_dict:
        return tuple(outs)
    named = {}
    for i, field in enumerate(fields):  # (Dynamo traces this loop more readily than zip)
        named[field] = outs[i]
    return self._output_type(**named)


def _index(tensors: list, t: Any) -> int:
    for i, u in enumerate(tensors):
        if u is t:
            return i
    raise TypeError("rdiff under torch.compile: the sample and model output must be tensors")


def _state_tensors(scheduler: Any) -> dict:
    """id → tensor of the tensors the scheduler holds (attributes, and inside lists)."""
    torch = sys.modules["torch"]
    found = {}
    for v in scheduler.__dict__.values():
        for u in v if isinstance(v, list) else (v,):
            if isinstance(u, torch.Tensor):
                found[id(u)] = u
    return found


def _release_ended_loop_state(scheduler: Any, before: dict) -> None:
    """Forgets, once the loop's last step has run, the tensors the operator's calls left in
    the scheduler (its history: DPM-Solver's model_outputs, UniPC's last sample, ...).

    CUDA graphs (``mode="reduce-overhead"``) allow nothing allocated in a captured region to
    outlive it except its outputs; a scheduler holding its history would keep such tensors.
    After the last step nothing reads them (``set_timesteps`` starts afresh), so a compiled
    whole loop ends with none. A compiled region of one step still leaves the history alive
    between calls; CUDA-graph trees refuse that, and such a step runs under plain
    ``torch.compile`` only.
    """
    made = scheduler.__dict__.setdefault("_compiled_state", set())
    made.update(k for k in _state_tensors(scheduler) if k not in before)
    index, timesteps = scheduler.__dict__.get("_step_index"), scheduler.__dict__.get("timesteps")
    if index is None or timesteps is None or index < len(timesteps):
        return
    for k, v in scheduler.__dict__.items():
        if isinstance(v, list):
            scheduler.__dict__[k] = [None if id(u) in made else u for u in v]
        elif id(v) in made:
            scheduler.__dict__[k] = None
    made.clear()


def _ensure_op() -> None:
    global _OP, _GENERATOR_TOKEN
    if _OP is not None:
        return
    import torch

    _GENERATOR_TOKEN = torch.compiler.assume_constant_result(_file_generator)

    # (the schema is spelled out: this module's annotations are strings)
    @torch.library.custom_op(
        "rdiff::scheduler_call",
        mutates_args=(),
        schema="(int handle, str method, str spec, Tensor[] tensors, int n_out, int like, "
        "int dtype_of) -> Tensor[]",
    )
    def scheduler_call(handle, method, spec, tensors, n_out, like, dtype_of):
        scheduler = _SCHEDULERS.get(handle)
        if scheduler is None:
            raise RuntimeError("rdiff::scheduler_call: the scheduler no longer exists")
        args, kwargs = [], {}
        for part in spec.split(";") if spec else []:
            if "=" in part:
                k, tok = part.split("=", 1)
                kwargs[k] = _value(tok, tensors)
            else:
                args.append(_value(part, tensors))
        before = _state_tensors(scheduler)
        if method == "step":
            out = tuple(getattr(scheduler, method)(*args, **kwargs, return_dict=False))
        else:
            out = (getattr(scheduler, method)(*args, **kwargs),)
        _release_ended_loop_state(scheduler, before)
        # an operator's outputs may not alias its inputs (scale_model_input can be the identity)
        ptrs = {t.untyped_storage().data_ptr() for t in tensors}
        return [o.clone() if o.untyped_storage().data_ptr() in ptrs else o for o in out]

    @scheduler_call.register_fake
    def _(handle, method, spec, tensors, n_out, like, dtype_of):
        return [
            torch.empty_like(tensors[like], dtype=tensors[dtype_of].dtype) for _ in range(n_out)
        ]

    _OP = scheduler_call
