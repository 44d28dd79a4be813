"""rdiff.NoiseSchedule: β and ᾱ arrays against diffusers, λ and its inverse, bad arguments."""

from __future__ import annotations

import os

import numpy as np
import pytest

import rdiff

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("n", [2, 3, 5, 10, 25, 50, 100, 999, 1000])
def test_arrays_equal_diffusers(schedule, n):
    d = diffusers.DDPMScheduler(num_train_timesteps=n, beta_schedule=schedule)
    r = rdiff.NoiseSchedule.discrete(n, schedule)
    assert r.betas.dtype == np.float64 and r.betas.shape == (n,)
    # diffusers computes in float32 (linspace with FMA, cumprod accumulated in double);
    # rdiff reproduces that arithmetic, so the float32 values are equal.
    np.testing.assert_array_equal(r.betas.astype(np.float32), d.betas.numpy())
    np.testing.assert_array_equal(r.alphas_cumprod.astype(np.float32), d.alphas_cumprod.numpy())


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_zero_terminal_snr_rescale(schedule):
    d = diffusers.DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=True)
    r = rdiff.NoiseSchedule.discrete(1000, schedule, rescale_betas_zero_snr=True)
    # torch's float32 sqrt is not correctly rounded on every CPU; the rescale divides nearly
    # equal numbers, so agreement is to float32 noise amplified by that cancellation.
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-7)
    assert r.alphas_cumprod[-1] == 0.0


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_zero_terminal_snr_with_torch_sqrt_is_diffusers_to_the_bit(schedule):
    """The torch-facing classes pass torch's own √ᾱ to the rescale: whatever this CPU's torch
    rounds, β and ᾱ are diffusers' float32 values exactly."""
    import torch

    import rdiff.diffusers as rdd

    d = diffusers.DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=True)
    r = rdd.DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=True)
    assert isinstance(r.betas, torch.Tensor)
    np.testing.assert_array_equal(r.betas.numpy().astype(np.float32), d.betas.numpy())
    np.testing.assert_array_equal(
        r.alphas_cumprod.numpy().astype(np.float32), d.alphas_cumprod.numpy()
    )


def test_zero_terminal_snr_sqrt_is_checked():
    with pytest.raises(ValueError, match="sqrt_alphas_cumprod"):
        rdiff.NoiseSchedule.discrete(10, rescale_betas_zero_snr=True, sqrt_alphas_cumprod=[1.0])
    with pytest.raises(ValueError, match="sqrt_alphas_cumprod"):
        rdiff.NoiseSchedule.discrete(
            3, rescale_betas_zero_snr=True, sqrt_alphas_cumprod=[1.0, float("nan"), 0.5]
        )


def test_trained_betas():
    betas = np.linspace(1e-4, 0.02, 50)
    r = rdiff.NoiseSchedule.discrete(trained_betas=betas)
    np.testing.assert_allclose(r.betas, betas.astype(np.float32), rtol=0)


@pytest.mark.parametrize(
    "schedule",
    [
        rdiff.NoiseSchedule.discrete(1000, "linear"),
        rdiff.NoiseSchedule.discrete(1000, "squaredcos_cap_v2"),
        rdiff.NoiseSchedule.linear_vp(),
    ],
)
def test_lambda_and_its_inverse(schedule):
    t = np.linspace(schedule.t_min, schedule.t_max, 301)
    lam = schedule.lambda_t(t)
    assert np.all(np.diff(lam) < 0), "λ must decrease in t"
    np.testing.assert_allclose(schedule.inverse_lambda(lam), t, atol=1e-9)
    np.testing.assert_allclose(schedule.lambda_t(schedule.inverse_lambda(lam)), lam, atol=1e-9)
    a, s = schedule.alpha_t(t), schedule.sigma_t(t)
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-12)
    np.testing.assert_allclose(np.log(a / s), lam, atol=1e-9)
    assert isinstance(schedule.alpha_t(0.5), float)


def test_discrete_interpolates_log_alpha_on_its_grid():
    s = rdiff.NoiseSchedule.discrete(1000)
    i = np.arange(1000)
    np.testing.assert_allclose(s.alpha_t((i + 1) / 1000), np.sqrt(s.alphas_cumprod), rtol=1e-12)


def test_linear_vp_closed_form():
    s = rdiff.NoiseSchedule.linear_vp(0.1, 20.0)
    t = np.array([1e-3, 0.5, 1.0])
    log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    np.testing.assert_allclose(s.alpha_t(t), np.exp(log_a), rtol=1e-14)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="beta_schedule"):
        rdiff.NoiseSchedule.discrete(1000, "cosine")
    with pytest.raises(ValueError, match="beta_end"):
        rdiff.NoiseSchedule.discrete(1000, "linear", beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        rdiff.NoiseSchedule.discrete(0)
    with pytest.raises(ValueError, match="beta_max"):
        rdiff.NoiseSchedule.linear_vp(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="trained_betas"):
        rdiff.NoiseSchedule.discrete(trained_betas=[0.1, 1.5])


def test_backends_reports_cpu_and_why_not_cuda():
    b = rdiff.backends()
    assert b["cpu"]["available"] and b["cpu"]["threads"] >= 1
    assert isinstance(b["cuda"]["available"], bool)
    if not b["cuda"]["available"]:
        assert b["cuda"]["reason"]
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    want = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else None
    assert b["cpu"]["simd"] == (want or b["cpu"]["simd"])


def test_fma_peak_is_measured():
    from rdiff._rdiff import fma_peak_gflops

    # any CPU since 2000 does more than 1 GFLOP/s; none of ours more than 100 TFLOP/s
    assert 1.0 < fma_peak_gflops(0.05) < 1e5
    with pytest.raises(ValueError, match="seconds"):
        fma_peak_gflops(0.0)


def test_cli_info(capsys):
    from rdiff.cli import main

    assert main(["info"]) == 0
    assert rdiff.__version__ in capsys.readouterr().out


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
