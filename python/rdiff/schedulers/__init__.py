"""rdiff's diffusers-compatible schedulers (no diffusers or torch needed to use them)."""

from ._base import SchedulerOutput
from .dpm_multistep import DPMSolverMultistepScheduler

__all__ = ["DPMSolverMultistepScheduler", "SchedulerOutput"]
