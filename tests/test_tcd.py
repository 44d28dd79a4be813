"""rdiff.TCDScheduler against diffusers' TCDScheduler."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from conftest import GaussianEps, assert_bit_equal, on_cpu_and_emulated

import rdiff.diffusers as rdd

DS = diffusers.TCDScheduler
RS = rdd.TCDScheduler


def run_pair(cfg, n, st=None, eta=0.3, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8)):
    """Both stepped from diffusers' trajectory, noise from equally seeded generators; the
    largest error relative to 1e-5 of the step's conditioning (x₀ and ε divide by √ᾱ_t or
    √(1 − ᾱ_t)), 4 ulps of it for half dtypes."""
    d, r = DS(**cfg), RS(**cfg)
    st = dict(st or {})
    for s in (d, r):
        s.set_timesteps(n, **st)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    eps = GaussianEps(d.alphas_cumprod, cfg.get("prediction_type", "epsilon"))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        mo = eps(x, int(t))
        if not torch.isfinite(mo).all():
            # GaussianEps' x₀ and v divide by √ᾱ = 0 at a zero-SNR start; the data's mean
            # (0) is the exact x₀ there, and v = −x₀
            mo = torch.zeros_like(x)
        od = d.step(mo, t, x, eta=eta, generator=torch.Generator().manual_seed(i))
        ac = float(d.alphas_cumprod[int(t)])
        if not torch.isfinite(od.pred_noised_sample).all():
            # zero terminal SNR with ε prediction: x₀ = (x − ε)/0 is not finite in diffusers;
            # rdiff says why instead
            assert ac == 0.0 and cfg.get("prediction_type", "epsilon") == "epsilon"
            with pytest.raises(ValueError, match=r"ᾱ = 0 .*v_prediction"):
                r.step(mo, t, x, eta=eta, generator=torch.Generator().manual_seed(i))
            break
        orr = r.step(mo, t, x, eta=eta, generator=torch.Generator().manual_seed(i))
        assert orr.prev_sample.dtype == od.prev_sample.dtype
        for out in (orr.prev_sample, orr.pred_noised_sample):  # (NaN would compare as 0)
            assert torch.isfinite(out).all()
        cond = 1 / max(min(ac, 1 - ac), 1e-30) ** 0.5
        scale = max(1.0, float(x.abs().max()), float(mo.abs().max())) * max(1.0, cond)
        tol = (4 * float(torch.finfo(dtype).eps) if dtype != torch.float32 else 1e-5) * scale
        for a, b in (
            (od.prev_sample, orr.prev_sample),
            (od.pred_noised_sample, orr.pred_noised_sample),
        ):
            worst = max(worst, float((a.float() - b.float()).abs().max()) / tol)
        x = od.prev_sample
    return worst


BETAS = [
    {},
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    dict(beta_schedule="squaredcos_cap_v2"),
]
CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        [0.0, 0.3, 1.0],  # eta
        [True, False],  # set_alpha_to_one
        range(len(BETAS)),
        [False, True],  # rescale_betas_zero_snr
        [1, 2, 4, 8],
        [None, 50, 1000],  # original_inference_steps passed to set_timesteps
        [1.0, 0.6],  # strength
    )
)


@pytest.mark.parametrize(
    "pred, eta, one, b, zsnr, n, orig, strength", random.Random(29).sample(CONFIGS, 110)
)
def test_matches_diffusers_over_the_config_matrix(pred, eta, one, b, zsnr, n, orig, strength):
    cfg = dict(prediction_type=pred, set_alpha_to_one=one, rescale_betas_zero_snr=zsnr, **BETAS[b])
    st = {"strength": strength}
    if orig is not None:
        st["original_inference_steps"] = orig
    assert run_pair(cfg, n, st, eta=eta) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_dtype_rounding(dtype):
    assert run_pair({}, 4, dtype=dtype) <= 1.0


def test_eta_out_of_range():
    r = RS()
    r.set_timesteps(4)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="eta"):
        r.step(x, r.timesteps[0], x, eta=1.5)


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dt", list(DTYPES))
def test_whole_loop_emulated_equals_cpu(dt):
    def loop():
        s = RS(prediction_type="v_prediction")
        s.set_timesteps(4)
        model = GaussianEps(s.alphas_cumprod, "v_prediction")
        x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0))
        x = x.to(DTYPES[dt])
        gen = torch.Generator().manual_seed(6)
        outs = []
        for t in s.timesteps:
            out = s.step(model(x, int(t)), t, x, generator=gen)
            x = out.prev_sample
            outs.append(out.pred_noised_sample)
        return torch.stack([x, *outs])

    cpu, emu = on_cpu_and_emulated(loop)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's samples and noised estimates")


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
