"""rdiff's diffusers-compatible schedulers (no diffusers or torch needed to use them)."""

from ._base import SchedulerOutput
from .analytic_dpm import AnalyticDPMScheduler
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_multistep import DPMSolverMultistepScheduler
from .dpm_singlestep import DPMSolverSinglestepScheduler
from .unipc import UniPCMultistepScheduler

__all__ = [
    "AnalyticDPMScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "SchedulerOutput",
    "UniPCMultistepScheduler",
]
