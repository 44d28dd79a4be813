"""``compute_dtype="bfloat16"``: rdiff's UNets with bf16 weight matrices and bf16 products
(and ``"float16"``, a device's only: f16 tensor-core math, emulated here).

The bf16 model against the float32 one of the same (seeded random) weights and against
diffusers under torch's bf16 autocast; loading from a folder and from memory; bits across
calls, thread counts and the two kernels (AMX tiles and the portable one, ``RDIFF_NO_AMX``);
bf16 and f16 GEMMs on a device (emulated); the refusals; half-precision inputs.

A note on the tolerances. Every convolution rounds its input to bf16, so a difference of one
f32 ulp upstream now and then flips a rounding (a 2⁻⁸ step) downstream, and over a dozen
layers those flips cascade until two computations that differ only in their f32 summation
order differ by about as much as bf16 differs from f32. Measured on the ``CLASS_SCALE_SHIFT``
model (torch, the same bf16 rounding points): computed in f64 vs in f32, 5.0e-3 relative L2
apart; every conv input perturbed by 1e-7 relative, 4.7e-3 apart. So whole-model comparisons
of bf16 outputs that are not bit-identical are bounded at the bf16 error's scale; the kernels'
agreement on one product is tested in Rust (``src/cpu/bf16/tests.rs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_cond_unet import _family_config, _inputs, _model
from test_unet import CLASS_SCALE_SHIFT, FOURIER, make

import rdiff

BF16 = "bfloat16"


def rel_l2(ours, ref) -> float:
    a = torch.as_tensor(np.asarray(ours) if isinstance(ours, np.ndarray) else ours).double()
    b = torch.as_tensor(np.asarray(ref) if isinstance(ref, np.ndarray) else ref).double()
    return float((a - b).norm() / b.norm())


def _args(cfg: dict, batch: int = 2) -> tuple:
    """Seeded (sample, timestep, class_labels) for a UNet2DModel config, as numpy arrays."""
    rng = np.random.default_rng(5)
    size = cfg["sample_size"]
    x = rng.standard_normal((batch, cfg["in_channels"], size, size)).astype(np.float32)
    if cfg.get("time_embedding_type") == "fourier":
        t = np.array([0.05, 40.0, 1.7][:batch], dtype=np.float32)
    else:
        t = np.array([10, 700, 421][:batch])
    labels = np.array([1, 7, 3][:batch]) if cfg.get("num_class_embeds") else None
    return x, t, labels


def _torch_args(cfg: dict, batch: int = 2) -> tuple:
    x, t, labels = _args(cfg, batch)
    return (
        torch.from_numpy(x),
        torch.from_numpy(t),
        None if labels is None else torch.from_numpy(labels),
    )


@pytest.fixture(scope="module")
def css(tmp_path_factory):
    """The class-conditional scale-shift model: diffusers', its folder, rdiff's f32 and bf16."""
    model = make(CLASS_SCALE_SHIFT)
    path = tmp_path_factory.mktemp("css")
    model.save_pretrained(path)
    f32 = rdiff.UNet2DModel.from_diffusers(model)
    bf16 = rdiff.UNet2DModel.from_diffusers(model, compute_dtype=BF16)
    return model, path, f32, bf16


# -- accuracy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [CLASS_SCALE_SHIFT, FOURIER], ids=["class-scale-shift", "fourier"])
def test_bf16_error_is_small_and_of_torch_autocasts_order(cfg):
    model = make(cfg)
    f32 = rdiff.UNet2DModel.from_diffusers(model)
    bf16 = rdiff.UNet2DModel.from_diffusers(model, compute_dtype=BF16)
    assert (f32.dtype, bf16.dtype) == ("float32", BF16)
    x, t, labels = _torch_args(cfg)
    ours32, ours16 = f32(x, t, labels), bf16(x, t, labels)
    assert ours16.dtype == torch.float32 and ours16.shape == ours32.shape
    assert torch.isfinite(ours16).all()
    with torch.no_grad():
        ref = model(x, t, class_labels=labels).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x, t, class_labels=labels).sample.float()
    assert rel_l2(ours32, ref) <= 1e-5  # (measured 1.0e-6)
    err = rel_l2(ours16, ours32)
    torch_err = rel_l2(auto, ref)
    # Measured: bf16 vs f32 6.7e-3 (class-scale-shift) and 6.2e-3 (fourier); torch's bf16
    # autocast vs f32 1.05e-2 and 1.09e-2 (diffusers cast to bf16: 1.3e-2 and 4.6e-2).
    assert 1e-3 <= err <= 2e-2, err
    assert err <= 3 * torch_err, (err, torch_err)


@pytest.mark.parametrize("family,seed", [("sd2", 0), ("sdxl", 1)])
def test_condition_model_bf16(family, seed):
    cfg = _family_config(family, seed)
    model = _model(cfg)
    kw = _inputs(cfg)
    f32 = rdiff.UNet2DConditionModel.from_diffusers(model)
    bf16 = rdiff.UNet2DConditionModel.from_diffusers(model, compute_dtype=torch.bfloat16)
    assert bf16.dtype == BF16
    ours32, ours16 = f32(**kw), bf16(**kw)
    assert torch.isfinite(ours16).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(**kw).sample.float()
    # rdiff's f32 is diffusers' f32 to 2e-6 (test_cond_unet.py): the reference for both.
    err, torch_err = rel_l2(ours16, ours32), rel_l2(auto, ours32)
    # Measured: sd2/0 1.6e-2 (autocast 2.8e-2), sdxl/1 8.4e-3 (autocast 1.3e-2).
    assert 1e-3 <= err <= 4e-2, err
    assert err <= 3 * torch_err, (err, torch_err)
    # Half-precision context and sample: the output follows the sample's dtype.
    half = dict(
        kw,
        sample=kw["sample"].half(),
        encoder_hidden_states=kw["encoder_hidden_states"].half(),
    )
    out = bf16(**half)
    assert out.dtype == torch.float16 and out.shape == ours16.shape
    assert rel_l2(out.float(), ours16) <= 4e-2  # (measured 1.5e-2 and 8.4e-3: the cascade)


def test_bf16_attention_from_1024_keys():
    """A 32×32 latent: the first level's self-attention has 1,024 keys, so its products run in
    bf16 too (src/cpu/attention.rs); the error stays of bf16's and torch autocast's order."""
    cfg = _family_config("sd1", 0)
    model = _model(cfg)
    kw = _inputs(cfg, b=1, size=32, tokens=4)
    f32 = rdiff.UNet2DConditionModel.from_diffusers(model)
    bf16 = rdiff.UNet2DConditionModel.from_diffusers(model, compute_dtype=BF16)
    ours32, ours16 = f32(**kw), bf16(**kw)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(**kw).sample.float()
    err, torch_err = rel_l2(ours16, ours32), rel_l2(auto, ours32)
    assert 1e-3 <= err <= 4e-2, err
    assert err <= 3 * torch_err, (err, torch_err)
    assert torch.equal(bf16(**kw), ours16)


# -- loading -----------------------------------------------------------------------------------


def test_from_pretrained_equals_from_diffusers(css):
    _, path, f32, bf16 = css
    x, t, labels = _args(CLASS_SCALE_SHIFT)
    want = bf16(x, t, labels)
    for dt in (BF16, torch.bfloat16):
        loaded = rdiff.UNet2DModel.from_pretrained(path, compute_dtype=dt)
        assert loaded.dtype == BF16 and loaded.device == "cpu"
        got = loaded(x, t, labels)
        assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    wide = rdiff.UNet2DModel.from_pretrained(path)
    assert wide.dtype == "float32"
    # The matrices in bf16, in tiles padded to 16 rows × 32 columns (the model's channels are
    # multiples of 32, so little padding): measured 0.504 of f32's bytes.
    ratio = loaded._core.weight_bytes / wide._core.weight_bytes
    assert 0.45 <= ratio <= 0.55, ratio
    assert bf16._core.weight_bytes == loaded._core.weight_bytes
    assert f32._core.weight_bytes == wide._core.weight_bytes
    # from_pretrained's f32 is bit for bit from_diffusers' f32, and not the bf16 output.
    assert wide(x, t, labels).tobytes() == f32(x, t, labels).tobytes()
    assert not np.array_equal(wide(x, t, labels), want)


# -- bits --------------------------------------------------------------------------------------

# (numpy only: no torch to import, a fraction of a second a run)
_WORKER = """
import sys
import numpy as np
import rdiff
m = rdiff.UNet2DModel.from_pretrained(sys.argv[1], compute_dtype="bfloat16")
with np.load(sys.argv[2]) as z:
    out = m(z["x"], z["t"], z["labels"])
np.savez(sys.argv[3], out=out, kernel=np.array(rdiff.backends()["cpu"]["bf16_kernel"]))
"""


def _run(tmp: Path, folder: Path, tag: str, **env) -> tuple[np.ndarray, str]:
    """The bf16 model at ``folder`` on ``_args(CLASS_SCALE_SHIFT)`` in a fresh process with
    ``env`` added: its output and its bf16 kernel."""
    pkg = Path(rdiff.__file__).resolve().parents[1]
    path = os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")])
    full = {k: v for k, v in os.environ.items() if k not in ("RDIFF_NO_AMX", "RAYON_NUM_THREADS")}
    full.update(env, PYTHONPATH=path, OMP_NUM_THREADS="1")
    x, t, labels = _args(CLASS_SCALE_SHIFT)
    inputs, npz = tmp / f"{tag}-in.npz", tmp / f"{tag}.npz"
    np.savez(inputs, x=x, t=t, labels=labels)
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, str(folder), str(inputs), str(npz)],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(npz) as z:
        return z["out"], str(z["kernel"])


def test_bit_identical_across_calls_and_thread_counts(css, tmp_path):
    _, path, _, bf16 = css
    x, t, labels = _args(CLASS_SCALE_SHIFT)
    here = bf16(x, t, labels)
    assert bf16(x, t, labels).tobytes() == here.tobytes()
    kernel = rdiff.backends()["cpu"]["bf16_kernel"]
    one, k1 = _run(tmp_path, path, "t1", RAYON_NUM_THREADS="1")
    two, k2 = _run(tmp_path, path, "t2", RAYON_NUM_THREADS="2")
    if "RDIFF_NO_AMX" not in os.environ:
        assert k1 == k2 == kernel
        assert one.tobytes() == here.tobytes()
    assert one.tobytes() == two.tobytes()
    # A sample's result depends on its batch companions at the bf16 level: the f32 parts
    # (norms, attention) differ by 7.5e-7 between batch sizes, which the rounding cascade
    # turns into 4.1e-3 (measured).
    alone = bf16(x[1:2], t[1:2], labels[1:2])
    assert rel_l2(alone, here[1:2]) <= 2e-2


def test_portable_kernel(css, tmp_path):
    _, path, f32, bf16 = css
    x, t, labels = _args(CLASS_SCALE_SHIFT)
    here = bf16(x, t, labels)
    kernel = rdiff.backends()["cpu"]["bf16_kernel"]
    assert kernel in ("amx", "portable")
    portable, name = _run(tmp_path, path, "p2", RDIFF_NO_AMX="1", RAYON_NUM_THREADS="2")
    again, _ = _run(tmp_path, path, "p1", RDIFF_NO_AMX="1", RAYON_NUM_THREADS="1")
    assert name == "portable"
    assert portable.tobytes() == again.tobytes()
    if kernel == "portable":
        assert portable.tobytes() == here.tobytes()
        return
    # AMX here: the same rounded operands summed in another order, so (the module docstring)
    # equal only to the bf16 error's scale. Measured: AMX vs portable 4.6e-3; vs f32, AMX
    # 6.7e-3 and portable 6.9e-3.
    ref = f32(x, t, labels)
    err_amx, err_portable = rel_l2(here, ref), rel_l2(portable, ref)
    assert 1e-3 <= err_portable <= 2e-2, err_portable
    assert err_portable <= 2 * err_amx and err_amx <= 2 * err_portable
    assert rel_l2(portable, here) <= 1.5 * max(err_amx, err_portable)


# -- bad input and inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["fp16", "bf16", "float64", torch.float64, None])
def test_unknown_compute_dtype(css, bad):
    model, path, _, _ = css
    with pytest.raises(ValueError, match="compute_dtype"):
        rdiff.UNet2DModel.from_pretrained(path, compute_dtype=bad)
    if bad is None:  # from_diffusers' default: the module's math on a device, else float32
        assert rdiff.UNet2DModel.from_diffusers(model, compute_dtype=bad).dtype == "float32"
        return
    with pytest.raises(ValueError, match="compute_dtype"):
        rdiff.UNet2DModel.from_diffusers(model, compute_dtype=bad)


def test_bf16_on_a_device_rounds_every_gemm(css):
    """On a device (here the emulated launcher, whose CPU GEMM stands in for cuBLAS's
    ``CUBLAS_COMPUTE_32F_FAST_16BF``) every GEMM rounds its operands to bf16 and sums in f32:
    the error of bf16 math, not f32's, and of torch autocast's order; the weights stay f32."""
    model, path, f32, _ = css
    x, t, labels = _torch_args(CLASS_SCALE_SHIFT)
    emu16 = rdiff.UNet2DModel._load(path, -1, compute_dtype=BF16)
    assert emu16.dtype == BF16
    ref = f32(x, t, labels)
    got = emu16(x, t, labels)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(x, t, class_labels=labels).sample.float()
    err, torch_err = rel_l2(got, ref), rel_l2(auto, ref)
    # measured 6.7e-3 (torch's bf16 autocast 1.1e-2); the SD-1-style model below 7.7e-3
    assert 1e-3 <= err <= 2e-2, err
    assert err <= 3 * torch_err, (err, torch_err)
    cfg = _family_config("sd1", 1)
    cond = _model(cfg)
    kw = _inputs(cfg, size=8, tokens=3)
    want = rdiff.UNet2DConditionModel.from_diffusers(cond)(**kw)
    ours = rdiff.UNet2DConditionModel._from_diffusers(cond, -1, compute_dtype=BF16)(**kw)
    assert 1e-3 <= rel_l2(ours, want) <= 3e-2, rel_l2(ours, want)


def test_f16_on_a_device_rounds_every_gemm(css):
    """``compute_dtype="float16"`` on a device (the emulated launcher standing in for cuBLAS):
    every GEMM multiplies f16 operands (the weight matrices kept in f16 on the device, the
    activations rounded to f16) and sums in f32. f16 keeps three more mantissa bits than
    bf16, so its error is about 8× smaller: a GEMM rounding to bf16 instead (or not rounding)
    would leave the band."""
    model, path, f32, _ = css
    x, t, labels = _torch_args(CLASS_SCALE_SHIFT)
    emu16 = rdiff.UNet2DModel._load(path, -1, compute_dtype="float16")
    emu_bf16 = rdiff.UNet2DModel._load(path, -1, compute_dtype=BF16)
    emu32 = rdiff.UNet2DModel._load(path, -1)
    # the matrices go to the device at load, in 16 bits, and leave the host (which keeps
    # the biases' and norms' vectors: 0.6% of the weights here)
    assert emu16.dtype == "float16" and f32._core.device_weight_bytes is None
    assert emu16._core.weight_bytes <= 0.01 * f32._core.weight_bytes
    assert 0.45 * f32._core.weight_bytes <= emu16._core.device_weight_bytes
    ref = f32(x, t, labels)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        auto = model(x, t, class_labels=labels).sample.float()
    err, torch_err = rel_l2(emu16(x, t, labels), ref), rel_l2(auto, ref)
    # measured 8.4e-4 (torch's f16 autocast 1.4e-3; bf16 math 6.7e-3)
    assert 1e-4 <= err <= 3e-3, err
    assert err <= 3 * torch_err, (err, torch_err)
    assert err <= rel_l2(emu_bf16(x, t, labels), ref) / 4
    assert rel_l2(emu32(x, t, labels), ref) <= 1e-5
    # on the device, the matrices in 16 bits (the norms' and biases' vectors stay f32)
    full = emu32._core.device_weight_bytes
    assert full >= f32._core.weight_bytes * 0.99
    for half in (emu16, emu_bf16):
        assert 0.45 * full <= half._core.device_weight_bytes <= 0.52 * full
    cfg = _family_config("sd1", 1)
    cond = _model(cfg)
    kw = _inputs(cfg, size=8, tokens=3)
    want = rdiff.UNet2DConditionModel.from_diffusers(cond)(**kw)
    ours = rdiff.UNet2DConditionModel._from_diffusers(cond, -1, compute_dtype=torch.float16)(**kw)
    # measured 1.0e-3
    assert 1e-4 <= rel_l2(ours, want) <= 4e-3, rel_l2(ours, want)


def test_tf32_on_a_device_rounds_every_gemm(css):
    """``compute_dtype="tfloat32"`` on a device (the emulated launcher standing in for cuBLAS's
    ``CUBLAS_COMPUTE_32F_FAST_TF32``): float32 weights, every GEMM's operands rounded to TF32
    (f16's 10 mantissa bits) and summed in f32. Its error is f16 math's order, far above
    float32's and far below bf16's; unrounded operands would fall out of the band."""
    _, path, f32, _ = css
    x, t, labels = _torch_args(CLASS_SCALE_SHIFT)
    tf32 = rdiff.UNet2DModel._load(path, -1, compute_dtype="tfloat32")
    assert tf32.dtype == "tfloat32"
    ref = f32(x, t, labels)
    err = rel_l2(tf32(x, t, labels), ref)
    emu16 = rdiff.UNet2DModel._load(path, -1, compute_dtype="float16")
    # measured 8.3e-4, its attention on the TF32 kernel (f16 math 8.4e-4, bf16 math 6.7e-3,
    # float32 1.1e-6)
    assert 1e-4 <= err <= 3e-3, err
    assert err <= 2 * rel_l2(emu16(x, t, labels), ref)
    # float32 weights on the device: tf32 is a rounding of the operands, not a storage type
    emu32 = rdiff.UNet2DModel._load(path, -1)
    emu32(x, t, labels)
    assert tf32._core.device_weight_bytes == emu32._core.device_weight_bytes


def test_f16_and_tf32_math_are_refused_on_the_cpu(css):
    """The CPU has no float16 or tf32 product kernel: a clear error, not float32 or bf16 in
    disguise."""
    model, path, _, _ = css
    cond = _model(_family_config("sd1", 1))
    for name, load in (
        ("float16", lambda: rdiff.UNet2DModel.from_pretrained(path, compute_dtype="float16")),
        ("float16", lambda: rdiff.UNet2DModel.from_diffusers(model, compute_dtype=torch.float16)),
        (
            "float16",
            lambda: rdiff.UNet2DConditionModel.from_diffusers(cond, compute_dtype="float16"),
        ),
        ("tfloat32", lambda: rdiff.UNet2DModel.from_pretrained(path, compute_dtype="tfloat32")),
        (
            "tfloat32",
            lambda: rdiff.UNet2DConditionModel.from_diffusers(cond, compute_dtype="tfloat32"),
        ),
    ):
        with pytest.raises(ValueError, match=f"compute_dtype='{name}' runs on CUDA devices only"):
            load()
    with pytest.raises(ValueError, match="'float32', 'bfloat16', 'float16' or 'tfloat32'"):
        rdiff.UNet2DModel.from_pretrained(path, compute_dtype="float64")


def test_half_inputs(css):
    _, _, _, bf16 = css
    x, t, labels = _torch_args(CLASS_SCALE_SHIFT)
    for dt in (torch.float16, torch.bfloat16):
        out = bf16(x.to(dt), t, labels)
        assert out.dtype == dt and out.shape == (2, 6, 16, 16)
        # widened to f32 on the way in, rounded to dt on the way out
        assert torch.equal(out, bf16(x.to(dt).float(), t, labels).to(dt))
    x16 = x.half().numpy()
    out = bf16(x16, t.numpy(), labels.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float16
    assert np.array_equal(out, bf16(x.half(), t, labels).numpy())
