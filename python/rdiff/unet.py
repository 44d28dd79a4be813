"""``rdiff.UNet2DModel``: diffusers' ``UNet2DModel`` forward pass, natively in Rust.

Load a diffusers-format folder (``config.json`` + ``diffusion_pytorch_model.safetensors``,
float32/float16/bfloat16 weights, memory-mapped and converted to float32 once) or an in-memory
diffusers model, then call it like diffusers' model::

    unet = rdiff.UNet2DModel.from_pretrained("google/ddpm-cifar10-32 folder")
    eps = unet(sample, timestep)            # same type, dtype and device as `sample`
    eps = unet(sample, timestep, return_dict=True).sample   # diffusers-style

``sample`` is a float32 (or float16 / bfloat16 / float64) numpy array or torch CPU tensor of
shape ``(batch, in_channels, height, width)``; arithmetic runs in float32 and the result has
the input's dtype. ``timestep`` follows diffusers: a Python/numpy scalar is converted to an
integer as ``torch.tensor([t], dtype=torch.long)`` does (so 2.7 becomes 2); a tensor or array
(0-d or one value per sample) keeps its values, converted to float32.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _tensor
from ._config import FrozenConfig
from ._rdiff import WeightsError, _UNet2D

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass
class UNet2DOutput:
    """What ``unet(..., return_dict=True)`` returns, like diffusers' ``UNet2DOutput``."""

    sample: Any


def _check_target(device: Any, dtype: Any) -> None:
    dev = str(device)
    if dev != "cpu":
        if dev.startswith("cuda"):
            from ._rdiff import CudaUnavailableError

            raise CudaUnavailableError(
                "rdiff.UNet2DModel: the CUDA UNet is not built yet; use device='cpu'"
            )
        raise ValueError(f"device: expected 'cpu', got {device!r}")
    name = str(dtype).removeprefix("torch.")
    if name not in ("float32", "<class 'numpy.float32'>"):
        raise ValueError(
            f"dtype: the CPU UNet computes in float32 (weights are converted on load); "
            f"got {dtype!r}"
        )


class UNet2DModel:
    """A diffusers ``UNet2DModel`` (DDPM/ADM-style unconditional or class-conditional UNet).

    Thread safety: one model may be shared by many threads. The weights are read-only;
    concurrent calls take turns on the model's activation arena (each call runs on all cores
    with the GIL released) and give the serial results bit for bit.
    """

    def __init__(self, core: _UNet2D, config: dict) -> None:
        self._core = core
        self._config = FrozenConfig(config)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: Any = "cpu",
        dtype: Any = "float32",
        subfolder: str | None = None,
        variant: str | None = None,
    ) -> UNet2DModel:
        """Load a diffusers-format folder (``subfolder="unet"`` for a pipeline folder)."""
        _check_target(device, dtype)
        folder = os.fspath(path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise WeightsError(f"{folder}: not a directory (a diffusers model folder is needed)")
        name = WEIGHTS_NAME if not variant else f"diffusion_pytorch_model.{variant}.safetensors"
        if not os.path.exists(os.path.join(folder, name)):
            raise WeightsError(f"{folder}: no {name} (rdiff reads safetensors weights only)")
        cfg_path = os.path.join(folder, "config.json")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                config = json.load(f)
        except OSError as e:
            raise WeightsError(f"{cfg_path}: {e}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{cfg_path}: expected a JSON object")
        cls_name = config.get("_class_name", "UNet2DModel")
        if cls_name != "UNet2DModel":
            raise ValueError(f"{cfg_path}: a {cls_name} config, not a UNet2DModel")
        return cls(_UNet2D.from_dir(folder, name), config)

    @classmethod
    def from_diffusers(
        cls, module: Any, device: Any = "cpu", dtype: Any = "float32"
    ) -> UNet2DModel:
        """Take the weights and config of an in-memory ``diffusers.UNet2DModel``."""
        _check_target(device, dtype)
        if not (hasattr(module, "config") and hasattr(module, "state_dict")):
            raise TypeError(
                f"module: expected a diffusers UNet2DModel, got {type(module).__name__}"
            )
        config = {k: _plain(v) for k, v in dict(module.config).items()}
        tensors = {}
        for name, t in module.state_dict().items():
            tensors[name] = np.ascontiguousarray(t.detach().to("cpu").float().numpy())
        return cls(_UNet2D.from_tensors(json.dumps(config), tensors), config)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> FrozenConfig:
        return self._config

    @property
    def in_channels(self) -> int:
        return self._core.in_channels

    @property
    def out_channels(self) -> int:
        return self._core.out_channels

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"

    def eval(self) -> UNet2DModel:
        return self

    # ------------------------------------------------------------------ forward
    def __call__(
        self,
        sample: Any,
        timestep: Any,
        class_labels: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """ε (or whatever the model predicts) for ``sample`` at ``timestep``."""
        _tensor.check_float(sample, "sample")
        if sample.ndim != 4:
            raise ValueError(
                f"sample: expected (batch, channels, height, width), got {tuple(sample.shape)}"
            )
        x = _tensor.contiguous(sample)
        b, c, h, w = (int(s) for s in x.shape)
        ts = _timesteps(timestep)
        self._core.check((b, c, h, w), len(ts))
        out = _alloc(x, (b, self.out_channels, h, w))
        idx, vals = _class_labels(class_labels)
        self._core.forward(_tensor.describe(x), (b, c, h, w), ts, _tensor.describe(out), idx, vals)
        return UNet2DOutput(sample=out) if return_dict else out

    forward = __call__

    def __repr__(self) -> str:
        return f"rdiff.UNet2DModel({dict(self._config)!r})"


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _alloc(like: Any, shape: tuple) -> Any:
    if _tensor.is_torch(like):
        torch = _tensor.torch_module()
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return np.empty(shape, dtype=like.dtype)


def _to_numpy(x: Any) -> np.ndarray:
    if _tensor.is_torch(x):
        return (
            x.detach().cpu().numpy()
            if x.dtype != _tensor.torch_module().bfloat16
            else (x.detach().cpu().float().numpy())
        )
    return np.asarray(x)


def _timesteps(t: Any) -> list[float]:
    """diffusers' timestep handling: scalars become integers, arrays keep their values."""
    if _tensor.is_torch(t) or isinstance(t, np.ndarray):
        a = _to_numpy(t).reshape(-1)
        if a.size == 0:
            raise ValueError("timestep: empty")
        if a.dtype.kind == "b" or a.dtype.kind not in "iuf":
            raise TypeError(f"timestep: unsupported dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"timestep: must be finite, got {a.tolist()}")
        return a.astype(np.float32).tolist()
    if isinstance(t, (list, tuple)):
        return _timesteps(np.asarray(t))
    if isinstance(t, bool):
        raise TypeError("timestep: expected a number, got bool")
    if isinstance(t, (int, float, np.integer, np.floating)):
        if not np.isfinite(t):
            raise ValueError(f"timestep: must be finite, got {t}")
        return [float(int(t))]
    raise TypeError(f"timestep: expected a number, array or tensor, got {type(t).__name__}")


def _class_labels(labels: Any) -> tuple[list[int] | None, list[float] | None]:
    if labels is None:
        return None, None
    if isinstance(labels, (int, np.integer)):
        return [int(labels)], None
    a = _to_numpy(labels) if not isinstance(labels, (list, tuple)) else np.asarray(labels)
    if a.dtype.kind in "iu":
        return a.reshape(-1).astype(np.int64).tolist(), None
    if a.dtype.kind == "f":
        return None, a.reshape(-1).astype(np.float32).tolist()
    raise TypeError(f"class_labels: unsupported dtype {a.dtype}")
