"""rdiff: fast diffusion sampling, written in Rust.

Noise schedules, the multistep DPM-Solver / DPM-Solver++, the Analytic-DPM optimal reverse
variance and a native UNet, on the CPU and as fused CUDA kernels.
"""

from __future__ import annotations

from . import _cuda_libs

_cuda_libs.preload_nvrtc()

from . import testing
from ._rdiff import (
    CudaError,
    CudaUnavailableError,
    NoiseSchedule,
    RdiffError,
    WeightsError,
    __version__,
)
from ._rdiff import backends as _backends
from .schedulers import DPMSolverMultistepScheduler, SchedulerOutput
from .unet import UNet2DModel


def backends() -> dict:
    """Which backends work here, and why not.

    Returns a dict ``{"cpu": {"available": True, "threads": int}, "cuda": {"available": bool,
    ...}}``; when CUDA is unavailable, ``backends()["cuda"]["reason"]`` says why (no NVRTC
    library, no driver, no GPU).
    """
    return _backends()


__all__ = [
    "CudaError",
    "CudaUnavailableError",
    "DPMSolverMultistepScheduler",
    "NoiseSchedule",
    "RdiffError",
    "SchedulerOutput",
    "UNet2DModel",
    "WeightsError",
    "__version__",
    "backends",
    "testing",
]
