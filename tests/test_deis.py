"""rdiff.DEISMultistepScheduler against diffusers' DEISMultistepScheduler, step by step over
seeded configurations, in diffusers' published loops and inside a tiny Stable Diffusion
pipeline (test_sd_pipelines.py)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

import rdiff

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from conftest import (
    GaussianEps,
    assert_bit_equal,
    check_repeated_timesteps,
    on_cpu_and_emulated,
)
from test_flow_match import velocity

import rdiff.diffusers as rdd

DS = diffusers.DEISMultistepScheduler
RS = rdd.DEISMultistepScheduler


def _rho(sched, j):
    s = float(sched.sigmas[j])
    return s / (1.0 - s) if sched.config.use_flow_sigmas else s


def _weight_rounding(sched, i):
    """How far diffusers' float32 DEIS weights can be from the exact ones: it forms each as
    F(ρ_t) − F(ρ_s0) (its `ind_fn`, closed-form integrals whose values reach thousands at
    high noise), so each weight carries a few float32 ulps of |F|; times α_t."""
    if i < 1:
        return 0.0
    rt, pts = _rho(sched, i + 1), [_rho(sched, j) for j in range(i, max(-1, i - 3), -1)]
    if rt <= 0 or any(p <= 0 for p in pts) or len(set(pts)) < len(pts):
        return 0.0
    lg = np.log

    def f2(t, b, c):
        return t * (lg(t) - lg(c) - 1) / (lg(b) - lg(c))

    def f3(t, b, c, d):
        num = t * (lg(c) * (lg(d) - lg(t) + 1) - lg(d) * lg(t) + lg(d) + lg(t) ** 2 - 2 * lg(t) + 2)
        return num / ((lg(b) - lg(c)) * (lg(b) - lg(d)))

    mags = [abs(f2(v, pts[0], pts[1])) for v in (rt, pts[0])]
    if len(pts) == 3:
        mags += [abs(f3(v, *pts)) for v in (rt, pts[0])]
    alpha_t = 1.0 - float(sched.sigmas[i + 1]) if sched.config.use_flow_sigmas else 1.0
    if not sched.config.use_flow_sigmas:
        alpha_t = 1.0 / math.sqrt(1.0 + float(sched.sigmas[i + 1]) ** 2)
    return 3 * 8 * float(np.finfo(np.float32).eps) * max(mags) * alpha_t


def _tolerance(sched, i, x, mo):
    """1e-5 of the largest term the step forms (the ε conversion and the update multiply the
    sample by 1/α ≤ √(1 + σ̃²)), in float32 for both, plus diffusers' float32 weight
    rounding times the size of the converted outputs."""
    sig = np.asarray(sched.sigmas, dtype=np.float64)
    flow = sched.config.use_flow_sigmas
    lo = max(0, i - 2)
    if flow:
        kappa = max(1.0 / max(1.0 - sig[j], 1e-3) for j in range(lo, i + 2))
    else:
        kappa = max(math.sqrt(1.0 + sig[j] ** 2) for j in range(lo, i + 2))
    big = max(1.0, float(x.abs().max()), float(mo.abs().max()))
    return 1e-5 * big * kappa + _weight_rounding(sched, i) * big * kappa


def run_pair(cfg, n, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8)):
    """Both stepped from diffusers' trajectory; the largest error relative to the tolerance."""
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(n)
    r.set_timesteps(n)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    np.testing.assert_allclose(r.sigmas.numpy(), d.sigmas.numpy(), rtol=1e-6)
    pred = cfg.get("prediction_type", "epsilon")
    model = velocity if pred == "flow_prediction" else GaussianEps(d.alphas_cumprod, pred)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        mo = model(x, t)
        try:
            xd = d.step(mo, t, x).prev_sample
        except IndexError:
            # a repeated first timestep (exponential or beta σ near σ_max truncate to the same
            # one): both start at its second occurrence, so the loop runs past the schedule;
            # diffusers indexes past its σ, rdiff says so
            with pytest.raises(ValueError, match="steps are done"):
                r.step(mo, t, x)
            break
        xr = r.step(mo, t, x).prev_sample
        assert xr.dtype == xd.dtype and xr.shape == xd.shape
        if not torch.isfinite(xd).all():
            # diffusers' order ≥ 2 divides by the zero length of a repeated σ; rdiff lowers
            # the order there (as for DPM-Solver) and stays finite
            assert torch.isfinite(xr).all()
            break
        tol = _tolerance(r, i, x, mo)
        if dtype != torch.float32:
            tol = 4 * float(torch.finfo(dtype).eps) * max(1.0, float(xd.abs().max()))
        worst = max(worst, float((xd.float() - xr.float()).abs().max()) / tol)
        x = xd
    return worst


CONFIGS = list(
    itertools.product(
        [1, 2, 3],  # solver_order
        ["epsilon", "v_prediction", "sample"],
        [False, True],  # thresholding
        ["linspace", "leading", "trailing", "karras", "exponential", "beta", "flow"],
        [{}, dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)],
        [True, False],  # lower_order_final
        [1, 2, 3, 5, 10, 20, 50],
    )
)
SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}


def _configs(k, seed):
    out = []
    for order, pred, thr, spacing, betas, lof, n in random.Random(seed).sample(CONFIGS, k):
        cfg = dict(
            solver_order=order,
            prediction_type=pred,
            thresholding=thr,
            sample_max_value=1.5,
            lower_order_final=lof,
            **betas,
        )
        if spacing == "flow":
            cfg.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
            cfg["thresholding"] = False
        elif spacing in SIGMA_FLAGS:
            cfg[SIGMA_FLAGS[spacing]] = True
        else:
            cfg["timestep_spacing"] = spacing
            cfg["steps_offset"] = 1 if spacing == "leading" else 0
        out.append((cfg, n))
    return out


@pytest.mark.parametrize("cfg, n", _configs(120, seed=7))
def test_matches_diffusers_over_the_config_matrix(cfg, n):
    assert run_pair(cfg, n) <= 1.0


def test_cosine_schedule_and_dynamic_shift():
    for sp in ("linspace", "karras", "exponential"):
        cfg = dict(beta_schedule="squaredcos_cap_v2", solver_order=3)
        if sp != "linspace":
            cfg[SIGMA_FLAGS[sp]] = True
        for n in (4, 10, 30):
            assert run_pair(cfg, n) <= 1.0, (sp, n)
    cfg = dict(use_flow_sigmas=True, prediction_type="flow_prediction", use_dynamic_shifting=True)
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(8, mu=0.7)
    r.set_timesteps(8, mu=0.7)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    np.testing.assert_allclose(r.sigmas.numpy(), d.sigmas.numpy(), rtol=1e-6)
    assert r.config.flow_shift == d.config.flow_shift


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order", [2, 3])
def test_half_precision_within_the_dtype_rounding(dtype, order):
    cfg = dict(
        solver_order=order, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    assert run_pair(cfg, 12, dtype=dtype) <= 1.0


def test_sibling_configs_map_to_deis():
    s = RS.from_config(diffusers.DPMSolverMultistepScheduler().config)
    assert (s.config.algorithm_type, s.config.solver_type) == ("deis", "logrho")
    assert type(s).__name__ == "DEISMultistepScheduler"
    with pytest.raises(ValueError, match="algorithm_type"):
        RS(algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="solver_type"):
        RS(solver_type="euler")


def test_numpy_in_numpy_out():
    s = rdiff.DEISMultistepScheduler(solver_order=3)
    s.set_timesteps(6)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    for t in s.timesteps:
        x = s.step(0.5 * x, t, x).prev_sample
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and np.isfinite(x).all()


def test_diffusers_solver_methods():
    """diffusers' named solver methods give what its own do."""
    d, r = DS(solver_order=3), RS(solver_order=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 4, generator=g)
    ms = [torch.randn(1, 2, 4, 4, generator=g) for _ in range(3)]
    outs = []
    for s in (d, r):
        s.set_timesteps(10)
        s._step_index = 4
        outs.append(
            (
                s.convert_model_output(torch.sin(x), sample=x),
                s.deis_first_order_update(ms[-1], sample=x),
                s.multistep_deis_second_order_update(ms[-2:], sample=x),
                s.multistep_deis_third_order_update(ms, sample=x),
            )
        )
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_repeated_timesteps_as_diffusers(order):
    check_repeated_timesteps(
        RS(num_train_timesteps=25, solver_order=order),
        DS(num_train_timesteps=25, solver_order=order),
        25,
    )


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dt", list(DTYPES))
def test_whole_loop_emulated_equals_cpu(dt):
    def loop():
        s = RS(solver_order=3, thresholding=True, sample_max_value=1.5)
        s.set_timesteps(6)
        model = GaussianEps(s.alphas_cumprod, "epsilon")
        x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0))
        x = x.to(DTYPES[dt])
        for t in s.timesteps:
            x = s.step(model(x, int(t)), t, x).prev_sample
        return x

    cpu, emu = on_cpu_and_emulated(loop)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's final sample")


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
