"""rdiff's schedulers as diffusers ``SchedulerMixin`` / ``ConfigMixin`` classes, and its native
``UNet2DConditionModel`` as a drop-in ``pipe.unet``.

Importable when diffusers is installed. A ``DiffusionPipeline`` accepts, saves and reloads
them, and ``from_config`` switching between them and diffusers' own schedulers works::

    from rdiff.diffusers import DPMSolverMultistepScheduler  # or UniPCMultistepScheduler, ...
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

Their ``timesteps`` are torch tensors, as diffusers' are.
"""

from __future__ import annotations

import inspect
from typing import Any

try:
    import torch
    from diffusers import UNet2DConditionModel as _DiffusersUNet
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
        EulerAncestralDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
        FlowMatchEulerDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_flow_match_heun_discrete import (
        FlowMatchHeunDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import (
        KDPM2AncestralDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput
    from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_tcd import TCDSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
except ImportError as e:  # pragma: no cover - exercised only without diffusers
    raise ImportError("rdiff.diffusers needs diffusers: pip install diffusers torch") from e

from . import schedulers as _schedulers
from . import unet as _unet
from ._config import check_config

__all__ = [
    "AnalyticDPMScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverV3Scheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "TCDScheduler",
    "UNet2DConditionModel",
    "UniPCMultistepScheduler",
]


def _wrap(base: type, output_type: type) -> type:
    """A diffusers subclass of rdiff scheduler ``base`` with diffusers' config machinery,
    whose ``step`` returns diffusers' ``output_type`` (a ``BaseOutput``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)

    # register_to_config reads the defaults from the signature: give it the real one.
    __init__.__signature__ = inspect.signature(base.__init__)  # type: ignore[attr-defined]
    __init__.__doc__ = base.__init__.__doc__

    def _register(self, **kwargs: Any) -> None:
        """diffusers' ``register_to_config`` decorator has already recorded the config;
        its fields' types are checked as rdiff's own classes check them."""
        check_config(kwargs)

    namespace = {
        "__init__": register_to_config(__init__),
        "_register": _register,
        "__module__": __name__,
        "__doc__": base.__doc__,
        "__qualname__": base.__name__,
        "config_name": "scheduler_config.json",
        "_torch_timesteps": True,
        "_compatibles": list(base._compatibles),
        "_output_type": output_type,
    }
    # diffusers' mixins come first so that their config, from_config and save/load win.
    return type(base.__name__, (SchedulerMixin, ConfigMixin, base), namespace)


DPMSolverMultistepScheduler = _wrap(_schedulers.DPMSolverMultistepScheduler, SchedulerOutput)
DDIMScheduler = _wrap(_schedulers.DDIMScheduler, DDIMSchedulerOutput)
DDPMScheduler = _wrap(_schedulers.DDPMScheduler, DDPMSchedulerOutput)
DEISMultistepScheduler = _wrap(_schedulers.DEISMultistepScheduler, SchedulerOutput)
DPMSolverSinglestepScheduler = _wrap(_schedulers.DPMSolverSinglestepScheduler, SchedulerOutput)
UniPCMultistepScheduler = _wrap(_schedulers.UniPCMultistepScheduler, SchedulerOutput)
EulerDiscreteScheduler = _wrap(_schedulers.EulerDiscreteScheduler, EulerDiscreteSchedulerOutput)
EulerAncestralDiscreteScheduler = _wrap(
    _schedulers.EulerAncestralDiscreteScheduler, EulerAncestralDiscreteSchedulerOutput
)
FlowMatchEulerDiscreteScheduler = _wrap(
    _schedulers.FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerOutput
)
FlowMatchHeunDiscreteScheduler = _wrap(
    _schedulers.FlowMatchHeunDiscreteScheduler, FlowMatchHeunDiscreteSchedulerOutput
)
HeunDiscreteScheduler = _wrap(_schedulers.HeunDiscreteScheduler, HeunDiscreteSchedulerOutput)
KDPM2DiscreteScheduler = _wrap(_schedulers.KDPM2DiscreteScheduler, KDPM2DiscreteSchedulerOutput)
KDPM2AncestralDiscreteScheduler = _wrap(
    _schedulers.KDPM2AncestralDiscreteScheduler, KDPM2AncestralDiscreteSchedulerOutput
)
LCMScheduler = _wrap(_schedulers.LCMScheduler, LCMSchedulerOutput)
LMSDiscreteScheduler = _wrap(_schedulers.LMSDiscreteScheduler, LMSDiscreteSchedulerOutput)
TCDScheduler = _wrap(_schedulers.TCDScheduler, TCDSchedulerOutput)
# No diffusers peer (DPM-Solver-v3 is only in its authors' research code).
DPMSolverV3Scheduler = _wrap(_schedulers.DPMSolverV3Scheduler, SchedulerOutput)
# No diffusers peer; its step returns the sample and x0 prediction, as DDPM's does.
AnalyticDPMScheduler = _wrap(_schedulers.AnalyticDPMScheduler, DDPMSchedulerOutput)


class _AddEmbedding:
    """What SDXL pipelines read of ``unet.add_embedding``: ``linear_1.in_features``."""

    def __init__(self, in_features: int) -> None:
        self.linear_1 = type("Linear", (), {"in_features": in_features})()


class UNet2DConditionModel(_unet.UNet2DConditionModel):
    """rdiff's native ``UNet2DConditionModel`` as a drop-in ``pipe.unet`` for diffusers'
    Stable Diffusion pipelines (SD 1.x / 2.x, img2img, SDXL)::

        pipe.unet = rdiff.diffusers.UNet2DConditionModel.from_diffusers(pipe.unet)
        # or .from_pretrained(folder, subfolder="unet")

    Its ``config`` has every key of diffusers' class (absent keys take diffusers'
    defaults), ``dtype`` and ``device`` are torch's, calls return diffusers'
    ``UNet2DConditionOutput`` (``return_dict=True``, diffusers' default) or a tuple.
    """

    def __init__(self, core: Any, config: dict, lora_unfused: bool = False) -> None:
        defaults = {
            k: p.default
            for k, p in inspect.signature(_DiffusersUNet.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        full = {**defaults, **config}
        super().__init__(core, {k: _unet._plain(v) for k, v in full.items()}, lora_unfused)
        dim = full.get("projection_class_embeddings_input_dim")
        if full.get("addition_embed_type") == "text_time" and dim:
            self.add_embedding = _AddEmbedding(int(dim))

    @property
    def dtype(self) -> Any:
        return torch.float32

    @property
    def device(self) -> Any:
        # The emulated launcher (tests) takes CPU tensors.
        return torch.device("cpu" if self._cuda is None or self._cuda < 0 else super().device)

    def __call__(self, *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        out = super().__call__(*args, return_dict=False, **kwargs)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    forward = __call__
