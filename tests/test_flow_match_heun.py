"""rdiff.FlowMatchHeunDiscreteScheduler against diffusers' FlowMatchHeunDiscreteScheduler,
step by step over seeded configurations (churn included) and inside a tiny Stable
Diffusion 3 pipeline."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

import rdiff

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from conftest import assert_bit_equal, on_cpu_and_emulated
from test_flow_match import _sd3_images, _sd3_parts, velocity

import rdiff.diffusers as rdd

DS = diffusers.FlowMatchHeunDiscreteScheduler
RS = rdd.FlowMatchHeunDiscreteScheduler


def run_pair(cfg, n, churn=None, dtype=torch.float32, seed=0, shape=(2, 4, 6, 6)):
    """Both stepped from diffusers' trajectory, churn noise from equally seeded generators;
    the largest error relative to 1e-5 of the stage's conditioning (4 ulps for half dtypes).
    diffusers forms each slope as (x − (x − σ·v))/σ, so its own rounding grows as |x|/σ."""
    d, r = DS(**cfg), RS(**cfg)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    for s in (d, r):
        s.set_timesteps(n)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    np.testing.assert_array_equal(r.sigmas.numpy(), d.sigmas.numpy())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    kw = dict(churn or {})
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        v = velocity(x, t)
        # the slope's divisor: the first stage's σ (σ̂ ≥ σ with churn), the second's σ_next;
        # the interval's dt and (churned) sample, which diffusers keeps between the stages
        sig = float(d.sigmas[i])
        gen = dict(generator=torch.Generator().manual_seed(i))
        state = None if d.state_in_first_order else (float(d.dt), d.sample)
        xd = d.step(v, t, x, **kw, **gen).prev_sample
        dt, xs = state or (float(d.dt), d.sample)
        gen = dict(generator=torch.Generator().manual_seed(i))
        xr = r.step(v, t, x, **kw, **gen).prev_sample
        assert xr.dtype == xd.dtype and xr.shape == xd.shape
        assert torch.isfinite(xr).all()  # (a NaN would compare as no error)
        big = max(1.0, float(x.abs().max()), float(v.abs().max()), float(xd.abs().max()))
        big = max(big, float(xs.abs().max()))
        scale = big + abs(dt) * 2 * big / sig
        tol = (4 * float(torch.finfo(dtype).eps) if dtype != torch.float32 else 1e-5) * scale
        worst = max(worst, float((xd.float() - xr.float()).abs().max()) / tol)
        x = xd
    return worst


CHURNS = [
    None,
    dict(s_churn=1.0),
    dict(s_churn=4.0, s_tmin=0.2, s_tmax=0.8),
    dict(s_churn=2.0, s_noise=0.5),
]
CONFIGS = list(
    itertools.product(
        [1000, 1100, 50],  # num_train_timesteps
        [1.0, 3.0, 1.7, 0.5],  # shift
        [1, 2, 3, 5, 10, 28],  # inference steps
        range(len(CHURNS)),
        [0, 1],  # seed
    )
)


@pytest.mark.parametrize("big_n, shift, n, c, seed", random.Random(41).sample(CONFIGS, 110))
def test_matches_diffusers_over_the_config_matrix(big_n, shift, n, c, seed):
    cfg = dict(num_train_timesteps=big_n, shift=shift)
    assert run_pair(cfg, n, CHURNS[c], seed=seed) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c", [0, 1])
def test_half_precision_within_the_dtype_rounding(dtype, c):
    assert run_pair(dict(shift=3.0), 8, CHURNS[c], dtype=dtype) <= 1.0


def test_training_schedule_state_and_scale_noise():
    d, r = DS(shift=3.0), RS(shift=3.0)
    assert (r.sigma_min, r.sigma_max) == (d.sigma_min, d.sigma_max)
    np.testing.assert_array_equal(r.sigmas.numpy(), d.sigmas.numpy())
    for s in (d, r):
        s.set_timesteps(4)
        s.set_begin_index(2)
    g = torch.Generator().manual_seed(0)
    x, n = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = d.timesteps[2:3]
    for dtype in (torch.float32, torch.bfloat16):
        a = r.scale_noise(x.to(dtype), t, n.to(dtype))
        assert torch.equal(a, d.scale_noise(x.to(dtype), t, n.to(dtype)))
    assert r.step_index == d.step_index == 2
    # the stage state a loop reads
    v = velocity(x, t)
    d.step(v, d.timesteps[2], x)
    r.step(v, r.timesteps[2], x)
    assert not r.state_in_first_order and r.dt == pytest.approx(float(d.dt), rel=1e-6)
    out = r.step(v, r.timesteps[3], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and r.state_in_first_order


def test_numpy_in_numpy_out():
    s = rdiff.FlowMatchHeunDiscreteScheduler(shift=2.0)
    s.set_timesteps(3)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    for t in s.timesteps:
        x = s.step(np.tanh(x), t, x).prev_sample
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and np.isfinite(x).all()
    with pytest.raises(ValueError, match="integer timesteps"):
        s.step(x, 3, x)


@pytest.fixture(scope="module")
def sd3_parts():
    return _sd3_parts()


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_sd3_pipeline_gives_the_stock_images(sd3_parts, img2img):
    ours = _sd3_images(sd3_parts, RS(shift=3.0), img2img)
    theirs = _sd3_images(sd3_parts, DS(shift=3.0), img2img)
    assert np.isfinite(ours).all() and ours.std() > 0
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dt", list(DTYPES))
def test_whole_loop_emulated_equals_cpu(dt):
    def loop():
        s = RS(shift=3.0)
        s.set_timesteps(5)
        x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0))
        x = x.to(DTYPES[dt])
        gen = torch.Generator().manual_seed(4)
        for t in s.timesteps:
            x = s.step(velocity(x, t), t, x, s_churn=1.0, generator=gen).prev_sample
        return x

    cpu, emu = on_cpu_and_emulated(loop)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's final sample")


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
