"""``rdiff.UNet2DModel`` and ``rdiff.UNet2DConditionModel``: diffusers' UNets, natively in Rust.

Load a diffusers-format folder (``config.json`` + ``diffusion_pytorch_model.safetensors``,
float32/float16/bfloat16 weights, memory-mapped; half-precision matrices stay in their dtype and
are widened where they are used) or an in-memory diffusers model, then call it like diffusers'
model::

    unet = rdiff.UNet2DModel.from_pretrained("google/ddpm-cifar10-32 folder")
    eps = unet(sample, timestep)            # same type, dtype and device as `sample`
    eps = unet(sample, timestep, return_dict=True).sample   # diffusers-style

``sample`` is a float32 (or float16 / bfloat16 / float64) numpy array or torch CPU tensor of
shape ``(batch, in_channels, height, width)``; arithmetic runs in float32 (or the
``compute_dtype`` math) and the result has the input's dtype. With ``device="cuda"`` the same
graph runs through rdiff's CUDA kernels (``kernels/gemm.cu``, ``unet_conv.cu``,
``unet_ops.cu``, ``unet_attention.cu``) on torch CUDA tensors (float32, float16 or bfloat16)
on the caller's current stream, activations in float32 (a bfloat16 or float16 model's weight
matrices in that type).
``timestep`` follows diffusers: a Python/numpy scalar is converted to an
integer as ``torch.tensor([t], dtype=torch.long)`` does (so 2.7 becomes 2); a tensor or array
(0-d or one value per sample) keeps its values, converted to float32.

``UNet2DConditionModel`` is the Stable Diffusion 1.x / 2.x / SDXL denoiser: the same loading,
and diffusers' call ``unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=...)``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
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


def _warn_unused(core: Any, source: str) -> None:
    """Warns (UserWarning) when ``source`` holds tensors the model never read: a checkpoint of
    a larger or different model than its config describes would otherwise load silently, as
    diffusers warns of a checkpoint's unexpected keys."""
    unused = core.unused_weights
    if unused:
        shown = ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else "")
        warnings.warn(
            f"weights not used by the model: {len(unused)} tensor(s) in {source} that its "
            f"config does not describe were ignored ({shown})",
            UserWarning,
            stacklevel=4,
        )


def _module_compute(module: Any, ordinal: int | None) -> str:
    """``from_diffusers``' default math: a float16 or bfloat16 module's own dtype on a device
    (``ordinal`` not None; -1 is the emulated launcher), float32 otherwise (and on the CPU,
    where float32 math on half-precision weights gives their exact products)."""
    name = str(getattr(module, "dtype", "float32")).removeprefix("torch.")
    return name if ordinal is not None and name in ("float16", "bfloat16") else "float32"


def _check_target(device: Any, dtype: Any) -> int | None:
    """None for the CPU, the CUDA device ordinal for "cuda" / "cuda:N" / torch devices."""
    name = str(dtype).removeprefix("torch.")
    if name not in ("float32", "<class 'numpy.float32'>"):
        raise ValueError(
            f"dtype: the UNet's parameters are float32 (its math is compute_dtype's; "
            f"float16/bfloat16 samples are accepted at call time); got {dtype!r}"
        )
    dev = str(device)
    if dev == "cpu":
        return None
    if dev == "cuda":
        return 0
    if dev.startswith("cuda:") and dev[5:].isdigit():
        return int(dev[5:])
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


_COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "tfloat32")


def _compute_name(compute_dtype: Any) -> str:
    """ "float32", "bfloat16", "float16" or "tfloat32" from a name or a torch dtype; ValueError
    for anything else."""
    name = str(compute_dtype).removeprefix("torch.")
    if name not in _COMPUTE_DTYPES:
        raise ValueError(
            "compute_dtype: expected 'float32', 'bfloat16', 'float16' or 'tfloat32', got "
            f"{compute_dtype!r}"
        )
    return name


class _NativeUNet:
    """Loading, properties and the call's common checks of rdiff's native UNets."""

    #: The diffusers class whose configs and weights this class loads.
    _class_name = ""

    def __init__(self, core: Any, config: dict, lora_unfused: bool = False) -> None:
        self._core = core
        self._config = FrozenConfig(config)
        # -1: the emulated CUDA launcher (tests); None: the CPU.
        self._cuda: int | None = core.device
        # Whether from_diffusers merged a LoRA from unfused adapters: a per-call LoRA scale
        # would change those updates.
        self._lora_unfused = lora_unfused

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: Any = "cpu",
        dtype: Any = "float32",
        subfolder: str | None = None,
        variant: str | None = None,
        compute_dtype: Any = "float32",
    ) -> Any:
        """Load a diffusers-format folder (``subfolder="unet"`` for a pipeline folder).

        ``device="cuda"`` (or ``"cuda:N"``) runs the model through rdiff's CUDA kernels on
        torch CUDA tensors; without a usable driver/GPU/NVRTC this raises
        ``rdiff.CudaUnavailableError`` with the reason.

        ``compute_dtype="bfloat16"`` on the CPU keeps the weight matrices in bfloat16 and
        multiplies them by bfloat16-rounded activations, summing in float32: on AMX tiles
        where the CPU has AMX-BF16 (Sapphire Rapids and later), else in float32 arithmetic
        (``rdiff.backends()["cpu"]["bf16_kernel"]`` says which); so do attention's two
        products from 1,024 keys. Norms, softmax and the rest stay float32. On CUDA every
        GEMM (convolutions, linear layers) runs on cuBLAS's bf16 tensor cores with float32
        sums (the weight matrices kept in bfloat16 on the device, half of float32's memory;
        the activations rounded to bfloat16 for each product), or, without cuBLAS, on rdiff's
        own GEMM kernel (the same numerics, float32 speed); attention (heads up to 160 wide)
        runs in rdiff's fused tensor-core kernel, with no score matrix in memory.
        ``compute_dtype="float16"`` is CUDA's only: the same GEMMs on float16 tensor cores
        (three more mantissa bits than bfloat16, but values past 65504 overflow; the weights
        in float16 on the device), ValueError on the CPU,
        which has no float16 product kernel. ``compute_dtype="tfloat32"`` is CUDA's only too:
        float32 weights and activations, every GEMM on the TF32 tensor cores (float16's
        mantissa, float32's range; what ``torch.backends.cuda.matmul.allow_tf32`` and
        ``torch.backends.cudnn.allow_tf32``, the latter on by default, give torch), and
        attention (heads up to 160 wide) in rdiff's fused kernel on them.
        Inputs and outputs keep the caller's dtype.

        A checkpoint holding tensors its config does not describe (another model's weights, a
        config with fewer layers) loads with a ``UserWarning`` naming them, as diffusers
        warns of unexpected keys; a missing or misshapen tensor is a ``WeightsError``.
        """
        return cls._load(
            path, _check_target(device, dtype), subfolder, variant, compute_dtype=compute_dtype
        )

    @classmethod
    def _load(
        cls,
        path: str | os.PathLike,
        ordinal: int | None,
        subfolder: str | None = None,
        variant: str | None = None,
        max_blocks: int = 8,
        threads: int = 0,
        compute_dtype: Any = "float32",
    ) -> Any:
        compute = _compute_name(compute_dtype)
        folder = os.fspath(path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise WeightsError(f"{folder}: not a directory (a diffusers model folder is needed)")
        name = WEIGHTS_NAME if not variant else f"diffusion_pytorch_model.{variant}.safetensors"
        if not any(os.path.exists(os.path.join(folder, n)) for n in (name, name + ".index.json")):
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
        if cls_name != cls._class_name:
            raise ValueError(f"{cfg_path}: a {cls_name} config, not a {cls._class_name}")
        core = _UNet2D.from_dir(folder, name, ordinal, max_blocks, threads, compute)
        _warn_unused(core, os.path.join(folder, name))
        return cls(core, config)

    @classmethod
    def _emulated(cls, path: str | os.PathLike, max_blocks: int = 8, threads: int = 32) -> Any:
        """Private (tests): the CUDA UNet on the emulated launcher, called with CPU tensors.

        ``threads`` per block of the non-GEMM kernels (32 keeps the emulation fast; 0 means
        256, the GPU's), at most ``max_blocks`` blocks per grid-stride launch.
        """
        return cls._load(path, -1, max_blocks=max_blocks, threads=threads)

    @classmethod
    def from_diffusers(
        cls,
        module: Any,
        device: Any = "cpu",
        dtype: Any = "float32",
        compute_dtype: Any = None,
    ) -> Any:
        """Take the weights and config of an in-memory diffusers model of this class
        (``compute_dtype`` as in ``from_pretrained``; by default float32, except on CUDA
        for a float16 or bfloat16 module, which computes in its own dtype there, as
        diffusers would: a float16 pipeline's UNet keeps float16 tensor-core math). PEFT
        LoRA layers (a pipeline's ``load_lora_weights``) are merged as ``fuse_lora`` merges
        them, at the adapter weights set when this is called; the diffusers model is left as
        it was."""
        ordinal = _check_target(device, dtype)
        if compute_dtype is None:
            compute_dtype = _module_compute(module, ordinal)
        return cls._from_diffusers(module, ordinal, compute_dtype=compute_dtype)

    @classmethod
    def _from_diffusers(
        cls, module: Any, ordinal: int | None, max_blocks: int = 8, compute_dtype: Any = "float32"
    ) -> Any:
        """``ordinal`` as ``_load``'s (-1: the emulated CUDA launcher, for tests)."""
        compute = _compute_name(compute_dtype)
        if not (hasattr(module, "config") and hasattr(module, "state_dict")):
            raise TypeError(
                f"module: expected a diffusers {cls._class_name}, got {type(module).__name__}"
            )
        if type(module).__name__ != cls._class_name:
            raise TypeError(f"module: a {type(module).__name__}, not a {cls._class_name}")
        config = {k: _plain(v) for k, v in dict(module.config).items()}
        config["_class_name"] = cls._class_name
        tensors, lora_unfused = _state_tensors(module)
        threads = 32 if ordinal == -1 else 0
        core = _UNet2D.from_tensors(
            json.dumps(config), tensors, ordinal, max_blocks, threads, compute
        )
        _warn_unused(core, f"the {cls._class_name}'s state dict")
        return cls(core, config, lora_unfused)

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
        if self._cuda is None:
            return "cpu"
        return "emulated" if self._cuda < 0 else f"cuda:{self._cuda}"

    @property
    def dtype(self) -> str:
        """What the matrix products compute in: "float32", "bfloat16" or "float16"
        (``compute_dtype``)."""
        return self._core.compute_dtype

    def eval(self) -> Any:
        return self

    def _sample_checks(
        self, sample: Any, timestep: Any, host_timesteps: bool = False
    ) -> tuple[Any, Any, Any]:
        """The contiguous sample, its timesteps (a list of floats, or a float32 tensor on the
        model's device) and a fresh output buffer."""
        _tensor.check_float(sample, "sample")
        if sample.ndim != 4:
            raise ValueError(
                f"sample: expected (batch, channels, height, width), got {tuple(sample.shape)}"
            )
        x = _tensor.contiguous(sample)
        b, c, h, w = (int(s) for s in x.shape)
        ts = None if host_timesteps else self._device_timesteps(timestep, x)
        if ts is None:
            ts = _timesteps(timestep)
        self._core.check((b, c, h, w), len(ts))
        return x, ts, _alloc(x, (b, self.out_channels, h, w))

    def _device_timesteps(self, t: Any, x: Any) -> Any:
        """A timestep tensor on the sample's device as float32 there, for the model to read on
        the device: nothing waits for the device, so a CUDA call can be captured in a CUDA
        graph (its values are then not checked for finiteness). None where the values are
        read on the host: not a tensor there, or a model whose embedding needs them."""
        if not (
            _tensor.is_torch(t)
            and _tensor.is_torch(x)
            and t.device == x.device
            and self._core.timesteps_on_device
        ):
            return None
        if t.dtype.is_complex or t.dtype == _tensor.torch_module().bool:
            raise TypeError(f"timestep: unsupported dtype {t.dtype}")
        if t.numel() == 0:
            raise ValueError("timestep: empty")
        return t.detach().reshape(-1).to(_tensor.torch_module().float32).contiguous()

    def __repr__(self) -> str:
        return f"rdiff.{type(self).__name__}({dict(self._config)!r})"


class UNet2DModel(_NativeUNet):
    """A diffusers ``UNet2DModel`` (DDPM/ADM-style unconditional or class-conditional UNet).

    Thread safety: one model may be shared by many threads. The weights are read-only;
    concurrent calls take turns on the model's activation arena (each call runs on all cores
    with the GIL released) and give the serial results bit for bit. On CUDA, calls take turns
    enqueueing their work on the caller's stream, and the device runs it later: one model's
    calls must stay on one stream at a time (or the streams be synchronised between them),
    since they reuse the same device activations. A CUDA graph that captured a call reads
    the model's device memory (weights, activations) when it replays: keep the model alive
    as long as the graph.
    """

    _class_name = "UNet2DModel"

    def __call__(
        self,
        sample: Any,
        timestep: Any,
        class_labels: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """ε (or whatever the model predicts) for ``sample`` at ``timestep``."""
        x, ts, out = self._sample_checks(sample, timestep)
        idx, vals = _class_labels(class_labels)
        self._core.forward(x, ts, out, idx, vals, _tensor.cuda_stream(x))
        return UNet2DOutput(sample=out) if return_dict else out

    forward = __call__


class UNet2DConditionModel(_NativeUNet):
    """A diffusers ``UNet2DConditionModel``: the Stable Diffusion 1.x / 2.x / SDXL denoiser.

    ``unet(sample, timestep, encoder_hidden_states)`` with ``sample`` (batch, in_channels,
    height, width) and ``encoder_hidden_states`` (batch, tokens, cross_attention_dim), numpy
    arrays or torch tensors of float32 / float16 / bfloat16 (float32 arithmetic; the result
    has the sample's type and dtype). SDXL-style models (``addition_embed_type="text_time"``)
    take ``added_cond_kwargs={"text_embeds": (batch, n), "time_ids": (batch, k)}``; models
    with ``time_cond_proj_dim`` take ``timestep_cond`` (batch, time_cond_proj_dim).
    A ControlNet's ``down_block_additional_residuals`` (one (batch, channels, height, width)
    tensor per skip connection, conv_in's output first) and ``mid_block_additional_residual``,
    and a T2I-Adapter's ``down_intrablock_additional_residuals`` (one per down block, and
    one for the mid block's output) are added as diffusers adds them, so the model drops into
    diffusers' ControlNet and T2I-Adapter pipelines; they may be float32, float16 or bfloat16
    and must be on the sample's device. ``from_diffusers`` merges a model's PEFT LoRA layers
    (``pipe.load_lora_weights``) at the adapter weights set when it is called. A per-call LoRA
    ``scale`` in ``cross_attention_kwargs`` is taken where it changes nothing (1, or a model
    without unfused LoRA adapters, as in diffusers); other scales, other
    ``cross_attention_kwargs`` and attention masks are not supported (a clear error). Thread
    safety as ``UNet2DModel``.
    """

    _class_name = "UNet2DConditionModel"

    def _check_attention_kwargs(self, kwargs: dict) -> None:
        """Refuses what rdiff cannot honour: keys other than ``scale`` (attention processors'
        arguments), and a LoRA ``scale`` other than 1 for a model whose merged LoRA came from
        unfused adapters (diffusers scales those updates per call; the merged weights cannot).
        Elsewhere the scale changes nothing in diffusers either."""
        extra = sorted(set(kwargs) - {"scale"})
        if extra:
            raise NotImplementedError(
                f"cross_attention_kwargs: {extra} not supported by rdiff's "
                "UNet2DConditionModel (only a LoRA 'scale')"
            )
        scale = float(kwargs.get("scale", 1.0))
        if scale != 1.0 and self._lora_unfused:
            raise NotImplementedError(
                f"cross_attention_kwargs: a per-call LoRA scale ({scale}) is not supported: "
                "from_diffusers merged the LoRA at the adapter weights set then; scale them "
                "there (set_adapters(names, adapter_weights=[...]) or fuse_lora(lora_scale=...)) "
                "before from_diffusers"
            )

    @property
    def cross_attention_dim(self) -> int:
        return self._core.cross_attention_dim

    def __call__(
        self,
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        class_labels: Any = None,
        timestep_cond: Any = None,
        attention_mask: Any = None,
        cross_attention_kwargs: dict | None = None,
        added_cond_kwargs: dict | None = None,
        down_block_additional_residuals: Any = None,
        mid_block_additional_residual: Any = None,
        down_intrablock_additional_residuals: Any = None,
        encoder_attention_mask: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """The model's prediction for ``sample`` at ``timestep`` given the context."""
        unsupported = {
            "attention_mask": attention_mask,
            "encoder_attention_mask": encoder_attention_mask,
        }
        for key, value in unsupported.items():
            if value is not None:
                raise NotImplementedError(f"{key}: not supported by rdiff's UNet2DConditionModel")
        controls = _controls(
            down_block_additional_residuals,
            mid_block_additional_residual,
            down_intrablock_additional_residuals,
        )
        if cross_attention_kwargs:
            self._check_attention_kwargs(cross_attention_kwargs)
        x, ts, out = self._sample_checks(sample, timestep, timestep_cond is not None)
        if encoder_hidden_states is None:
            raise ValueError(
                "encoder_hidden_states: required, (batch, tokens, cross_attention_dim)"
            )
        _tensor.check_float(encoder_hidden_states, "encoder_hidden_states")
        ctx = _tensor.contiguous(encoder_hidden_states)
        added = dict(added_cond_kwargs or {})
        extra = set(added) - {"text_embeds", "time_ids"}
        if extra:
            raise NotImplementedError(
                f"added_cond_kwargs: {sorted(extra)} not supported (text_embeds, time_ids)"
            )
        idx, vals = _class_labels(class_labels)
        self._core.forward(
            x,
            ts,
            out,
            idx,
            vals,
            _tensor.cuda_stream(x),
            ctx,
            _rows(added.get("text_embeds"), "added_cond_kwargs['text_embeds']"),
            _rows(added.get("time_ids"), "added_cond_kwargs['time_ids']"),
            _rows(timestep_cond, "timestep_cond"),
            **controls,
        )
        return UNet2DOutput(sample=out) if return_dict else out

    forward = __call__


def _residual_list(xs: Any, what: str) -> list[Any]:
    """A tuple or list of residual tensors, each checked and made contiguous."""
    if not isinstance(xs, (list, tuple)):
        raise TypeError(f"{what}: expected a tuple of tensors, got {type(xs).__name__}")
    out = []
    for i, r in enumerate(xs):
        _tensor.check_float(r, f"{what}[{i}]")
        out.append(_tensor.contiguous(r))
    return out


def _array(t: Any) -> np.ndarray:
    """A torch tensor as a contiguous float32 numpy array (a view where it already is one)."""
    return np.ascontiguousarray(t.detach().to("cpu").float().numpy())


def _state_tensors(module: Any) -> tuple[dict[str, np.ndarray], bool]:
    """A diffusers module's weights by diffusers' names, float32, and whether some came
    from unfused LoRA adapters. PEFT LoRA layers (a pipeline's ``load_lora_weights``) become
    the weight their forward uses, at the scales set when this is called: the base layer's
    weight plus each active adapter's scaled update, as ``fuse_lora`` merges them; the base
    weight as it is once some are fused (PEFT then adds no others); without the fused ones
    when the adapters are disabled."""
    lora = {
        name: m
        for name, m in module.named_modules()
        if hasattr(m, "get_base_layer") and hasattr(m, "get_delta_weight")
    }
    inside = tuple(f"{name}." for name in lora)
    unfused = False
    tensors = {
        name: _array(t) for name, t in module.state_dict().items() if not name.startswith(inside)
    }
    # fuse_qkv_projections() adds to_qkv (self-attention) and to_kv (cross-attention) beside
    # to_q, to_k and to_v, as copies of them; rdiff reads the separate ones
    fused = tuple(f".{p}.{w}" for p in ("to_qkv", "to_kv") for w in ("weight", "bias"))
    for name in [n for n in tensors if n.endswith(fused)]:
        if f"{name.rsplit('.', 2)[0]}.to_k.weight" in tensors:
            del tensors[name]
    for name, m in lora.items():
        base = m.get_base_layer()
        w = base.weight.detach().to("cpu").float().clone()
        if m.disable_adapters:
            adapters, sign = m.merged_adapters, -1.0
        else:
            adapters, sign = ([] if m.merged else m.active_adapters), 1.0
        for a in adapters:
            if a not in m.lora_A:
                continue
            if m.use_dora.get(a) or getattr(m, "lora_bias", {}).get(a):
                raise NotImplementedError(
                    f"{name}: LoRA adapter {a!r} uses DoRA or a LoRA bias; rdiff merges "
                    "plain LoRA updates only (fuse it into the model first)"
                )
            w += sign * m.get_delta_weight(a).detach().to("cpu").float()
            unfused = unfused or sign > 0
        tensors[f"{name}.weight"] = w.numpy()
        if base.bias is not None:
            tensors[f"{name}.bias"] = _array(base.bias)
    return tensors, unfused


def _controls(down: Any, mid: Any, intra: Any) -> dict:
    """A ControlNet's and a T2I-Adapter's residuals as the core's keyword arguments,
    contiguous (shapes and devices are checked by the core). As diffusers, down residuals
    without a mid one are a T2I-Adapter's (its older convention)."""
    if down is not None and mid is None:
        if intra is not None:
            raise ValueError(
                "down_block_additional_residuals without mid_block_additional_residual, and "
                "down_intrablock_additional_residuals: give a ControlNet's both, a "
                "T2I-Adapter's as down_intrablock_additional_residuals"
            )
        down, intra = None, down
    if mid is not None and down is None:
        raise ValueError(
            "mid_block_additional_residual without down_block_additional_residuals: a "
            "ControlNet gives both"
        )
    kw = {}
    if down is not None:
        _tensor.check_float(mid, "mid_block_additional_residual")
        kw["down_residuals"] = _residual_list(down, "down_block_additional_residuals")
        kw["mid_residual"] = _tensor.contiguous(mid)
    if intra is not None:
        kw["adapter_residuals"] = _residual_list(intra, "down_intrablock_additional_residuals")
    return kw


def _rows(x: Any, what: str) -> list[float] | None:
    """A small conditioning tensor as host float32 values (row-major), or None."""
    if x is None:
        return None
    a = _to_numpy(x)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{what}: expected numbers, got dtype {a.dtype}")
    a = a.astype(np.float32).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: must be finite")
    return a.tolist()


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


def _finite_f32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 (what the model reads), ValueError unless every value is finite there
    (a float64 past 3.4e38 would become inf)."""
    with np.errstate(over="ignore"):
        f = a.astype(np.float32)
    if not np.isfinite(f).all():
        raise ValueError(f"timestep: must be finite in float32, got {a.tolist()}")
    return f


def _timesteps(t: Any) -> list[float]:
    """diffusers' timestep handling: scalars become integers, arrays keep their values."""
    if _tensor.is_torch(t) or isinstance(t, np.ndarray):
        a = _to_numpy(t).reshape(-1)
        if a.size == 0:
            raise ValueError("timestep: empty")
        if a.dtype.kind == "b" or a.dtype.kind not in "iuf":
            raise TypeError(f"timestep: unsupported dtype {a.dtype}")
        return _finite_f32(a).tolist()
    if isinstance(t, (list, tuple)):
        return _timesteps(np.asarray(t))
    if isinstance(t, bool):
        raise TypeError("timestep: expected a number, got bool")
    if isinstance(t, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(t)):
            raise ValueError(f"timestep: must be finite, got {t}")
        return _finite_f32(np.array([float(int(t))])).tolist()
    raise TypeError(f"timestep: expected a number, array or tensor, got {type(t).__name__}")


def _class_labels(labels: Any) -> tuple[list[int] | None, list[float] | None]:
    if labels is None:
        return None, None
    if isinstance(labels, (int, np.integer)):
        return [int(labels)], None
    a = _to_numpy(labels) if not isinstance(labels, (list, tuple)) else np.asarray(labels)
    if a.dtype.kind in "iu":
        idx = [int(v) for v in a.reshape(-1).tolist()]
        # (a uint64 label past int64 would wrap to a negative one)
        big = [v for v in idx if v >= 1 << 63]
        if big:
            raise ValueError(f"class_labels: label {big[0]} is out of range")
        return idx, None
    if a.dtype.kind == "f":
        return None, a.reshape(-1).astype(np.float32).tolist()
    raise TypeError(f"class_labels: unsupported dtype {a.dtype}")
