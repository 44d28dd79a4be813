"""Private test helpers for the CUDA code path on machines without a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._rdiff import _emulated_launches, _set_emulated_backend


@contextmanager
def emulated_backend(max_blocks: int = 3) -> Iterator[None]:
    """Within the block, every fused pass over CPU tensors (scheduler steps, ``rdiff.sample``,
    ``rdiff.k``) runs the CUDA kernels on the emulated launcher (host-compiled, at most
    ``max_blocks`` blocks) instead of the CPU loop: the path CUDA tensors take, on a machine
    without a GPU. Process-wide; not thread-safe; for tests only."""
    previous = _set_emulated_backend(max_blocks)
    try:
        yield
    finally:
        _set_emulated_backend(previous)


def launches() -> int:
    """Kernel launches the emulated launcher has run in this process (a test reads it before
    and after a call to prove the call ran kernels)."""
    return _emulated_launches()
