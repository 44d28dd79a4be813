"""Caller-owned tensors: numpy arrays and torch tensors, in the caller's framework.

The Rust core reads the tensors themselves (numpy's array interface, DLPack for torch; see
``src/py/tensor.rs``), and checks their dtype, device, shape and layout. What stays here is
what needs the caller's framework: outputs allocated with its ``empty`` (so results have the
input's type and device), noise drawn as diffusers draws it, and a contiguous copy of an input
that is not contiguous. Nothing is imported from torch that the caller has not imported.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from . import _torch_normal

_NUMPY_DTYPES = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)}


def torch_module():
    """The torch module if the caller has already imported it (rdiff never imports it first)."""
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # (torch_module inlined: called several times a step)
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(x: Any) -> str:
    if is_torch(x):
        return str(x.dtype).removeprefix("torch.")
    return np.asarray(x).dtype.name


@functools.lru_cache(maxsize=1)
def _cuda_unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here (None when it can); asked once per process."""
    from ._rdiff import backends

    cuda = backends()["cuda"]
    return None if cuda["available"] else str(cuda.get("reason", "unknown reason"))


def check_device(x: Any, what: str) -> None:
    """ValueError for a tensor without data (meta, fake) or on a device rdiff does not run
    on; ``rdiff.CudaUnavailableError`` for a CUDA tensor when the CUDA backend cannot run."""
    if not is_torch(x):
        return
    kind = x.device.type
    if kind == "cuda":
        reason = _cuda_unavailable_reason()
        if reason is not None:
            from ._rdiff import CudaUnavailableError

            raise CudaUnavailableError(
                f"{what}: a tensor on {x.device} but rdiff's CUDA backend is unavailable here "
                f"({reason})"
            )
        return
    if kind != "cpu":
        raise ValueError(
            f"{what}: a tensor on the {kind} device (it holds no data rdiff can read); rdiff "
            "runs on cpu and cuda tensors"
        )


def check_float(x: Any, what: str) -> None:
    """TypeError unless x is a float32/float16/bfloat16/float64 numpy array or torch tensor;
    ValueError / CudaUnavailableError for a tensor on a device rdiff cannot use here."""
    if is_torch(x):
        torch = torch_module()
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(
                f"{what}: unsupported dtype {x.dtype}; expected float32, float16, bfloat16 or "
                "float64"
            )
        check_device(x, what)
        return
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    if x.dtype not in _NUMPY_DTYPES:
        raise TypeError(
            f"{what}: unsupported dtype {x.dtype}; expected float32, float16 or float64"
        )


def contiguous(x: Any) -> Any:
    """x itself when it is C-contiguous (no call, no copy), else a contiguous copy."""
    if is_torch(x):
        return x.contiguous()
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def cuda_stream(x: Any, what: str = "sample") -> int:
    """The caller's current CUDA stream handle for a CUDA tensor (0, unused, otherwise);
    ``rdiff.CudaUnavailableError`` naming ``what`` where rdiff's CUDA backend cannot run."""
    if is_torch(x) and x.is_cuda:
        check_device(x, what)
        return int(torch_module().cuda.current_stream(x.device).cuda_stream)
    return 0


def capturing(x: Any) -> bool:
    """True when x is a CUDA tensor and its device's current stream is capturing a CUDA graph
    (where reading a device value on the host is impossible)."""
    if not (is_torch(x) and x.is_cuda):
        return False
    cuda = torch_module().cuda
    if x.device.index not in (None, cuda.current_device()):
        # (torch asks the current device's stream: ask x's)
        with cuda.device(x.device):
            return bool(cuda.is_current_stream_capturing())
    return bool(cuda.is_current_stream_capturing())


def empty_like(x: Any, dtype: Any = None) -> Any:
    """An uninitialised contiguous buffer shaped like x, in x's framework and on x's device."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if dtype is None:  # (each keyword costs torch a few hundred ns: a step makes two)
            return torch.empty_like(x, memory_format=torch.contiguous_format)
        return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)
    return np.empty(x.shape, dtype=dtype or x.dtype)


def scratch(x: Any, n: int, wide: bool = False) -> Any:
    """``n`` values on x's device, of x's arithmetic dtype (float64 for float64 x, else
    float32) or float64 when ``wide``: the per-sample scratch a fused pass writes
    (thresholding bounds, the adaptive solver's error norms)."""
    if is_torch(x):
        torch = torch_module()
        dt = torch.float64 if wide or x.dtype == torch.float64 else torch.float32
        return torch.empty(n, dtype=dt, device=x.device)
    return np.empty(n, dtype=np.float64 if wide or x.dtype == np.float64 else np.float32)


def check_array(x: Any, what: str) -> None:
    """TypeError unless x is a numpy array or a torch tensor; for a CUDA tensor where rdiff's
    CUDA backend cannot run, ``rdiff.CudaUnavailableError`` before any noise is drawn on it.
    (Dtypes, shapes and layouts are the core's to check.)"""
    if isinstance(x, np.ndarray):
        return
    if not is_torch(x):
        raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    if x.is_cuda:
        check_device(x, what)


def step_inputs(model_output: Any, sample: Any) -> tuple[Any, Any]:
    """``check_array`` on both and ``same_framework``, then both contiguous: what every step
    does first (one type test for the common case of two CPU torch tensors)."""
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and isinstance(model_output, torch.Tensor)
        and isinstance(sample, torch.Tensor)
        and not (model_output.is_cuda or sample.is_cuda)
    ):
        return model_output.contiguous(), sample.contiguous()
    check_array(model_output, "model_output")
    check_array(sample, "sample")
    same_framework(model_output, sample, "step", devices=False)
    return contiguous(model_output), contiguous(sample)


def same_framework(a: Any, b: Any, what: str, devices: bool = True) -> None:
    """TypeError when a and b are not both numpy arrays or both torch tensors; with
    ``devices``, ValueError for torch tensors on two devices (the core checks devices of the
    tensors it is given itself)."""
    if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
        raise TypeError(
            f"{what}: mixes a torch tensor and a numpy array; pass both as the same type"
        )
    if devices and is_torch(a) and a.device != b.device:
        raise ValueError(f"{what}: tensors on different devices ({a.device} and {b.device})")


def randn(
    shape: tuple, like: Any, generator: Any = None, dtype: Any = None, widen: bool = False
) -> Any:
    """Standard normal noise in like's framework, drawn as diffusers' randn_tensor does.

    ``dtype`` (default float32) is the dtype torch draws in (diffusers' DDIM and DDPM draw in
    the model output's dtype, which gives other values than drawing float32 and casting). With
    ``widen``, torch noise drawn on the CPU may come back as float32 holding the dtype's values
    (for a pass that reads noise as float32).

    Torch's CPU draws are made by rdiff (``_torch_normal``): torch's numbers, several times
    faster.

    For torch, a CPU generator draws on the CPU and the result moves to like's device; a list
    of generators draws one sample each. For numpy, ``generator`` is a numpy Generator (or
    None for a fresh default one); a numpy Generator given with a torch tensor draws as for
    numpy, on the host, and the noise moves to like's device (``rdiff sample`` gives the same
    images on the CPU and on CUDA).
    """
    _check_generator(generator, like, shape)
    if is_torch(like) and isinstance(generator, np.random.Generator):
        torch = torch_module()
        host = generator.standard_normal(shape, dtype=np.float32)
        return torch.from_numpy(host).to(like.device, torch.float32 if dtype is None else dtype)
    if is_torch(like):
        torch = torch_module()
        device = like.device
        gens = generator
        if isinstance(gens, list) and len(gens) == 1:
            gens = gens[0]
        if isinstance(gens, list):
            rand_device = gens[0].device if gens[0].device.type == "cpu" else device
            parts = [
                torch_randn((1, *tuple(shape[1:])), g, rand_device, dtype, widen)
                for g in gens[: shape[0]]
            ]
            return torch.cat(parts, dim=0).to(device)
        rand_device = device
        if gens is not None and gens.device.type != device.type and gens.device.type == "cpu":
            rand_device = "cpu"
        return torch_randn(tuple(shape), gens, rand_device, dtype, widen).to(device)
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng()
    dt = np.dtype(np.float32 if dtype is None else dtype)
    return rng.standard_normal(shape, dtype=np.float64 if dt == np.float64 else np.float32).astype(
        dt, copy=False
    )


def _check_generator(generator: Any, like: Any, shape: tuple) -> None:
    """TypeError / ValueError naming ``generator`` unless ``randn`` can draw with it: None, a
    numpy Generator, or (for torch samples) a torch Generator or a list of one per sample."""
    if generator is None or isinstance(generator, np.random.Generator):
        return
    torch = torch_module() if is_torch(like) else sys.modules.get("torch")
    gen_type = getattr(torch, "Generator", None) if torch is not None else None
    gens = generator if isinstance(generator, list) else [generator]
    if gen_type is None or not gens or not all(isinstance(g, gen_type) for g in gens):
        kinds = "a numpy Generator" if not is_torch(like) else "a torch or numpy Generator"
        raise TypeError(
            f"generator: expected {kinds}, a list of torch Generators or None, got "
            f"{type(generator).__name__}"
        )
    if not is_torch(like):
        raise TypeError("generator: numpy samples draw their noise with a numpy Generator")
    batch = shape[0] if shape else 1
    if isinstance(generator, list) and 1 < len(generator) < batch:
        raise ValueError(f"generator: a list of {len(generator)} for a batch of {batch}")


def torch_randn(shape: tuple, generator: Any, device: Any, dtype: Any, widen: bool) -> Any:
    """torch.randn(shape, generator=generator, device=device, dtype=dtype (None: float32)), drawn
    by rdiff where it can reproduce torch; with ``widen``, possibly as float32 holding the
    dtype's values."""
    torch = torch_module()
    dtype = torch.float32 if dtype is None else dtype
    if torch.device(device).type == "cpu":
        noise = _torch_normal.randn(shape, generator, dtype, widen)
        if noise is not None:
            return noise
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def as_dtype_of(x: Any, like: Any, what: str = "sample") -> Any:
    """x (a float array or tensor, checked) contiguous in like's dtype; x itself when it
    already is. For a pass that reads x as a term of like's dtype."""
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and isinstance(x, torch.Tensor)
        and isinstance(like, torch.Tensor)
        and x.dtype == like.dtype
        and x.dtype.is_floating_point
    ):
        return x  # (the common case, without the checks' string work: Heun's every interval)
    check_float(x, what)
    if dtype_name(x) == dtype_name(like):
        return x
    if is_torch(x):
        return x.to(dtype=like.dtype).contiguous()
    return np.ascontiguousarray(x, dtype=like.dtype)


def to_float32(x: Any, like: Any) -> Any:
    """x as a contiguous float32 array in like's framework and device."""
    if is_torch(like):
        torch = torch_module()
        if not is_torch(x):
            x = torch.as_tensor(np.asarray(x))
        return x.to(device=like.device, dtype=torch.float32).contiguous()
    if is_torch(x):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
