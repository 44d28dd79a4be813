"""rdiff.LCMScheduler against diffusers' LCMScheduler."""

from __future__ import annotations

import itertools
import random
import warnings

import numpy as np
import pytest

import rdiff

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from conftest import GaussianEps, assert_bit_equal, on_cpu_and_emulated

import rdiff.diffusers as rdd

DS = diffusers.LCMScheduler
RS = rdd.LCMScheduler


def run_pair(cfg, n, st=None, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8)):
    """Both stepped from diffusers' trajectory, noise from equally seeded generators; the
    largest error relative to 1e-5 of the step's conditioning (x₀ = (x − √(1−ᾱ)·ε)/√ᾱ
    multiplies the inputs by up to 1/√ᾱ), 4 ulps of it for half dtypes."""
    d, r = DS(**cfg), RS(**cfg)
    st = dict(st or {})
    for s in (d, r):
        if "timesteps" in st:
            s.set_timesteps(**st)
        else:
            s.set_timesteps(n, **st)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    assert r.num_inference_steps == d.num_inference_steps
    eps = GaussianEps(d.alphas_cumprod, cfg.get("prediction_type", "epsilon"))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        mo = eps(x, int(t))
        if not torch.isfinite(mo).all():
            # GaussianEps' x₀ and v divide by √ᾱ = 0 at a zero-SNR start; the data's mean
            # (0) is the exact x₀ there, and v = −x₀
            mo = torch.zeros_like(x)
        od = d.step(mo, t, x, generator=torch.Generator().manual_seed(i))
        ac = float(d.alphas_cumprod[int(t)])
        if not torch.isfinite(od.denoised).all():
            # zero terminal SNR with ε prediction, unclipped: x₀ = (x − ε)/0 is not finite in
            # diffusers; rdiff says why instead (clipped, both give ±clip_sample_range)
            assert ac == 0.0 and cfg.get("prediction_type", "epsilon") == "epsilon"
            with pytest.raises(ValueError, match=r"ᾱ = 0 .*v_prediction"):
                r.step(mo, t, x, generator=torch.Generator().manual_seed(i))
            break
        orr = r.step(mo, t, x, generator=torch.Generator().manual_seed(i))
        assert orr.prev_sample.dtype == od.prev_sample.dtype
        for out in (orr.prev_sample, orr.denoised):  # (a NaN would compare as no error)
            assert torch.isfinite(out).all()
        scale = max(1.0, float(x.abs().max()), float(mo.abs().max())) / max(ac, 1e-4) ** 0.5
        tol = (4 * float(torch.finfo(dtype).eps) if dtype != torch.float32 else 1e-5) * scale
        for a, b in ((od.prev_sample, orr.prev_sample), (od.denoised, orr.denoised)):
            worst = max(worst, float((a.float() - b.float()).abs().max()) / tol)
        x = od.prev_sample
    return worst


BETAS = [
    {},
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    dict(beta_schedule="squaredcos_cap_v2"),
]
BOUNDS = [{}, dict(clip_sample=True, clip_sample_range=1.5), dict(thresholding=True)]
CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        range(len(BOUNDS)),
        [True, False],  # set_alpha_to_one
        range(len(BETAS)),
        [False, True],  # rescale_betas_zero_snr
        [1, 2, 4, 8],
        [50, 25],  # original_inference_steps
        [1.0, 0.6],  # strength
        [10.0, 1.0],  # timestep_scaling
    )
)


def _configs(k, seed):
    out = []
    for pred, bd, one, b, zsnr, n, orig, strength, scaling in random.Random(seed).sample(
        CONFIGS, k
    ):
        cfg = dict(
            prediction_type=pred,
            set_alpha_to_one=one,
            rescale_betas_zero_snr=zsnr,
            original_inference_steps=orig,
            timestep_scaling=scaling,
            **BOUNDS[bd],
            **BETAS[b],
        )
        if bd == 2:
            cfg["sample_max_value"] = 2.0
        out.append((cfg, n, {"strength": strength}))
    return out


@pytest.mark.parametrize("cfg, n, st", _configs(120, seed=23))
def test_matches_diffusers_over_the_config_matrix(cfg, n, st):
    assert run_pair(cfg, n, st) <= 1.0


@pytest.mark.parametrize(
    "timesteps, strength",
    [([999, 759, 499, 259], 1.0), ([999, 759, 499, 259, 19], 0.5), ([800, 600, 10], 1.0)],
)
def test_custom_timesteps_and_strength(timesteps, strength):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_pair({}, None, {"timesteps": timesteps, "strength": strength}) <= 1.0
    # timesteps off the distillation schedule (strength × 50 of every 20th) are pointed out,
    # as diffusers logs them
    origin = {20 * j - 1 for j in range(1, int(50 * strength) + 1)}
    assert any("not on the distillation schedule" in str(w.message) for w in caught) == bool(
        set(timesteps[1:]) - origin
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_dtype_rounding(dtype):
    assert run_pair({}, 4, dtype=dtype) <= 1.0


def test_scalings_and_errors():
    d, r = DS(), RS()
    for t in (999, 500, 19, 0):
        cd, co = d.get_scalings_for_boundary_condition_discrete(t)
        rs, ro = r.get_scalings_for_boundary_condition_discrete(t)
        assert rs == pytest.approx(float(cd), rel=1e-12) and ro == pytest.approx(float(co))
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        r.step(x, 999, x)
    with pytest.raises(ValueError, match="original_inference_steps"):
        r.set_timesteps(60)
    with pytest.raises(ValueError, match="descending"):
        r.set_timesteps(timesteps=[999, 500, 600])
    with pytest.raises(ValueError, match="exactly one"):
        r.set_timesteps(4, timesteps=[999, 500])
    r.set_timesteps(2)
    for t in r.timesteps:
        r.step(x, t, x)
    with pytest.raises(ValueError, match="steps are done"):
        r.step(x, r.timesteps[-1], x)


def test_numpy_in_numpy_out():
    s = rdiff.LCMScheduler()
    s.set_timesteps(4)
    assert isinstance(s.timesteps, np.ndarray) and s.timesteps.dtype == np.int64
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    for t in s.timesteps:
        out = s.step(0.5 * x, t, x, generator=np.random.default_rng(int(t)))
        x = out.prev_sample
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    # the last step returns the denoised sample itself
    np.testing.assert_array_equal(out.prev_sample, out.denoised)


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dt", list(DTYPES))
def test_whole_loop_emulated_equals_cpu(dt):
    def loop():
        s = RS(thresholding=True, sample_max_value=2.0)
        s.set_timesteps(4)
        model = GaussianEps(s.alphas_cumprod)
        x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0))
        x = x.to(DTYPES[dt])
        gen = torch.Generator().manual_seed(5)
        outs = []
        for t in s.timesteps:
            out = s.step(model(x, int(t)), t, x, generator=gen)
            x = out.prev_sample
            outs.append(out.denoised)
        return torch.stack([x, *outs])

    cpu, emu = on_cpu_and_emulated(loop)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's samples and denoised estimates")


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
