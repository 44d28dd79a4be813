"""``rdiff.UNet2DConditionModel`` against diffusers' ``UNet2DConditionModel`` (the oracle).

Random configurations of each family — SD 1.x (conv ``proj_in``, one head width), SD 2.x
(``use_linear_projection``, per-block head counts, ``upcast_attention``), SDXL (``text_time``
added embedding, ``transformer_layers_per_block``, no attention in the first block) — plus the
rarer keys (``only_cross_attention``, nested per-resnet transformer depths, ``timestep_cond``,
class embeddings); loading from a diffusers folder (f16 variant, subfolder); the CUDA graph on
the emulated launcher; diffusers' own Stable Diffusion pipelines with rdiff's UNet as
``pipe.unet``; and every bad input the issue lists.
"""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import rdiff
from rdiff import WeightsError

CTX = 12  # context width of the random models


def _family_config(family: str, seed: int) -> dict:
    """A small random configuration of `family`, seeded."""
    r = random.Random(seed)
    levels = r.choice([2, 3])
    groups = r.choice([4, 8])
    chans = [groups * r.choice([2, 4]) * (i + 1) for i in range(levels)]
    cfg = dict(
        sample_size=8,
        in_channels=4,
        out_channels=r.choice([4, 3]),
        block_out_channels=chans,
        layers_per_block=r.choice([1, 2]),
        norm_num_groups=groups,
        cross_attention_dim=CTX,
        flip_sin_to_cos=r.choice([True, False]),
        freq_shift=r.choice([0, 1]),
    )
    if family == "sd1":
        cfg["down_block_types"] = ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"]
        cfg["up_block_types"] = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1)
        cfg["attention_head_dim"] = r.choice([2, 4])
    elif family == "sd2":
        cfg["down_block_types"] = ["CrossAttnDownBlock2D"] * levels
        cfg["up_block_types"] = ["CrossAttnUpBlock2D"] * levels
        cfg["attention_head_dim"] = [r.choice([1, 2, 4]) for _ in range(levels)]
        cfg["use_linear_projection"] = True
        cfg["upcast_attention"] = True
    elif family == "sdxl":
        cfg["down_block_types"] = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (levels - 1)
        cfg["up_block_types"] = ["CrossAttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"]
        cfg["attention_head_dim"] = [2] * levels
        cfg["transformer_layers_per_block"] = [1] + [r.choice([1, 2, 3]) for _ in range(levels - 1)]
        cfg["use_linear_projection"] = True
        cfg["addition_embed_type"] = "text_time"
        cfg["addition_time_embed_dim"] = 8
        cfg["projection_class_embeddings_input_dim"] = 10 + 6 * 8
    return cfg


def _model(cfg: dict, seed: int = 0):
    """diffusers' model with every weight randomised (so no layer starts at zero)."""
    torch.manual_seed(seed)
    m = diffusers.UNet2DConditionModel(**cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _inputs(cfg: dict, b: int = 2, size: int = 8, tokens: int = 5, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    kw = dict(
        sample=torch.randn(b, cfg["in_channels"], size, size, generator=g),
        timestep=torch.tensor(637),
        encoder_hidden_states=torch.randn(b, tokens, CTX, generator=g),
    )
    if cfg.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(b, 10, generator=g),
            "time_ids": torch.tensor([[512.0, 512.0, 0.0, 0.0, 512.0, 512.0]] * b),
        }
    return kw


def _rel(got, want) -> float:
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    return float((got - want).abs().max() / want.abs().max())


def _check(cfg: dict, tol: float = 1e-4, **extra) -> None:
    m = _model(cfg)
    kw = {**_inputs(cfg), **extra}
    with torch.no_grad():
        want = m(**kw).sample
    ours = rdiff.UNet2DConditionModel.from_diffusers(m)
    got = ours(**kw)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == want.dtype
    assert _rel(got, want) <= tol


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_random_configurations_match_diffusers(family, seed):
    _check(_family_config(family, seed))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fused_qkv_projections_load_without_a_warning(family):
    """``fuse_qkv_projections()`` (a documented diffusers speed-up) adds to_qkv / to_kv
    copies of to_q, to_k and to_v: the same model, nothing left unused."""
    cfg = _family_config(family, 1)
    m = _model(cfg)
    m.fuse_qkv_projections()
    kw = _inputs(cfg)
    with torch.no_grad():
        want = m(**kw).sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = rdiff.UNet2DConditionModel.from_diffusers(m)
    assert _rel(ours(**kw), want) <= 1e-4


def test_from_diffusers_keeps_a_half_module_s_math_on_a_device():
    """A float16 (or bfloat16) pipeline's UNet taken onto a device without a compute_dtype
    computes in its own dtype, as diffusers does (float16 tensor cores, not float32 math);
    float32 modules, and any module on the CPU, compute in float32."""
    from rdiff.unet import _module_compute

    cfg = _family_config("sd1", 1)
    m = _model(cfg)
    half = _model(cfg).to(torch.float16)
    assert _module_compute(m, 0) == "float32"
    assert _module_compute(half, 0) == "float16"
    assert _module_compute(_model(cfg).to(torch.bfloat16), -1) == "bfloat16"
    assert _module_compute(half, None) == "float32"
    assert rdiff.UNet2DConditionModel.from_diffusers(half).dtype == "float32"
    emu = rdiff.UNet2DConditionModel._from_diffusers(
        half, -1, compute_dtype=_module_compute(half, -1)
    )
    kw = _inputs(cfg, size=8, tokens=3)
    with torch.no_grad():
        want = m(**kw).sample
    err = _rel(emu(**kw), want)
    assert emu.dtype == "float16" and 1e-5 <= err <= 4e-3, err


def test_only_cross_attention_and_nested_transformer_depths():
    cfg = _family_config("sdxl", 7)
    cfg["only_cross_attention"] = [False, True, True][: len(cfg["block_out_channels"])]
    cfg["mid_block_only_cross_attention"] = True
    levels = len(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    cfg["transformer_layers_per_block"] = [
        [1 + (i + j) % 2 for j in range(lpb)] for i in range(levels)
    ]
    cfg["reverse_transformer_layers_per_block"] = [
        [1 + (i + j) % 3 for j in range(lpb + 1)] for i in range(levels)
    ]
    _check(cfg)


def test_timestep_cond_and_class_embeddings():
    cfg = _family_config("sd1", 3)
    cfg["time_cond_proj_dim"] = 6
    cfg["num_class_embeds"] = 5
    g = torch.Generator().manual_seed(9)
    _check(cfg, timestep_cond=torch.randn(2, 6, generator=g), class_labels=torch.tensor([1, 4]))
    cfg = _family_config("sd2", 4)
    cfg["class_embed_type"] = "projection"
    cfg["projection_class_embeddings_input_dim"] = 7
    _check(cfg, class_labels=torch.randn(2, 7, generator=g))


def test_scalar_and_per_sample_timesteps_and_half_inputs():
    cfg = _family_config("sd1", 1)
    m = _model(cfg)
    ours = rdiff.UNet2DConditionModel.from_diffusers(m)
    kw = _inputs(cfg)
    for t in (500, torch.tensor([10, 900]), torch.tensor(3.5)):
        kw["timestep"] = t
        with torch.no_grad():
            want = m(**kw).sample
        assert _rel(ours(**kw), want) <= 1e-4
    # float16 in, float16 out (computed in float32); numpy in, numpy out.
    half = {k: (v.half() if k != "timestep" else v) for k, v in kw.items()}
    got = ours(**half)
    assert got.dtype == torch.float16
    with torch.no_grad():
        want = m(**{k: (v.float() if k != "timestep" else v) for k, v in half.items()}).sample
    assert _rel(got.float(), want) <= 2e-3
    npkw = {k: (v.numpy() if k != "timestep" else 500) for k, v in kw.items()}
    got = ours(**npkw)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32


def test_from_pretrained_folder_variant_and_subfolder(tmp_path):
    cfg = _family_config("sdxl", 2)
    m = _model(cfg)
    m.half().save_pretrained(tmp_path / "unet", variant="fp16")
    ours = rdiff.UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet", variant="fp16")
    ref = diffusers.UNet2DConditionModel.from_pretrained(
        tmp_path, subfolder="unet", variant="fp16", torch_dtype=torch.float32
    ).eval()
    kw = _inputs(cfg)
    with torch.no_grad():
        want = ref(**kw).sample
    got = ours(**kw)
    assert _rel(got, want) <= 1e-4
    assert ours.config["addition_embed_type"] == "text_time"
    assert ours.cross_attention_dim == CTX
    # The f16 matrices are kept as stored and widened where used: bit-identical to the
    # checkpoint widened to f32 at load, in about half the memory.
    m.float().save_pretrained(tmp_path / "wide")
    wide = rdiff.UNet2DConditionModel.from_pretrained(tmp_path / "wide")
    assert torch.equal(got, wide(**kw))
    assert ours._core.weight_bytes < 0.52 * wide._core.weight_bytes


def test_from_pretrained_sharded_checkpoint(tmp_path):
    # Past diffusers' shard size (10 GB: SDXL in float32) a checkpoint is saved in shards
    # with an index; a small shard size makes one here.
    cfg = _family_config("sd1", 6)
    m = _model(cfg)
    m.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert not (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    ours = rdiff.UNet2DConditionModel.from_pretrained(tmp_path)
    kw = _inputs(cfg)
    with torch.no_grad():
        want = m(**kw).sample
    assert _rel(ours(**kw), want) <= 1e-4
    # A shard the index names but that is missing is a clear error.
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / victim).unlink()
    with pytest.raises(WeightsError, match=victim):
        rdiff.UNet2DConditionModel.from_pretrained(tmp_path)


def test_emulated_cuda_graph_matches_cpu():
    for family in ("sd1", "sdxl"):
        cfg = _family_config(family, 5)
        m = _model(cfg)
        cpu = rdiff.UNet2DConditionModel.from_diffusers(m)
        emu = rdiff.UNet2DConditionModel._from_diffusers(m, -1, max_blocks=4)
        kw = _inputs(cfg, size=8, tokens=3)
        assert emu.device == "emulated"
        assert _rel(emu(**kw), cpu(**kw)) <= 1e-4


def test_emulated_warm_call_reads_timesteps_on_the_device():
    """SD-style: a warm call with a device timestep allocates and uploads nothing (a CUDA graph
    can capture it); timestep_cond moves the projection, and so the timesteps, to the host."""
    cfg = _family_config("sd1", 2)
    cfg["time_cond_proj_dim"] = 6
    m = _model(cfg)
    cpu = rdiff.UNet2DConditionModel.from_diffusers(m)
    emu = rdiff.UNet2DConditionModel._from_diffusers(m, -1, max_blocks=4)
    kw = _inputs(cfg, size=8, tokens=3)
    first = emu(**kw)
    warm = emu._core.device_traffic
    assert torch.equal(emu(**kw), first) and emu._core.device_traffic == warm
    assert _rel(first, cpu(**kw)) <= 1e-4
    cond = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    got = emu(**kw, timestep_cond=cond)
    assert emu._core.device_traffic[1] > warm[1]
    assert _rel(got, cpu(**kw, timestep_cond=cond)) <= 1e-4


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lora_adapters_are_merged_at_their_scales(family):
    """A PEFT LoRA on the diffusers model (what ``pipe.load_lora_weights`` adds) is merged
    into rdiff's weights as ``fuse_lora`` would, at the adapter weights set then."""
    peft = pytest.importorskip("peft")
    cfg = _family_config(family, 3)
    m = _model(cfg)
    kw = _inputs(cfg)
    with torch.no_grad():
        plain = m(**kw).sample
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "ff.net.2", "time_emb_proj"]
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(10 + i)
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        m.add_adapter(lora, adapter_name=name)
    m.set_adapters(["a", "b"], weights=[0.5, 1.5])
    with torch.no_grad():
        want = m(**kw).sample
        half = m(**kw, cross_attention_kwargs={"scale": 0.5}).sample
    assert _rel(want, plain) > 1e-2 and _rel(half, want) > 1e-3
    ours = rdiff.UNet2DConditionModel.from_diffusers(m)
    assert _rel(ours(**kw), want) <= 1e-4
    # A per-call scale of 1 changes nothing; another cannot change merged weights, and the
    # error says where to set it: adapter weights scaled as diffusers scales them per call.
    assert _rel(ours(**kw, cross_attention_kwargs={"scale": 1.0}), want) <= 1e-4
    with pytest.raises(NotImplementedError, match="set_adapters"):
        ours(**kw, cross_attention_kwargs={"scale": 0.5})
    m.set_adapters(["a", "b"], weights=[0.25, 0.75])
    assert _rel(rdiff.UNet2DConditionModel.from_diffusers(m)(**kw), half) <= 1e-4
    m.set_adapters(["a", "b"], weights=[0.5, 1.5])
    m.disable_adapters()
    assert _rel(rdiff.UNet2DConditionModel.from_diffusers(m)(**kw), plain) <= 1e-4
    m.enable_adapters()
    m.fuse_lora()
    fused = rdiff.UNet2DConditionModel.from_diffusers(m)
    assert _rel(fused(**kw), want) <= 1e-4
    # Fused adapters ignore a per-call scale in PEFT's forward: so does rdiff.
    with torch.no_grad():
        stock = m(**kw, cross_attention_kwargs={"scale": 0.5}).sample
    assert _rel(fused(**kw, cross_attention_kwargs={"scale": 0.5}), stock) <= 1e-4
    m.disable_adapters()  # PEFT's forward then unfuses them
    assert _rel(rdiff.UNet2DConditionModel.from_diffusers(m)(**kw), plain) <= 1e-4
    dora = _model(cfg)
    dora.add_adapter(peft.LoraConfig(r=4, target_modules=["to_q"], use_dora=True))
    with pytest.raises(NotImplementedError, match="DoRA"):
        rdiff.UNet2DConditionModel.from_diffusers(dora)


def test_lora_scale_without_a_lora_changes_nothing():
    """A pipeline's ``cross_attention_kwargs={"scale": s}`` on a model without LoRA layers:
    diffusers scales no layer, and rdiff takes the call as it is."""
    cfg = _family_config("sd1", 4)
    m = _model(cfg)
    kw = _inputs(cfg)
    with torch.no_grad():
        want = m(**kw, cross_attention_kwargs={"scale": 0.5}).sample
    ours = rdiff.UNet2DConditionModel.from_diffusers(m)
    assert _rel(ours(**kw, cross_attention_kwargs={"scale": 0.5}), want) <= 1e-4


# --------------------------------------------------------------------------- ControlNet


def _controlnet(unet, seed: int = 7):
    """diffusers' ControlNet for `unet`, every weight randomised (its zero convolutions would
    otherwise give zero residuals)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = diffusers.ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(4, 8), conditioning_channels=3
        ).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def _residuals(net, kw: dict, seed: int = 2):
    """The ControlNet's residuals for the call `kw` (conditioning image at twice the size:
    two conditioning blocks downsample once)."""
    s = kw["sample"]
    image = torch.rand(
        s.shape[0], 3, 2 * s.shape[2], 2 * s.shape[3], generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        down, mid = net(**kw, controlnet_cond=image, return_dict=False)
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_controlnet_residuals_match_diffusers(family):
    cfg = _family_config(family, 3)
    m = _model(cfg)
    kw = _inputs(cfg)
    res = _residuals(_controlnet(m), kw)
    down, mid = res["down_block_additional_residuals"], res["mid_block_additional_residual"]
    ours = rdiff.UNet2DConditionModel.from_diffusers(m)
    with torch.no_grad():
        want = m(**kw, **res).sample
        plain = m(**kw).sample
    assert _rel(want, plain) > 1e-2  # the residuals matter
    assert _rel(ours(**kw, **res), want) <= 1e-4
    # numpy arrays as well as tensors.
    got = ours(
        kw["sample"].numpy(),
        637,
        kw["encoder_hidden_states"].numpy(),
        added_cond_kwargs=kw.get("added_cond_kwargs"),
        down_block_additional_residuals=tuple(r.numpy() for r in down),
        mid_block_additional_residual=mid.numpy(),
    )
    assert _rel(torch.from_numpy(got), want) <= 1e-4
    # Half-precision residuals are read as they are (diffusers promotes the sum to float32).
    half = {
        "down_block_additional_residuals": [r.bfloat16() for r in down],
        "mid_block_additional_residual": mid.half(),
    }
    with torch.no_grad():
        want = m(**kw, **half).sample
    assert _rel(ours(**kw, **half), want) <= 1e-4


def test_emulated_controlnet_matches_cpu():
    cfg = _family_config("sd1", 6)
    m = _model(cfg)
    kw = _inputs(cfg, size=8, tokens=3)
    res = _residuals(_controlnet(m), kw)
    res["mid_block_additional_residual"] = res["mid_block_additional_residual"].half()
    cpu = rdiff.UNet2DConditionModel.from_diffusers(m)
    emu = rdiff.UNet2DConditionModel._from_diffusers(m, -1, max_blocks=4)
    want = cpu(**kw, **res)
    assert _rel(want, cpu(**kw)) > 1e-2
    assert _rel(emu(**kw, **res), want) <= 1e-4


def _adapter_shapes(m, b: int, size: int) -> list[tuple]:
    """Where diffusers' model `m` adds a T2I-Adapter's residuals (diffusers' own forward
    rejects wrong shapes: they do not broadcast): a cross-attention block's before its
    downsampler, another's after it; then the mid block's output."""
    shapes = []
    for blk in m.down_blocks:
        c, halves = blk.resnets[-1].out_channels, blk.downsamplers is not None
        if getattr(blk, "has_cross_attention", False):
            shapes.append((b, c, size, size))
            size //= 2 if halves else 1
        else:
            size //= 2 if halves else 1
            shapes.append((b, c, size, size))
    return [*shapes, (b, c, size, size)]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_t2i_adapter_residuals_match_diffusers(family):
    cfg = _family_config(family, 4)
    m = _model(cfg)
    kw = _inputs(cfg)
    g = torch.Generator().manual_seed(5)
    shapes = _adapter_shapes(m, 2, 8)
    ours = rdiff.UNet2DConditionModel.from_diffusers(m)
    # One per down block (T2I-Adapter), the mid block's too (T2I-Adapter-XL), or fewer.
    for n in (len(shapes) - 1, len(shapes), 1):
        res = [torch.randn(s, generator=g) for s in shapes[:n]]
        with torch.no_grad():
            want = m(**kw, down_intrablock_additional_residuals=list(res)).sample
            plain = m(**kw).sample
        assert _rel(want, plain) > 1e-2
        assert _rel(ours(**kw, down_intrablock_additional_residuals=res), want) <= 1e-4
    # diffusers' older convention: down residuals without a mid one are an adapter's.
    assert _rel(ours(**kw, down_block_additional_residuals=res), want) <= 1e-4
    # With a ControlNet's at once.
    both = _residuals(_controlnet(m), kw)
    res = [torch.randn(s, generator=g) for s in shapes[:-1]]
    with torch.no_grad():
        want = m(**kw, **both, down_intrablock_additional_residuals=list(res)).sample
    assert _rel(ours(**kw, **both, down_intrablock_additional_residuals=res), want) <= 1e-4
    emu = rdiff.UNet2DConditionModel._from_diffusers(m, -1, max_blocks=4)
    assert _rel(emu(**kw, **both, down_intrablock_additional_residuals=res), want) <= 1e-4


def test_bad_controlnet_residuals_are_clear_errors(sdxl_like):
    cfg, ours = sdxl_like
    kw = _inputs(cfg)
    m = _model(cfg)
    res = _residuals(_controlnet(m), kw)
    down, mid = res["down_block_additional_residuals"], res["mid_block_additional_residual"]
    with pytest.raises(ValueError, match=f"{len(down) - 1} given, but this UNet has {len(down)}"):
        ours(**kw, down_block_additional_residuals=down[:-1], mid_block_additional_residual=mid)
    bad = list(down)
    bad[1] = bad[1][:, :-1]
    with pytest.raises(ValueError, match=r"down_block_additional_residuals\[1\]: expected shape"):
        ours(**kw, down_block_additional_residuals=bad, mid_block_additional_residual=mid)
    with pytest.raises(ValueError, match="mid_block_additional_residual: expected shape"):
        ours(**kw, down_block_additional_residuals=down, mid_block_additional_residual=mid[:1])
    # Down residuals alone are a T2I-Adapter's (as in diffusers): one per block, not per skip.
    for key in ("down_block_additional_residuals", "down_intrablock_additional_residuals"):
        with pytest.raises(ValueError, match=f"{len(down)} given, but this UNet takes at most"):
            ours(**kw, **{key: down})
    with pytest.raises(ValueError, match=r"down_intrablock_additional_residuals\[0\]: expected"):
        ours(**kw, down_intrablock_additional_residuals=down[:1])
    with pytest.raises(ValueError, match="give a ControlNet's both"):
        ours(**kw, down_block_additional_residuals=down, down_intrablock_additional_residuals=[])
    with pytest.raises(ValueError, match="a ControlNet gives both"):
        ours(**kw, mid_block_additional_residual=mid)
    with pytest.raises(TypeError, match="expected a tuple of tensors"):
        ours(**kw, down_block_additional_residuals=down[0], mid_block_additional_residual=mid)
    with pytest.raises(TypeError, match=r"down_block_additional_residuals\[0\]: unsupported dtype"):
        ints = [down[0].int(), *down[1:]]
        ours(**kw, down_block_additional_residuals=ints, mid_block_additional_residual=mid)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def sdxl_like():
    cfg = _family_config("sdxl", 0)
    return cfg, rdiff.UNet2DConditionModel.from_diffusers(_model(cfg))


def test_bad_calls_are_clear_errors(sdxl_like):
    cfg, ours = sdxl_like
    kw = _inputs(cfg)
    with pytest.raises(ValueError, match="cross_attention_dim is 12"):
        ours(**{**kw, "encoder_hidden_states": torch.randn(2, 5, 13)})
    with pytest.raises(ValueError, match="batch 1 differs"):
        ours(**{**kw, "encoder_hidden_states": torch.randn(1, 5, CTX)})
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(**{**kw, "encoder_hidden_states": None})
    with pytest.raises(ValueError, match="text_embeds"):
        ours(**{**kw, "added_cond_kwargs": None})
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim"):
        bad = dict(kw["added_cond_kwargs"], text_embeds=torch.randn(2, 11))
        ours(**{**kw, "added_cond_kwargs": bad})
    with pytest.raises(NotImplementedError, match="attention_mask"):
        ours(**kw, attention_mask=torch.ones(2, 5))
    with pytest.raises(NotImplementedError, match=r"\[.ip_adapter_masks.\] not supported"):
        ours(**kw, cross_attention_kwargs={"ip_adapter_masks": None})
    with pytest.raises(ValueError, match="multiples"):
        ours(**{**kw, "sample": torch.randn(2, 4, 6, 6)})
    with pytest.raises(ValueError, match="timestep_cond"):
        ours(**kw, timestep_cond=torch.randn(2, 4))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("attention_type", "gated"),
        ("encoder_hid_dim", 16),
        ("addition_embed_type", "image"),
        ("time_embedding_type", "fourier"),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
        ("class_embeddings_concat", True),
        ("resnet_skip_time_act", True),
        # read past the skip connections (a panic before), NaN everywhere
        ("downsample_padding", 3),
        ("norm_eps", 0.0),
        ("mid_block_scale_factor", -1.0),
    ],
)
def test_unsupported_configuration_keys_are_named(tmp_path, key, value):
    cfg = _family_config("sd1", 0)
    _model(cfg).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=key):
        rdiff.UNet2DConditionModel.from_pretrained(tmp_path)


def test_truncated_and_mislabelled_weights(tmp_path):
    cfg = _family_config("sd1", 0)
    _model(cfg).save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        rdiff.UNet2DConditionModel.from_pretrained(tmp_path / "a")
    # Another model's weights under this config: the first mismatch is named.
    other = dict(cfg, block_out_channels=[c * 2 for c in cfg["block_out_channels"]])
    _model(cfg).save_pretrained(tmp_path / "b")
    _model(other).save_pretrained(tmp_path / "c")
    (tmp_path / "b" / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "c" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    with pytest.raises(WeightsError, match="has shape"):
        rdiff.UNet2DConditionModel.from_pretrained(tmp_path / "b")
    # A UNet2DModel folder is not a UNet2DConditionModel, and the other way round.
    with pytest.raises(ValueError, match="not a UNet2DModel"):
        rdiff.UNet2DModel.from_pretrained(tmp_path / "b")
    with pytest.raises(TypeError, match="not a UNet2DConditionModel"):
        rdiff.UNet2DConditionModel.from_diffusers(
            diffusers.UNet2DModel(
                block_out_channels=(8, 8),
                down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2,
                norm_num_groups=4,
            )
        )


# --------------------------------------------------------------------------- pipelines


def _sd_models():
    torch.manual_seed(0)
    unet = _model(_family_config("sd1", 11) | {"out_channels": 4, "cross_attention_dim": 16}, 3)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()
    return unet, vae


def _images(pipe, **kw) -> np.ndarray:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(
            num_inference_steps=6,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(1),
            output_type="np",
            **kw,
        ).images


def _stock_and_rdiff_images(pipe, **kw) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's images, then those with rdiff's UNet taken from its own (which stays
    in the pipeline)."""
    import rdiff.diffusers as rd

    want = _images(pipe, **kw)
    pipe.unet = rd.UNet2DConditionModel.from_diffusers(pipe.unet)
    return want, _images(pipe, **kw)


def _sd_pipe(cls, unet, vae, scheduler, **parts):
    """diffusers' SD-1.x pipeline `cls` without text encoder, tokenizer or safety checker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **parts,
        )


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_stable_diffusion_pipelines_with_rdiff_unet(img2img):
    pytest.importorskip("transformers")
    import rdiff.diffusers as rd

    unet, vae = _sd_models()
    cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear")
    pipe = _sd_pipe(cls, unet, vae, sched)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 5, 16, generator=g)
    kw = dict(prompt_embeds=emb[:1], negative_prompt_embeds=emb[1:])
    if img2img:
        kw.update(image=torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, strength=0.7)
    else:
        kw.update(height=16, width=16)
    want = _images(pipe, **kw)
    # The whole denoising loop in rdiff: its UNet and its scheduler.
    pipe.unet = rd.UNet2DConditionModel.from_diffusers(unet)
    pipe.scheduler = rd.DPMSolverMultistepScheduler.from_config(sched.config)
    got = _images(pipe, **kw)
    assert np.abs(got - want).max() <= 1e-3


@pytest.mark.parametrize("controlnet", [False, True], ids=["plain", "controlnet"])
def test_stable_diffusion_xl_pipeline_with_rdiff_unet(controlnet):
    pytest.importorskip("transformers")

    cfg = _family_config("sdxl", 1) | {"out_channels": 4, "cross_attention_dim": 16}
    cfg["projection_class_embeddings_input_dim"] = 10 + 6 * 8
    unet = _model(cfg, 4)
    _, vae = _sd_models()
    parts = dict(
        vae=vae,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear"),
    )
    extra = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if controlnet:
            parts["controlnet"] = _controlnet(unet, seed=8)
            pipe = diffusers.StableDiffusionXLControlNetPipeline(**parts)
            g = torch.Generator().manual_seed(3)
            extra["image"] = torch.rand(1, 3, 16, 16, generator=g)
        else:
            pipe = diffusers.StableDiffusionXLPipeline(**parts)
    g = torch.Generator().manual_seed(0)
    kw = dict(
        prompt_embeds=torch.randn(1, 5, 16, generator=g),
        negative_prompt_embeds=torch.randn(1, 5, 16, generator=g),
        pooled_prompt_embeds=torch.randn(1, 10, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, 10, generator=g),
        height=16,
        width=16,
        **extra,
    )
    want, got = _stock_and_rdiff_images(pipe, **kw)
    assert np.abs(got - want).max() <= 1e-3
    if controlnet:  # the control image reaches the result, well above the tolerance
        other = _images(pipe, **{**kw, "image": torch.zeros(1, 3, 16, 16)})
        assert np.abs(other - got).max() > 5e-3


def _t2i_adapter(unet, seed: int = 4):
    """diffusers' full T2I-Adapter for `unet` (control images at twice the latents' size),
    every weight randomised."""
    torch.manual_seed(seed)
    adapter = diffusers.T2IAdapter(
        in_channels=3,
        channels=list(unet.config.block_out_channels),
        num_res_blocks=1,
        downscale_factor=2,
        adapter_type="full_adapter",
    ).eval()
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return adapter


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_control_pipelines_with_rdiff_unet(kind):
    """diffusers' ControlNet and T2I-Adapter pipelines: the control model runs in torch,
    rdiff's UNet takes its residuals."""
    pytest.importorskip("transformers")

    unet, vae = _sd_models()
    if kind == "controlnet":
        cls, sched = diffusers.StableDiffusionControlNetPipeline, diffusers.UniPCMultistepScheduler
        parts = {"controlnet": _controlnet(unet, seed=9)}
    else:
        cls, sched = (
            diffusers.StableDiffusionAdapterPipeline,
            diffusers.EulerAncestralDiscreteScheduler,
        )
        parts = {"adapter": _t2i_adapter(unet)}
    pipe = _sd_pipe(cls, unet, vae, sched(beta_schedule="scaled_linear"), **parts)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 5, 16, generator=g)
    kw = dict(
        prompt_embeds=emb[:1],
        negative_prompt_embeds=emb[1:],
        image=torch.rand(1, 3, 16, 16, generator=g),
        height=16,
        width=16,
    )
    want, got = _stock_and_rdiff_images(pipe, **kw)
    assert np.abs(got - want).max() <= 1e-3
    # The control image reaches the result through the residuals.
    other = _images(pipe, **{**kw, "image": torch.zeros(1, 3, 16, 16)})
    assert np.abs(other - got).max() > 1e-2


def test_lora_pipeline_with_rdiff_unet(tmp_path):
    """A LoRA saved and loaded by diffusers' own ``save_lora_weights`` / ``load_lora_weights``,
    at a ``set_adapters`` weight: rdiff's UNet taken from the pipeline gives its images."""
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict

    unet, vae = _sd_models()
    torch.manual_seed(6)
    lora = peft.LoraConfig(
        r=4,
        lora_alpha=4,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,
    )
    unet.add_adapter(lora)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet)
    )
    unet, _ = _sd_models()  # the same base weights, no LoRA
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear")
    pipe = _sd_pipe(diffusers.StableDiffusionPipeline, unet, vae, sched)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 5, 16, generator=g)
    kw = dict(prompt_embeds=emb[:1], negative_prompt_embeds=emb[1:], height=16, width=16)
    plain = _images(pipe, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(tmp_path, adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.7])
    want, got = _stock_and_rdiff_images(pipe, **kw)
    assert np.abs(want - plain).max() > 1e-2
    assert np.abs(got - want).max() <= 1e-3


# The bad-input table's UNet2DConditionModel rows (tests/bad_input_cases.py, prefix
# "cond_unet."), in process; tests/test_bad_input.py runs them again in subprocesses.
from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
