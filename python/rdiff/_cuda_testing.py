"""Private test helpers for the CUDA code path on machines without a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._rdiff import _set_emulated_backend


@contextmanager
def emulated_backend(max_blocks: int = 3) -> Iterator[None]:
    """Within the block, CPU tensors given to the scheduler steps that have a CUDA kernel (the
    multistep DPM-Solver step, the Analytic-DPM step) run that kernel on the emulated launcher
    (host-compiled, at most ``max_blocks`` blocks) instead of the CPU loop. Process-wide; not
    thread-safe; for tests only."""
    previous = _set_emulated_backend(max_blocks)
    try:
        yield
    finally:
        _set_emulated_backend(previous)
