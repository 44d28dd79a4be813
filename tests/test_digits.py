"""The bundled digits model, ``rdiff sample`` and the digits quality metric."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import rdiff
from rdiff import cli, metrics

FOLDER = cli.bundled_model_dir("digits")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_bundled_folder_is_complete():
    for name in (
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
        "classifier.npz",
        "data.npz",
        "gamma.npz",
        "ems.npz",
    ):
        assert (FOLDER / name).is_file(), name
    cfg = json.loads((FOLDER / "config.json").read_text())
    assert cfg["sample_size"] == 16 and cfg["in_channels"] == 1


@pytest.mark.parametrize(
    "scheduler",
    ["dpmsolver++", "dpmsolver", "sde-dpmsolver++", "unipc", "dpmsolver-v3", "ddim", "ddpm"],
)
def test_sample_png_deterministic(tmp_path, scheduler, capsys):
    outs = []
    for i in range(2):
        out = tmp_path / f"g{i}.png"
        argv = ["sample", "--model", "bundled:digits", "--scheduler", scheduler]
        argv += ["--steps", "4", "--n", "6", "--batch-size", "4", "--quiet"]
        assert cli.main([*argv, "--seed", "3", "--out", str(out)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    # 6 digits → a 3x2 grid of 16*4 px tiles with 2 px padding
    assert _png_size(tmp_path / "g0.png") == (3 * 66 + 2, 2 * 66 + 2)
    text = capsys.readouterr().out
    assert "NFE 4" in text and "ms/step" in text
    other = tmp_path / "other.png"
    cli.main([*argv, "--seed", "4", "--out", str(other)])
    assert other.read_bytes() != outs[0]


def test_sample_save_npz(tmp_path):
    npz = tmp_path / "s.npz"
    argv = ["sample", "--steps", "3", "--n", "5", "--seed", "1", "--quiet", "--out", ""]
    assert cli.main([*argv, "--save-npz", str(npz)]) == 0
    z = np.load(npz)
    assert z["samples"].shape == (5, 1, 16, 16) and z["samples"].dtype == np.float32
    assert z["uint8"].shape == (5, 16, 16, 1) and z["uint8"].dtype == np.uint8
    assert int(z["nfe"]) == 3 and int(z["seed"]) == 1 and str(z["scheduler"]) == "dpmsolver++"
    assert np.array_equal(z["uint8"], cli.to_uint8(z["samples"]))
    # same samples as the library call the CLI makes
    unet = rdiff.UNet2DModel.from_pretrained(FOLDER)
    sched = cli.make_scheduler("dpmsolver++", FOLDER, None)
    x, nfe = cli.sample_images(unet, sched, 5, 3, 1, 256, progress=False)
    assert nfe == 3 and np.array_equal(x, z["samples"])
    # without the extension numpy adds it; the message names the file written
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([*argv, "--save-npz", str(tmp_path / "bare")]) == 0
    assert f"wrote {tmp_path / 'bare.npz'}" in out.getvalue()
    assert np.array_equal(np.load(tmp_path / "bare.npz")["samples"], x)


@pytest.mark.parametrize("name", ["DDPMScheduler", "EulerAncestralDiscreteScheduler"])
def test_a_numpy_generator_draws_the_same_noise_for_torch_tensors(name):
    """The CLI's loop on CUDA keeps its numpy Generator: torch samples get the numpy stream."""
    torch = pytest.importorskip("torch")
    import rdiff.diffusers as rdd

    outs = []
    for wrap in (np.asarray, torch.from_numpy):
        s = getattr(rdd, name)()
        s.set_timesteps(10)
        rng = np.random.default_rng(1)
        x = wrap(np.random.default_rng(0).standard_normal((2, 1, 8, 8), dtype=np.float32))
        for t in s.timesteps[:4]:
            eps = wrap(np.tanh(np.asarray(x)))
            x = s.step(eps, t, x, generator=rng).prev_sample
        outs.append(np.asarray(x))
    assert not np.array_equal(outs[0], np.zeros_like(outs[0]))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_sample_compute_dtype(tmp_path):
    """--compute-dtype bfloat16 samples the model in bf16: the library call's images, close
    to float32's but not equal to them."""
    argv = ["sample", "--steps", "4", "--n", "6", "--seed", "2", "--quiet", "--out", ""]
    got = {}
    for dt in ("float32", "bfloat16"):
        npz = tmp_path / f"{dt}.npz"
        assert cli.main([*argv, "--compute-dtype", dt, "--save-npz", str(npz)]) == 0
        got[dt] = np.load(npz)["samples"]
    unet = rdiff.UNet2DModel.from_pretrained(FOLDER, compute_dtype="bfloat16")
    sched = cli.make_scheduler("dpmsolver++", FOLDER, None)
    x, _ = cli.sample_images(unet, sched, 6, 4, 2, 256, progress=False)
    np.testing.assert_array_equal(x, got["bfloat16"])
    f32, bf16 = got["float32"], got["bfloat16"]
    rel = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
    assert 0 < rel < 5e-2, rel
    # float16 math is CUDA's only: a one-line error on the CPU, not another dtype's images
    with pytest.raises(SystemExit, match="float16' runs on CUDA devices only"):
        cli.main([*argv, "--compute-dtype", "float16"])
    with pytest.raises(SystemExit):
        cli.main([*argv, "--compute-dtype", "half"])


def test_analytic_schedulers_run(tmp_path):
    for name in ("analytic-ddpm", "analytic-ddim"):
        npz = tmp_path / f"{name}.npz"
        argv = ["sample", "--scheduler", name, "--steps", "5", "--n", "3", "--quiet"]
        assert cli.main([*argv, "--out", "", "--save-npz", str(npz)]) == 0
        assert np.isfinite(np.load(npz)["samples"]).all()


def test_sample_errors(tmp_path):
    if not rdiff.backends()["cuda"]["available"]:
        with pytest.raises(SystemExit, match="CUDA is unavailable") as e:
            cli.main(["sample", "--device", "cuda", "--n", "1", "--out", ""])
        assert isinstance(e.value.__cause__, rdiff.CudaUnavailableError)
    with pytest.raises(SystemExit, match="no bundled model"):
        cli.main(["sample", "--model", "bundled:nope", "--out", ""])
    with pytest.raises(SystemExit, match="not a directory"):
        cli.main(["sample", "--model", str(tmp_path / "missing"), "--out", ""])
    with pytest.raises(SystemExit, match="--order"):
        cli.main(["sample", "--scheduler", "ddim", "--order", "2", "--out", ""])


def test_ddpm_variance_option(tmp_path):
    """--variance fixed_large is diffusers' DDPMScheduler(variance_type="fixed_large")."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    npz = {}
    for v in ("fixed_small", "fixed_large"):
        npz[v] = tmp_path / f"{v}.npz"
        argv = ["sample", "--scheduler", "ddpm", "--variance", v, "--steps", "5", "--n", "3"]
        assert cli.main([*argv, "--quiet", "--out", "", "--save-npz", str(npz[v])]) == 0
    small, large = (np.load(npz[v])["samples"] for v in ("fixed_small", "fixed_large"))
    default = tmp_path / "default.npz"
    argv = ["sample", "--scheduler", "ddpm", "--steps", "5", "--n", "3", "--quiet", "--out", ""]
    assert cli.main([*argv, "--save-npz", str(default)]) == 0
    assert np.array_equal(np.load(default)["samples"], small)
    assert not np.allclose(small, large, atol=1e-2)
    sched = cli.make_scheduler("ddpm", FOLDER, None, variance="fixed_large")
    ref = diffusers.DDPMScheduler.from_pretrained(FOLDER, variance_type="fixed_large")
    sched.set_timesteps(5)
    ref.set_timesteps(5)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for t in ref.timesteps:
        want = ref.step(eps, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        got = sched.step(eps, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit, match="--variance"):
        cli.main(["sample", "--scheduler", "ddim", "--variance", "fixed_large", "--out", ""])


def test_info_still_works(capsys):
    assert cli.main(["info"]) == 0
    assert "rdiff" in capsys.readouterr().out


def test_bundled_unet_matches_diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UNet2DModel.from_pretrained(FOLDER).eval()
    ours = rdiff.UNet2DModel.from_pretrained(FOLDER)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
    t = np.array([0, 10, 500, 999], dtype=np.int64)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
    got = ours(x, t)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel <= 1e-4, rel


def test_upsample_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(metrics.upsample_digits(x), want, atol=1e-6)


def test_real_digits_and_classifier():
    x, y = metrics.load_real_digits(with_labels=True)
    assert x.shape == (1797, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert (metrics.classify_digits(x) == y).mean() > 0.97


def test_metric_floor_and_noise():
    real = metrics.load_real_digits()
    floor = metrics.noise_floor()
    assert 0 < floor["half_vs_all"] < floor["halves"] < 10
    # real vs real is at the floor, the full set is (numerically) zero
    assert abs(metrics.frechet_digits_distance(real)) < 1e-6
    perm = np.random.default_rng(1).permutation(len(real))
    half = metrics.frechet_digits_distance(real[perm[:900]])
    assert half < 3 * floor["halves"]
    # pure noise and blank images are far from it
    noise = np.random.default_rng(0).uniform(-1, 1, (1000, 16, 16))
    assert metrics.frechet_digits_distance(noise) > 50 * floor["halves"]
    assert metrics.frechet_digits_distance(np.full((100, 1, 16, 16), -1.0)) > 10 * floor["halves"]
    # the FD of a set with itself is zero, and it is symmetric
    f = metrics.digit_features(real[:500])
    g = metrics.digit_features(real[500:1000])
    m1, c1, m2, c2 = f.mean(0), np.cov(f, rowvar=False), g.mean(0), np.cov(g, rowvar=False)
    assert abs(metrics.frechet_distance(m1, c1, m1, c1)) < 1e-6
    assert metrics.frechet_distance(m1, c1, m2, c2) == pytest.approx(
        metrics.frechet_distance(m2, c2, m1, c1), rel=1e-6
    )
    with pytest.raises(ValueError):
        metrics.frechet_digits_distance(np.zeros((4, 3, 16, 16)))


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)


def test_dpmsolver_v3_options(tmp_path):
    """--skip-type and --ems for dpmsolver-v3; a missing table or a misplaced option is a
    one-line error."""
    npz = tmp_path / "v3.npz"
    argv = ["sample", "--scheduler", "dpmsolver-v3", "--steps", "5", "--n", "3", "--quiet"]
    argv += ["--out", ""]
    assert cli.main([*argv, "--skip-type", "time_quadratic", "--save-npz", str(npz)]) == 0
    assert np.isfinite(np.load(npz)["samples"]).all()
    with pytest.raises(SystemExit, match="needs the model's EMS table"):
        cli.main([*argv, "--ems", str(tmp_path / "missing.npz")])
    with pytest.raises(SystemExit, match="--skip-type applies to dpmsolver-v3"):
        cli.main(["sample", "--scheduler", "ddim", "--skip-type", "logSNR", "--quiet"])
