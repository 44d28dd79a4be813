"""The CUDA UNet (kernels/gemm.cu, unet_conv.cu, unet_ops.cu, unet_attention.cu and
src/cuda/unet) against diffusers' UNet2DModel, run through the emulated launcher on CPU
buffers (a CPU GEMM standing in for the GEMM kernel); per-kernel checks against the CPU ops
are in src/cuda/unet/tests.rs."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_unet import CIFAR10, CLASS_SCALE_SHIFT, FOURIER, RESNET_SAMPLERS, make, rel_err, run_ref

import rdiff


def inputs(cfg: dict, batch: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
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
    return x, t, labels


@pytest.mark.parametrize(
    ("cfg", "batch"),
    [
        (CLASS_SCALE_SHIFT, 1),
        (CLASS_SCALE_SHIFT, 3),
        (FOURIER, 1),
        (FOURIER, 3),
        (RESNET_SAMPLERS, 2),
    ],
    ids=["class-scale-shift-1", "class-scale-shift-3", "fourier-1", "fourier-3", "resnet-2"],
)
def test_emulated_parity_float32(cfg, batch, tmp_path):
    model = make(cfg, seed=batch)
    model.save_pretrained(tmp_path)
    unet = rdiff.UNet2DModel._emulated(tmp_path)
    assert unet.device == "emulated"
    x, t, labels = inputs(cfg, batch)
    ours = unet(x, t, class_labels=labels)
    assert ours.dtype == torch.float32 and ours.shape == (batch, cfg["out_channels"], *x.shape[2:])
    err = rel_err(ours, run_ref(model, x, t, labels))
    assert err <= 1e-4, err


@pytest.mark.parametrize(
    ("cfg", "sample_dtype"),
    [(CLASS_SCALE_SHIFT, torch.float16), (FOURIER, torch.bfloat16)],
    ids=["class-scale-shift", "fourier"],
)
def test_emulated_bf16_weights_and_low_precision_samples(cfg, sample_dtype, tmp_path):
    model = make(cfg, seed=5)
    x, t, labels = inputs(cfg, 3, seed=4)
    low = copy.deepcopy(model).to(torch.bfloat16)
    low.save_pretrained(tmp_path)
    unet = rdiff.UNet2DModel._emulated(tmp_path)
    ours = unet(x, t, class_labels=labels)
    # The same rounded weights computed in f32 by diffusers: the kernels' own error.
    assert rel_err(ours, run_ref(low.float(), x, t, labels)) <= 1e-4
    # Against the f32 model: the rounding of the weights alone (measured 0.3-1.6 %; the CPU
    # test allows the same 3 %).
    assert rel_err(ours, run_ref(model, x, t, labels)) <= 3e-2
    # f16 / bf16 samples: converted by the layout kernels, returned in their dtype, equal
    # to the CPU model's result on the same rounded input up to the output's rounding.
    out = unet(x.to(sample_dtype), t, class_labels=labels)
    assert out.dtype == sample_dtype
    cpu = rdiff.UNet2DModel.from_pretrained(tmp_path)
    ref = cpu(x.to(sample_dtype).float(), t, class_labels=labels)
    assert rel_err(out.float(), ref) <= 1e-2


def test_emulated_matches_cpu_and_arena_stops_growing(tmp_path):
    model = make(CLASS_SCALE_SHIFT)
    model.save_pretrained(tmp_path)
    emu = rdiff.UNet2DModel._emulated(tmp_path, max_blocks=3)
    cpu = rdiff.UNet2DModel.from_pretrained(tmp_path)
    # The emulated device has memory of its own, as a GPU: the matrices go up at load and
    # leave the host, which keeps the biases' and norms' vectors; the calls read the copies.
    host, on_device = emu._core.weight_bytes, emu._core.device_weight_bytes
    assert host <= 0.01 * cpu._core.weight_bytes
    assert 0.98 * cpu._core.weight_bytes <= on_device < cpu._core.weight_bytes
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 4), dtype=np.float32)
    labels = np.array([1, 2])
    a = emu(x, 10, class_labels=labels)
    assert isinstance(a, np.ndarray)
    assert on_device < emu._core.device_weight_bytes <= cpu._core.weight_bytes
    grown = emu._core.arena_bytes
    assert grown > 0
    b = emu(x, 10, class_labels=labels)
    assert emu._core.arena_bytes == grown
    np.testing.assert_array_equal(a, b)
    ref = cpu(x, 10, class_labels=labels)
    assert float(np.abs(a - ref).max() / np.abs(ref).max()) <= 1e-5
    # The same errors as the CPU model, raised before anything runs.
    with pytest.raises(ValueError, match="input channels"):
        emu(np.zeros((1, 3, 16, 16), np.float32), 1, class_labels=[1])
    with pytest.raises(ValueError, match="out of range"):
        emu(x, 10, class_labels=np.array([1, 99]))
    with pytest.raises(ValueError, match="multiples"):
        emu(np.zeros((1, 4, 6, 8), np.float32), 1, class_labels=[1])


SMALL_FOURIER = {**FOURIER, "sample_size": 8}
SMALL_POSITIONAL = {**SMALL_FOURIER, "time_embedding_type": "positional"}


@pytest.mark.parametrize("cfg", [SMALL_FOURIER, SMALL_POSITIONAL], ids=["fourier", "positional"])
def test_device_timesteps_and_a_warm_call_without_traffic(cfg, tmp_path):
    """A timestep tensor on the model's device is read there: the same bits as host values,
    and a warm call allocates nothing and copies nothing from the host (the conditions for
    capturing it in a CUDA graph; scripts/gpu_check.py captures one on a GPU)."""
    model = make(cfg)
    model.save_pretrained(tmp_path)
    unet = rdiff.UNet2DModel._emulated(tmp_path, max_blocks=2)
    assert unet._core.timesteps_on_device
    x, t, _ = inputs(cfg, 3)
    # the weight matrices, uploaded at load: one allocation and one copy each
    loaded = unet._core.device_traffic
    assert loaded[0] == loaded[1] > 0
    on_host = unet(x, t.tolist())  # a list: read on the host, uploaded per call
    first = unet(x, t)
    warm = unet._core.device_traffic
    # the arena's buffers, the biases and norms, the host call's timestep copy
    assert warm[0] > loaded[0] and warm[1] > loaded[1]
    second = unet(x, t)
    one_for_all = unet(x, t[1:2].double())  # one value for the batch, any real dtype
    assert unet._core.device_traffic == warm
    assert torch.equal(first, on_host) and torch.equal(second, on_host)
    assert torch.equal(one_for_all, unet(x, [float(t[1])] * 3))
    # host values cost one copy per call (two where the output is divided by them)
    before = unet._core.device_traffic
    unet(x, t.tolist())
    after = unet._core.device_traffic
    assert after[0] == before[0]
    assert after[1] - before[1] == (2 if cfg is SMALL_FOURIER else 1)
    with pytest.raises(TypeError, match="timestep"):
        unet(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="timestep: empty"):
        unet(x, torch.zeros(0))
    with pytest.raises(ValueError, match="timestep"):
        unet(x, torch.zeros(2))
    # the CPU model reads the same tensor on the host
    cpu = rdiff.UNet2DModel.from_pretrained(tmp_path)
    assert not cpu._core.timesteps_on_device and cpu._core.device_traffic is None
    assert rel_err(cpu(x, t), first) <= 1e-5


def test_emulated_cifar10_parity_and_time(tmp_path):
    model = make(CIFAR10)
    model.save_pretrained(tmp_path)
    unet = rdiff.UNet2DModel._emulated(tmp_path)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 32, 32, generator=g)
    t = torch.tensor([421])
    start = time.perf_counter()
    ours = unet(x, t)
    elapsed = time.perf_counter() - start
    print(f"emulated CIFAR-10 UNet, batch 1: {elapsed:.1f} s")
    assert rel_err(ours, run_ref(model, x, t)) <= 1e-4


def test_cuda_device_without_a_gpu(tmp_path):
    model = make(FOURIER)
    model.save_pretrained(tmp_path)
    cuda = rdiff.backends()["cuda"]
    if not cuda["available"]:
        with pytest.raises(rdiff.CudaUnavailableError) as e:
            rdiff.UNet2DModel.from_pretrained(tmp_path, device="cuda")
        assert cuda["reason"] in str(e.value)
        with pytest.raises(rdiff.CudaUnavailableError):
            rdiff.UNet2DModel.from_diffusers(model, device="cuda:0")
    else:  # a GPU: the model loads and refuses CPU tensors
        unet = rdiff.UNet2DModel.from_pretrained(tmp_path, device="cuda")
        assert unet.device == "cuda:0"
        with pytest.raises(ValueError, match="must be on"):
            unet(torch.zeros(1, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match="device"):
        rdiff.UNet2DModel.from_pretrained(tmp_path, device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        rdiff.UNet2DModel.from_pretrained(tmp_path, device="cuda", dtype="float16")


# (b, heads, dh, tq, tk): heads padded to 16 dims (8, 40, 72), the tensor-core kernels' widest
# (64, 128, 160), ragged query blocks and key tiles, cross-attention (77, 3, 7 keys), and one
# head past them (176).
ATTENTION_SHAPES = [
    (2, 3, 8, 15, 7),
    (1, 2, 40, 70, 77),
    (2, 1, 64, 64, 64),
    (1, 1, 128, 17, 65),
    (1, 2, 72, 5, 3),
    (1, 2, 160, 20, 7),
    (1, 1, 176, 9, 5),
]
# relative L2 bands against f64 attention: bf16 about 8× f16 and TF32 (10 mantissa bits each),
# all far above f32
ATTENTION_BANDS = {
    "float32": (0.0, 1e-5),
    "tfloat32": (1e-4, 1e-3),
    "bfloat16": (1e-3, 8e-3),
    "float16": (1e-4, 1e-3),
}


def attention_error(shape, compute: str, device: str = "cpu") -> float:
    """rdiff's device attention (``_unet_attention``: the path a model's call takes, here
    on the emulated launcher) against torch's ``scaled_dot_product_attention`` in f64."""
    b, heads, dh, tq, tk = shape
    g = torch.Generator().manual_seed(tq * tk + dh)
    q, k, v = (torch.randn(b, heads, t, dh, generator=g) for t in (tq, tk, tk))
    want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())

    def ours(x):  # [b][heads][t][dh] -> [heads·dh][b·t]
        return x.permute(1, 3, 0, 2).reshape(heads * dh, -1).contiguous().to(device)

    out = torch.full((heads * dh, b * tq), float("nan"), device=device)
    rdiff._rdiff._unet_attention(ours(q), ours(k), ours(v), out, b, heads, compute)
    got = out.reshape(heads, dh, b, tq).permute(2, 0, 3, 1).double().cpu()
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("compute", list(ATTENTION_BANDS))
def test_attention_paths_match_torch(compute):
    """Each math's attention path against torch's: bf16, f16 and TF32 on the fused tensor-core
    kernels (whose products the emulated warp forms from the fragments as PTX lays them out),
    f32 on the fused f32 kernel and, past its size, on the tensor cores with each operand split
    in two (3xTF32, heads up to 64). A misplaced fragment element would be an O(1) error; the
    lower bounds show the operands' rounding happened, f32's upper bound that the split did."""
    lo, hi = ATTENTION_BANDS[compute]
    for shape in ATTENTION_SHAPES:
        err = attention_error(shape, compute)
        # heads past 160 keep the f32 kernel at these sizes, in any math
        low = lo if shape[2] <= 160 else 0.0
        assert low <= err <= hi, (shape, err)


def test_attention_bad_input():
    x = torch.zeros(8, 6)
    with pytest.raises(ValueError, match="do not make b=4 samples"):
        rdiff._rdiff._unet_attention(x, x, x, x, 4, 2, "float32")
    with pytest.raises(ValueError, match="do not make"):
        rdiff._rdiff._unet_attention(x, torch.zeros(4, 6), x, x, 2, 2, "float32")
    with pytest.raises(TypeError, match="float32"):
        rdiff._rdiff._unet_attention(x.double(), x, x, x, 2, 2, "float32")
    with pytest.raises(ValueError, match="compute_dtype"):
        rdiff._rdiff._unet_attention(x, x, x, x, 2, 2, "fp8")
    empty = torch.zeros(0, 6)  # heads of no width (any head count divides 0 rows)
    with pytest.raises(ValueError, match="do not make"):
        rdiff._rdiff._unet_attention(empty, empty, empty, empty, 2, 2**62, "float32")
