"""torch.randn on the CPU, drawn by rdiff: the same numbers, the generator left where torch
leaves it, in a fraction of the time (``src/random/torch_normal.rs``).

diffusers' ancestral and SDE steps draw ``torch.randn(shape, generator=g, dtype=...)`` at every
step; torch draws one number at a time on one thread, which costs more than the fused step
that reads the noise. rdiff reads ``g.get_state()``, draws the MT19937 words and the
Box–Muller transform itself and writes the state back.

Torch's last bits depend on how it was built (its AVX2 kernels use Cephes polynomials, others
libm), so the first draw checks each candidate against the installed torch, number for number
in float32, bfloat16 and float16; with none matching, every draw is left to torch.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

from ._rdiff import _torch_normal_fill

_MATHS = ("cephes_fma", "cephes", "libm")
_DTYPES = ("float32", "bfloat16", "float16")


def _fill(out: Any, generator: Any, dtype: str, math_name: str) -> None:
    state = generator.get_state()  # (a copy: rdiff writes the next state into it)
    _torch_normal_fill(out, state.numpy(), dtype, math_name)
    generator.set_state(state)


@functools.lru_cache(maxsize=1)
def _math() -> str | None:
    """The candidate that reproduces this torch's draws, or None; found once per process."""
    torch = sys.modules["torch"]  # (only called with torch tensors in hand)
    n = 4096 + 21  # several groups of 16 and a redrawn tail
    for name in _MATHS:
        ok = True
        for dtype in _DTYPES:
            theirs = torch.Generator().manual_seed(2024)
            ours = torch.Generator().manual_seed(2024)
            want = torch.randn(n, generator=theirs, dtype=getattr(torch, dtype)).float()
            got = torch.empty(n, dtype=torch.float32)
            try:
                _fill(got, ours, dtype, name)
            except ValueError:  # a state layout rdiff does not know (another torch)
                return None
            if not (torch.equal(got, want) and torch.equal(ours.get_state(), theirs.get_state())):
                ok = False
                break
        if ok:
            return name
    return None


def randn(shape: tuple, generator: Any, dtype: Any, widen: bool = False) -> Any:
    """``torch.randn(shape, generator=generator, dtype=dtype)`` on the CPU, or None where rdiff
    leaves the draw to torch (fewer than 16 elements, a dtype other than float32, bfloat16 or
    float16, a generator on another device, or a torch whose numbers rdiff does not match).

    ``generator`` is a CPU ``torch.Generator`` or None (torch's default generator). With
    ``widen``, the result is a float32 tensor holding the dtype's values (exactly), for a pass
    that reads noise as float32; otherwise it has ``dtype``.
    """
    torch = sys.modules["torch"]  # (only called with torch tensors in hand)
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES or math.prod(shape) < 16:
        return None
    g = torch.default_generator if generator is None else generator
    if not isinstance(g, torch.Generator) or g.device.type != "cpu":
        return None
    found = _math()
    if found is None:
        return None
    out = torch.empty(shape, dtype=torch.float32)
    _fill(out, g, name, found)
    return out if widen or name == "float32" else out.to(dtype)
