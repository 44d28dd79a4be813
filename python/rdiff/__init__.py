"""rdiff: fast diffusion sampling, written in Rust.

Noise schedules, the multistep DPM-Solver / DPM-Solver++, the Analytic-DPM optimal reverse
variance and a native UNet, on the CPU and as fused CUDA kernels.
"""

from __future__ import annotations

from . import _cuda_libs

_cuda_libs.register()

from . import k as k
from . import testing
from ._rdiff import (
    ConcurrentUseError,
    CudaError,
    CudaUnavailableError,
    NoiseSchedule,
    RdiffError,
    WeightsError,
    __version__,
)
from ._rdiff import backends as _backends
from .analytic import GammaTable, estimate_gamma, optimal_trajectory
from .ems import EMSTable, estimate_ems
from .noise import randn
from .sampling import SampleInfo, model_wrapper, sample
from .schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    DPMSolverV3Scheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    SchedulerOutput,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from .schedulers.analytic_dpm import AnalyticDPMScheduler
from .unet import UNet2DConditionModel, UNet2DModel


def backends() -> dict:
    """Which backends work here, and why not.

    Returns a dict ``{"cpu": {"available": True, "threads": int, "simd": "avx512" | "avx2" |
    "baseline"}, "cuda": {"available": bool, ...}}``; when CUDA is unavailable,
    ``backends()["cuda"]["reason"]`` says why (no NVRTC library, no driver, no GPU).
    """
    return _backends()


__all__ = [
    "AnalyticDPMScheduler",
    "ConcurrentUseError",
    "CudaError",
    "CudaUnavailableError",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverV3Scheduler",
    "EMSTable",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "GammaTable",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "NoiseSchedule",
    "RdiffError",
    "SampleInfo",
    "SchedulerOutput",
    "TCDScheduler",
    "UNet2DConditionModel",
    "UNet2DModel",
    "UniPCMultistepScheduler",
    "WeightsError",
    "__version__",
    "backends",
    "estimate_ems",
    "estimate_gamma",
    "k",
    "model_wrapper",
    "optimal_trajectory",
    "randn",
    "sample",
    "testing",
]
