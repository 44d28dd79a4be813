"""rdiff's counter-based normal noise: the Philox4x32-10 stream the CPU steps and the CUDA
kernels draw identically (defined in ``src/random/philox.rs``)."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from ._rdiff import _philox_normal_fill

__all__ = ["randn"]

_U64 = 1 << 64


def _u64(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: expected an integer, got {type(value).__name__}")
    v = int(value)
    if not 0 <= v < _U64:
        raise ValueError(f"{what}: expected an integer in [0, 2**64), got {v}")
    return v


def _shape(shape: Any) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints: numpy/torch integer scalars, torch.Size) as a
    tuple; TypeError naming it otherwise (a str, floats, bools)."""

    def dim(d: Any) -> int:
        kind = str(getattr(d, "dtype", ""))
        if isinstance(d, (bool, np.bool_)) or kind in ("bool", "torch.bool"):
            raise TypeError
        return operator.index(d)

    bad = TypeError(f"shape: expected an int or a sequence of ints, got {shape!r}")
    if isinstance(shape, (str, bytes)):
        raise bad
    try:
        return (dim(shape),)
    except TypeError:
        pass
    try:
        return tuple(dim(d) for d in shape)
    except TypeError:
        raise bad from None


def randn(shape: Any, seed: int, offset: int = 0) -> np.ndarray:
    """Standard normal float32 noise from rdiff's Philox stream.

    Element ``i`` of the result (in C order, the batch dimension included) is element ``i``
    of the stream keyed by ``seed`` at counter offset ``offset``; it depends on
    ``(seed, offset, i)`` only, so the same numbers come out on every machine, thread count
    and GPU. ``AnalyticDPMScheduler.step(..., generator=seed)`` draws step ``k``'s noise as
    ``randn(sample.shape, seed, offset=k)`` (in the CPU loop or inside the CUDA kernel).

    Args:
        shape: an int or a tuple of ints.
        seed: the Philox key, an integer in [0, 2**64).
        offset: the stream offset (high counter words), an integer in [0, 2**64).

    Returns:
        A numpy float32 array of ``shape``; values lie within ±5.8 (Box–Muller on 23-bit
        uniforms: the tails beyond that have probability below 1e-8).
    """
    shape = _shape(shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape: dimensions must be ≥ 0, got {shape}")
    seed = _u64(seed, "seed")
    offset = _u64(offset, "offset")
    out = np.empty(shape, dtype=np.float32)
    if math.prod(shape):
        _philox_normal_fill(out, seed, offset)
    return out
