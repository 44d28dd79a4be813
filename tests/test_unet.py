"""rdiff.UNet2DModel against diffusers' UNet2DModel on the same (seeded random) weights."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import rdiff

CIFAR10 = dict(  # google/ddpm-cifar10-32's config.json (35.7 M parameters)
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
    act_fn="silu",
    center_input_sample=False,
    mid_block_scale_factor=1,
    time_embedding_type="positional",
)

CLASS_SCALE_SHIFT = dict(  # class-conditional, scale_shift, multi-head attention at two levels
    sample_size=16,
    in_channels=4,
    out_channels=6,
    block_out_channels=(32, 64, 96),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=16,
    norm_num_groups=8,
    resnet_time_scale_shift="scale_shift",
    num_class_embeds=10,
    downsample_padding=1,
    norm_eps=1e-5,
)

FOURIER = dict(  # score-SDE style: Fourier features of log σ, output divided by σ
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    time_embedding_type="fourier",
    attention_head_dim=8,
    norm_num_groups=16,
    mid_block_scale_factor=1.4142135,
    center_input_sample=True,
)

RESNET_SAMPLERS = dict(  # resnet up/down samplers, timestep class embedding, no mid attention
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 32, 64),
    layers_per_block=1,
    down_block_types=("AttnDownBlock2D", "ResnetDownsampleBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "ResnetUpsampleBlock2D", "AttnUpBlock2D"),
    downsample_type="resnet",
    upsample_type="resnet",
    class_embed_type="timestep",
    add_attention=False,
    attention_head_dim=None,
    norm_num_groups=8,
    time_embedding_dim=96,
)


def make(config: dict, seed: int = 0) -> diffusers.UNet2DModel:
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    # Make the deep layers matter: perturb every parameter (norm affines, biases, zeros).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def rel_err(ours, ref) -> float:
    a = torch.as_tensor(np.asarray(ours) if isinstance(ours, np.ndarray) else ours).double()
    b = ref.double()
    return float((a - b).abs().max() / b.abs().max())


def run_ref(model, x, t, labels=None):
    with torch.no_grad():
        return model(x, t, class_labels=labels).sample


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    model = make(CIFAR10)
    path = tmp_path_factory.mktemp("cifar")
    model.save_pretrained(path)
    return model, path


def test_cifar10_parity(cifar):
    model, path = cifar
    unet = rdiff.UNet2DModel.from_pretrained(path)
    assert unet.in_channels == 3 and unet.config.block_out_channels == [128, 256, 256, 256]
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(1, 3, 32, 32, generator=g)
    assert rel_err(unet(x1, 999), run_ref(model, x1, 999)) <= 1e-4
    x3 = torch.randn(3, 3, 32, 32, generator=g)
    t3 = torch.tensor([10, 500, 999])
    ours = unet(x3, t3)
    assert isinstance(ours, torch.Tensor) and ours.shape == (3, 3, 32, 32)
    err = rel_err(ours, run_ref(model, x3, t3))
    assert err <= 1e-4, err
    # Each sample its own embedding: sample 1 alone at t=500 gives the same row.
    alone = unet(x3[1:2], torch.tensor(500))
    assert rel_err(alone, ours[1:2]) <= 1e-5
    # numpy in, numpy out; diffusers-style output object.
    out_np = unet(x3.numpy(), t3.numpy())
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, ours.numpy(), rtol=0, atol=1e-6)
    assert torch.equal(unet(x3, t3, return_dict=True).sample, ours)


def test_winograd_and_im2col_convolutions_agree(cifar, monkeypatch):
    """The 3×3 convolutions from 64 channels run by Winograd's F(2×2, 3×3) (cpu/winograd.rs);
    `RDIFF_NO_WINOGRAD` switches back to im2col. Both match torch; they round differently, so
    the outputs differ in their last bits, which shows the switch changes the path."""
    model, path = cifar
    unet = rdiff.UNet2DModel.from_pretrained(path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([20, 700])
    ref = run_ref(model, x, t)
    winograd = unet(x, t)
    monkeypatch.setenv("RDIFF_NO_WINOGRAD", "1")
    im2col = unet(x, t)
    assert rel_err(winograd, ref) <= 1e-4 and rel_err(im2col, ref) <= 1e-4
    assert not torch.equal(winograd, im2col)
    assert rel_err(winograd, im2col) <= 2e-5


def test_cifar10_low_precision_weights_and_inputs(cifar, tmp_path):
    model, _ = cifar
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([3, 700])
    ref = run_ref(model, x, t)
    for dt in (torch.bfloat16, torch.float16):
        low = copy.deepcopy(model).to(dt)
        low.save_pretrained(tmp_path / str(dt))
        unet = rdiff.UNet2DModel.from_pretrained(tmp_path / str(dt))
        ours = unet(x, t)
        # Converted exactly: equal to diffusers computing in f32 on the same rounded weights.
        assert rel_err(ours, run_ref(low.float(), x, t)) <= 1e-4
        # The matrices stay in the checkpoint's dtype and are widened where they are used:
        # bit-identical to the checkpoint widened to f32 at load, in about half the memory.
        low.float().save_pretrained(tmp_path / "widened")
        wide = rdiff.UNet2DModel.from_pretrained(tmp_path / "widened")
        assert torch.equal(ours, wide(x, t))
        assert unet._core.weight_bytes < 0.51 * wide._core.weight_bytes
        # And the rounding of the weights alone moves the output by about a percent.
        assert rel_err(ours, ref) <= 3e-2
    # bf16 / f16 inputs: computed in f32, returned in the input dtype.
    unet = rdiff.UNet2DModel.from_diffusers(model)
    for dt in (torch.bfloat16, torch.float16):
        out = unet(x.to(dt), t)
        assert out.dtype == dt
        assert rel_err(out.float(), unet(x.to(dt).float(), t)) <= 1e-2


@pytest.mark.parametrize(
    "cfg",
    [CLASS_SCALE_SHIFT, FOURIER, RESNET_SAMPLERS],
    ids=["class-scale-shift", "fourier", "resnet-samplers"],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_small_configs_parity(cfg, batch, tmp_path):
    model = make(cfg, seed=batch)
    model.save_pretrained(tmp_path)
    unet = rdiff.UNet2DModel.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(3)
    size = cfg["sample_size"]
    x = torch.randn(batch, cfg["in_channels"], size, size, generator=g)
    if cfg.get("time_embedding_type") == "fourier":
        t = torch.tensor([0.05, 1.7, 40.0][:batch])
    else:
        t = torch.tensor([0, 421, 999][:batch])
    labels = None
    if cfg.get("num_class_embeds"):
        labels = torch.tensor([7, 0, 3][:batch])
    elif cfg.get("class_embed_type") == "timestep":
        labels = torch.tensor([5.0, 250.0, 800.0][:batch])
    err = rel_err(unet(x, t, class_labels=labels), run_ref(model, x, t, labels))
    assert err <= 1e-4, err
    # from an in-memory model too, and on a non-square image
    unet2 = rdiff.UNet2DModel.from_diffusers(model)
    x2 = torch.randn(batch, cfg["in_channels"], size, 2 * size, generator=g)
    err = rel_err(unet2(x2, t, class_labels=labels), run_ref(model, x2, t, labels))
    assert err <= 1e-4, err


def test_arena_stops_growing(tmp_path):
    model = make(CLASS_SCALE_SHIFT)
    unet = rdiff.UNet2DModel.from_diffusers(model)
    x = np.random.default_rng(0).standard_normal((2, 4, 16, 16), dtype=np.float32)
    unet(x, 10, class_labels=np.array([1, 2]))
    unet(x, 10, class_labels=np.array([1, 2]))
    grown = unet._core.arena_bytes
    unet(x, 10, class_labels=np.array([1, 2]))
    assert unet._core.arena_bytes == grown


# ---------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("small")
    make(FOURIER).save_pretrained(path)
    return path


def copy_dir(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_and_corrupt_weights(small_dir, tmp_path):
    d = copy_dir(small_dir, tmp_path / "trunc")
    f = d / "diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(rdiff.WeightsError, match="safetensors"):
        rdiff.UNet2DModel.from_pretrained(d)
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(rdiff.WeightsError, match="safetensors"):
        rdiff.UNet2DModel.from_pretrained(d)
    f.write_bytes(b"")
    with pytest.raises(rdiff.WeightsError):
        rdiff.UNet2DModel.from_pretrained(d)
    f.unlink()
    with pytest.raises(rdiff.WeightsError, match=r"no diffusion_pytorch_model\.safetensors"):
        rdiff.UNet2DModel.from_pretrained(d)


def test_unknown_block_and_bad_config(small_dir, tmp_path):
    d = copy_dir(small_dir, tmp_path / "cfg")
    cfg = json.loads((d / "config.json").read_text())
    cfg["down_block_types"] = ["AttnDownBlock2D", "FancyDownBlock2D"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="FancyDownBlock2D"):
        rdiff.UNet2DModel.from_pretrained(d)
    cfg["down_block_types"] = ["AttnDownBlock2D", "DownBlock2D"]
    cfg["resnet_time_scale_shift"] = "spatial"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="resnet_time_scale_shift"):
        rdiff.UNet2DModel.from_pretrained(d)
    cfg["resnet_time_scale_shift"] = "default"
    # scalars that would read past a skip connection (found by fuzzing: a panic) or give
    # NaN everywhere
    for key, value, match in [
        ("downsample_padding", 2, "downsample_padding: 2"),
        ("norm_eps", -1.0, "norm_eps: must be a positive finite number"),
        ("mid_block_scale_factor", 0.0, "mid_block_scale_factor: must be a positive"),
    ]:
        bad = {**cfg, key: value}
        (d / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            rdiff.UNet2DModel.from_pretrained(d)
    (d / "config.json").write_text("{")
    with pytest.raises(ValueError, match="JSON"):
        rdiff.UNet2DModel.from_pretrained(d)


def test_wrong_shape_and_missing_weight(small_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = copy_dir(small_dir, tmp_path / "shape")
    f = d / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    name = "down_blocks.0.resnets.0.conv1.weight"
    sd[name] = sd[name][:, :, :2, :].contiguous()
    save_file(sd, f)
    with pytest.raises(rdiff.WeightsError, match=name.replace(".", r"\.")):
        rdiff.UNet2DModel.from_pretrained(d)
    del sd[name]
    save_file(sd, f)
    with pytest.raises(rdiff.WeightsError, match=r"missing weight.*conv1"):
        rdiff.UNet2DModel.from_pretrained(d)


def test_weights_the_config_does_not_describe_are_named(small_dir, tmp_path):
    """A checkpoint holding more than its config describes (another model's weights, a
    config with fewer layers) loads with a warning that names what was ignored, as
    diffusers warns of unexpected keys; a matching one loads without a word."""
    import warnings

    from safetensors.torch import load_file, save_file

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rdiff.UNet2DModel.from_pretrained(small_dir)
    d = copy_dir(small_dir, tmp_path / "extra")
    f = d / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["down_blocks.0.resnets.7.conv1.weight"] = torch.zeros(3)
    sd["encoder_hid_proj.weight"] = torch.zeros(2, 2)
    save_file(sd, f)
    with pytest.warns(UserWarning, match=r"2 tensor\(s\) in .*ignored") as caught:
        rdiff.UNet2DModel.from_pretrained(d)
    assert "down_blocks.0.resnets.7.conv1.weight, encoder_hid_proj.weight" in str(caught[0].message)
    assert caught[0].filename == __file__  # attributed to the caller's line
    model = make(FOURIER)
    model.register_buffer("stray", torch.zeros(4))
    with pytest.warns(UserWarning, match=r"1 tensor\(s\) in the UNet2DModel's state dict"):
        rdiff.UNet2DModel.from_diffusers(model)


def test_bad_inputs(small_dir):
    unet = rdiff.UNet2DModel.from_pretrained(small_dir)
    with pytest.raises(ValueError, match="input channels"):
        unet(torch.randn(1, 4, 16, 16), torch.tensor(1.0))
    with pytest.raises(ValueError, match="multiples of 2"):
        unet(torch.randn(1, 3, 15, 16), torch.tensor(1.0))
    with pytest.raises(ValueError, match="timestep"):
        unet(torch.randn(2, 3, 16, 16), torch.tensor([1.0, 2.0, 3.0]))
    # finite in float64 or as a Python int, infinite in the float32 the model reads (found by
    # fuzzing: NaN outputs)
    for t in (np.array([1.7e308]), torch.tensor([1e300], dtype=torch.float64), 10**40):
        with pytest.raises(ValueError, match="timestep: must be finite in float32"):
            unet(torch.randn(1, 3, 16, 16), t)
    assert torch.isfinite(unet(torch.randn(1, 3, 16, 16), 10**30)).all()
    with pytest.raises(ValueError, match="class"):
        unet(torch.randn(1, 3, 16, 16), torch.tensor(1.0), class_labels=torch.tensor([1]))
    with pytest.raises(TypeError):
        unet(torch.zeros(1, 3, 16, 16, dtype=torch.int32), 1)
    cond = rdiff.UNet2DModel.from_diffusers(make(CLASS_SCALE_SHIFT))
    with pytest.raises(ValueError, match="class_labels"):
        cond(torch.randn(1, 4, 16, 16), 1)
    with pytest.raises(ValueError, match="out of range"):
        cond(torch.randn(1, 4, 16, 16), 1, class_labels=torch.tensor([10]))
    # a uint64 label past int64 is out of range too, not wrapped to -1
    with pytest.raises(ValueError, match="label 18446744073709551615 is out of range"):
        cond(torch.randn(2, 4, 16, 16), 1, class_labels=np.array([0, 2**64 - 1], np.uint64))


_TOO_LARGE = """
import resource, numpy as np, rdiff, rdiff.cli
# A bounded address space: the 32 GiB activation is refused whatever the kernel's overcommit
# policy (without the limit it could be granted lazily and meet the OOM killer instead).
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
unet = rdiff.UNet2DModel.from_pretrained(rdiff.cli.bundled_model_dir("digits"))
try:
    unet(np.zeros((64, 1, 2048, 2048), np.float32), 10)
except MemoryError as e:
    print("MemoryError:", e)
small = unet(np.zeros((2, 1, 16, 16), np.float32), 10)
print("after:", small.shape, bool(np.isfinite(small).all()))
"""


def test_an_activation_too_large_for_memory_is_a_memory_error():
    # 64 digits at 2,048×2,048 need a 32 GiB activation: a MemoryError naming the remedy, not
    # an abort of the process, and the model still runs at a sane size afterwards.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _TOO_LARGE], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MemoryError: cannot allocate 32.00 GiB" in out.stdout, out.stdout
    assert "smaller batch" in out.stdout
    assert "after: (2, 1, 16, 16) True" in out.stdout


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
