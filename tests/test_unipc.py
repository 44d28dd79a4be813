"""rdiff.UniPCMultistepScheduler against diffusers' UniPCMultistepScheduler."""

from __future__ import annotations

import functools
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
    dummy_model,
    dummy_sample_deter,
    on_cpu_and_emulated,
)

import rdiff.diffusers as rdd

DS = diffusers.UniPCMultistepScheduler
RS = rdiff.UniPCMultistepScheduler


def full_loop(scheduler, steps=10):
    sample = dummy_sample_deter()
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        sample = scheduler.step(dummy_model(sample, torch.as_tensor(t)), t, sample).prev_sample
    return sample


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # diffusers' own published figures (tests/schedulers/test_scheduler_unipc.py)
        ({}, 0.2464),
        (dict(use_karras_sigmas=True), 0.2925),
        (dict(prediction_type="v_prediction"), 0.1014),
        (dict(prediction_type="v_prediction", use_karras_sigmas=True), 0.1966),
    ],
)
def test_diffusers_published_full_loops(kwargs, expected):
    cfg = dict(solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min")
    sample = full_loop(RS(**{**cfg, **kwargs}))
    assert abs(sample.abs().mean().item() - expected) < 1e-3


def _tolerance(sched, i, x, dtype):
    """1e-5 of the largest intermediate the step forms (its conditioning): converting ε to x₀
    at σ̃ multiplies the sample by √(1 + σ̃²) (157 at t = 999), and the corrector and
    predictor read the outputs of up to four steps; both implementations round in float32
    (diffusers also forms its coefficients in float32). For half dtypes, 4 ulps."""
    if dtype != torch.float32:
        return 4 * float(torch.finfo(dtype).eps) * max(1.0, float(x.abs().max()))
    sig = np.asarray(sched.sigmas, dtype=np.float64)
    kappa = max(math.sqrt(1.0 + sig[j] ** 2) for j in range(max(0, i - 4), i + 1))
    return 1e-5 * max(1.0, float(x.abs().max()) * kappa)


def run_pair(cfg, n, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8)):
    """Both schedulers, stepped from the same inputs (diffusers' trajectory: its sample and
    its corrector's state) at every step; the largest error relative to the tolerance."""
    d, r = DS(**cfg), RS(**cfg)
    for s in (d, r):
        s.set_timesteps(n)
        s.set_begin_index(0)  # flow timesteps (σ·N, truncated) can repeat the first one
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    # ᾱ of the cosine and zero-SNR schedules: rdiff's float64 table, diffusers' float32 one;
    # with zero SNR, β₀ = 1 − ᾱ₀' cancels, and diffusers' torch sqrt is not correctly rounded
    # on every CPU (the plain class rounds correctly): one ulp there is 10⁻³ of β₀, ~10⁻⁶ of
    # the small σ
    rtol = 1e-5 if cfg.get("rescale_betas_zero_snr") else 1e-6
    np.testing.assert_allclose(np.asarray(r.sigmas), d.sigmas.numpy(), rtol=rtol)
    eps = GaussianEps(d.alphas_cumprod, cfg.get("prediction_type", "epsilon"))
    last = len(d.alphas_cumprod) - 1

    def model(x, t):
        return eps(x, min(int(t), last))  # flow timesteps reach N

    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        mo = model(x, t)
        if d.last_sample is not None:
            # the same corrector base for both, so that each step is compared alone
            r.last_sample = d.last_sample.clone()
            r.model_outputs = [None if m is None else m.clone() for m in d.model_outputs]
        xr = r.step(mo, t, x).prev_sample
        try:
            xd = d.step(mo, t, x).prev_sample
        except RuntimeError as e:  # torch.linalg's "singular": order ≥ 3 to σ = 0
            xd = torch.full_like(xr, float("nan"))
            assert "singular" in str(e)
        assert xr.dtype == xd.dtype and xr.shape == xd.shape
        if not torch.isfinite(xd).all():
            # diffusers' own division by zero: a step to σ = 0 (bh1, or an order above 1), or
            # a zero-length interval among those the step reads (a sigma_min final σ equal to
            # the last, leading spacing's clamped first timesteps); rdiff's limit (first
            # order, or the identity) is finite
            assert torch.isfinite(xr).all()
            sig = np.asarray(r.sigmas)
            span = sig[max(0, i - 3) : i + 2]
            assert sig[i + 1] == 0 or np.any(span[1:] == span[:-1])
            break
        worst = max(
            worst, float((xd.float() - xr.float()).abs().max()) / _tolerance(r, i, x, dtype)
        )
        x = xd
    return worst


CONFIGS = list(
    itertools.product(
        [1, 2, 3],
        ["bh1", "bh2"],
        [True, False],  # predict_x0
        ["epsilon", "v_prediction", "sample"],
        [False, True],  # thresholding
        ["linspace", "leading", "trailing", "karras", "exponential", "beta"],
        ["zero", "sigma_min"],
        [True, False],  # lower_order_final
        [(), (0,), (0, 1, 2)],  # disable_corrector
        [1, 2, 3, 5, 6, 8, 10, 20, 50, 999],
    )
)
SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}


def _sample_configs(k, seed):
    rnd = random.Random(seed)
    out = []
    for order, st, x0, pred, thr, spacing, final, lof, dc, n in rnd.sample(CONFIGS, k):
        cfg = dict(
            solver_order=order,
            solver_type=st,
            predict_x0=x0,
            prediction_type=pred,
            thresholding=thr,
            sample_max_value=1.5,
            final_sigmas_type=final,
            lower_order_final=lof,
            disable_corrector=list(dc),
        )
        if spacing in SIGMA_FLAGS:
            cfg[SIGMA_FLAGS[spacing]] = True
        else:
            cfg["timestep_spacing"] = spacing
            cfg["steps_offset"] = 1 if spacing == "leading" else 0
        out.append((cfg, n))
    return out


@pytest.mark.parametrize("cfg, n", _sample_configs(120, seed=2026))
def test_matches_diffusers_over_the_config_matrix(cfg, n):
    assert run_pair(cfg, n) <= 1.0


@pytest.mark.parametrize(
    "cfg",
    [
        dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
        dict(use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=3),
        dict(
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            shift_terminal=0.1,
            final_sigmas_type="sigma_min",
        ),
        dict(use_flow_sigmas=True, use_karras_sigmas=True, prediction_type="flow_prediction"),
        dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", solver_order=3),
        dict(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True),
        dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=20.0, solver_order=3),
    ],
)
@pytest.mark.parametrize("n", [4, 7, 25])
def test_matches_diffusers_flow_and_zero_snr(cfg, n):
    assert run_pair(cfg, n) <= 1.0


def test_dynamic_shifting_and_custom_sigmas():
    cfg = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
    for kw in (
        dict(use_dynamic_shifting=True),
        dict(use_dynamic_shifting=True, time_shift_type="linear"),
    ):
        d, r = DS(**cfg, **kw), RS(**cfg, **kw)
        d.set_timesteps(9, mu=0.8)
        r.set_timesteps(9, mu=0.8)
        np.testing.assert_array_equal(np.asarray(r.sigmas), d.sigmas.numpy())
        np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    d, r = DS(**cfg), RS(**cfg)
    sig = np.array([1.0, 0.7, 0.4, 0.2, 0.05])
    d.set_timesteps(sigmas=sig)
    r.set_timesteps(sigmas=sig)
    np.testing.assert_array_equal(np.asarray(r.sigmas), d.sigmas.numpy())
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order", [2, 3])
def test_half_precision_within_the_dtype_rounding(dtype, order):
    assert run_pair(dict(solver_order=order), 20, dtype=dtype) <= 1.0


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bh1_to_sigma_zero_is_the_limit_where_diffusers_gives_nan(order):
    """diffusers' bh1 with final_sigmas_type="zero" multiplies B(h) = −∞ by 0 at the last
    step (NaN at every order and step count); rdiff's last step is the first-order update's
    limit x₀ = m (the result of bh2, whose B(h) stays finite there), equal to diffusers'
    until then."""
    cfg = dict(solver_order=order, solver_type="bh1")
    d, r = DS(**cfg), RS(**cfg)
    b2 = DS(**{**cfg, "solver_type": "bh2"})
    for s in (d, r, b2):
        s.set_timesteps(8)
    model = GaussianEps(d.alphas_cumprod)
    x = xd = xb = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(order))
    for i, t in enumerate(d.timesteps):
        x = r.step(model(x, t), t, x).prev_sample
        xd = d.step(model(xd, t), t, xd).prev_sample
        if i < len(d.timesteps) - 1:
            torch.testing.assert_close(x, xd, rtol=1e-5, atol=1e-5)
    assert torch.isnan(xd).all() and torch.isfinite(x).all()
    # the last step's result is the corrected x₀ prediction, as bh2's is
    last = r.model_outputs[-1]
    torch.testing.assert_close(x, last, rtol=0, atol=0)
    for t in b2.timesteps:
        xb = b2.step(model(xb, t), t, xb).prev_sample
    assert torch.isfinite(xb).all()


def test_bh2_higher_order_to_sigma_zero():
    """Without lower_order_final diffusers' bh2 order-2/3 last step divides by r = 0; rdiff's
    is first order (the update has no finite higher-order limit at σ = 0)."""
    cfg = dict(solver_order=3, lower_order_final=False)
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(6)
    r.set_timesteps(6)
    model = GaussianEps(d.alphas_cumprod)
    x = xd = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    for i, t in enumerate(d.timesteps):
        x = r.step(model(x, t), t, x).prev_sample
        if i < len(d.timesteps) - 1:
            xd = d.step(model(xd, t), t, xd).prev_sample
            torch.testing.assert_close(x, xd, rtol=1e-5, atol=1e-5)
        else:
            with pytest.raises(RuntimeError, match="singular"):
                d.step(model(xd, t), t, xd)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("order", [2, 3])
def test_repeated_timesteps(order):
    check_repeated_timesteps(RS(solver_order=order), DS(solver_order=order), 1000)


def test_solver_p_predicts_and_unic_corrects():
    """``solver_p``: another scheduler's step is the predictor, UniC corrects it."""
    cfg = dict(solver_order=2)
    d = DS(**cfg, solver_p=diffusers.DDIMScheduler())
    r = RS(**cfg, solver_p=diffusers.DDIMScheduler())
    d.set_timesteps(10)
    r.set_timesteps(10)
    model = GaussianEps(d.alphas_cumprod)
    x = xd = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in d.timesteps:
        x = r.step(model(x, t), t, x).prev_sample
        xd = d.step(model(xd, t), t, xd).prev_sample
    torch.testing.assert_close(x, xd, rtol=1e-5, atol=1e-5)


def test_diffusers_update_methods():
    """convert_model_output, multistep_uni_p_bh_update and multistep_uni_c_bh_update as
    diffusers' (community code calls them), mid-loop, at orders 1-3."""
    cfg = dict(solver_order=3)
    d, r = DS(**cfg), rdd.UniPCMultistepScheduler(**cfg)
    d.set_timesteps(10)
    r.set_timesteps(10)
    model = GaussianEps(d.alphas_cumprod)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in d.timesteps[:4]:
        mo = model(x, t)
        d.step(mo, t, x)
        x = r.step(mo, t, x).prev_sample
    r.last_sample, r.model_outputs = d.last_sample, list(d.model_outputs)
    mo = model(x, d.timesteps[4])
    md = d.convert_model_output(mo, sample=x)
    torch.testing.assert_close(r.convert_model_output(mo, sample=x), md, rtol=1e-5, atol=1e-5)
    for order in (1, 2, 3):
        kw = dict(this_model_output=md, last_sample=d.last_sample, this_sample=x, order=order)
        want = d.multistep_uni_c_bh_update(**kw)
        torch.testing.assert_close(r.multistep_uni_c_bh_update(**kw), want, rtol=1e-5, atol=1e-5)
        want = d.multistep_uni_p_bh_update(mo, sample=x, order=order)
        got = r.multistep_uni_p_bh_update(mo, sample=x, order=order)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_numpy_in_numpy_out():
    cfg = dict(solver_order=3)
    model = GaussianEps(DS().alphas_cumprod)
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(15)
    r.set_timesteps(15)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    xr = x.numpy().copy()
    for t in d.timesteps:
        x = d.step(model(x, t), t, x).prev_sample
        xr = r.step(model(torch.from_numpy(xr), t).numpy(), int(t), xr).prev_sample
    assert isinstance(xr, np.ndarray) and xr.dtype == np.float32
    np.testing.assert_allclose(xr, x.numpy(), atol=2e-5)


def test_float64_numpy():
    r = RS(solver_order=3)
    r.set_timesteps(10)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    for t in r.timesteps:
        x = r.step(0.1 * x, t, x).prev_sample
    assert x.dtype == np.float64 and np.isfinite(x).all()


def test_beats_dpm_solver_pp_on_gaussian_data_once_orders_matter():
    """Exact Gaussian data, error against the ODE (DPM-Solver++ 3M, 999 steps; its 500-step
    solution is 4e-5 away). With diffusers' linspace timesteps the last interval (t ≈ 1000/n
    to 0) dominates every solver's error below ~10 steps (lower_order_final makes it first
    order); at 15 and 20 steps, where the orders act, UniPC-3's error is below
    DPM-Solver++ 3M's."""
    from rdiff.testing import GaussianMixture

    gm = GaussianMixture(means=[[0.5, -0.3, 0.2]], stds=[0.4], weights=[1.0])
    model = gm.model(rdiff.NoiseSchedule.discrete(1000), prediction_type="epsilon")
    x_t = np.random.default_rng(0).standard_normal((256, 3))
    final = dict(final_sigmas_type="sigma_min")

    def run(s, n):
        s.set_timesteps(n)
        x = x_t.copy()
        for t in s.timesteps:
            x = s.step(model(x, t), t, x).prev_sample
        return x

    ref = run(rdiff.DPMSolverMultistepScheduler(solver_order=3, **final), 999)
    for n in (15, 20):
        e_uni = np.sqrt(np.mean((run(RS(solver_order=3, **final), n) - ref) ** 2))
        dpm = rdiff.DPMSolverMultistepScheduler(solver_order=3, **final)
        e_dpm = np.sqrt(np.mean((run(dpm, n) - ref) ** 2))
        assert e_uni < 0.85 * e_dpm, (n, e_uni, e_dpm)


def test_config_round_trip_and_switching(tmp_path):
    r = rdd.UniPCMultistepScheduler(solver_order=3, use_karras_sigmas=True, solver_type="bh1")
    r.save_pretrained(tmp_path)
    d = DS.from_pretrained(tmp_path)
    assert d.config.solver_order == 3 and d.config.solver_type == "bh1"

    def public(c):
        return {k: v for k, v in dict(c).items() if not k.startswith("_")}

    assert public(rdd.UniPCMultistepScheduler.from_pretrained(tmp_path).config) == public(r.config)
    m = rdd.DPMSolverMultistepScheduler.from_config(r.config)
    assert m.config.solver_type == "midpoint"
    u = rdd.UniPCMultistepScheduler.from_config(diffusers.DPMSolverMultistepScheduler().config)
    assert u.config.solver_type == "bh2"
    assert "UniPCMultistepScheduler" in rdd.DPMSolverMultistepScheduler._compatibles


def test_bad_input():
    r = RS()
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        r.step(x, 999, x)
    r.set_timesteps(3)
    with pytest.raises(ValueError, match="shape"):
        r.step(np.zeros((1, 3, 4, 5), np.float32), r.timesteps[0], x)
    with pytest.raises(TypeError, match="dtype"):
        r.step(x.astype(np.int32), r.timesteps[0], x)
    x = r.step(x, r.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="last_sample"):
        r.last_sample = np.zeros((1, 3, 4, 5), np.float32)
        r.step(x, r.timesteps[1], x)
    for bad, match in [
        (dict(solver_order=5), "solver_order"),
        (dict(solver_type="bh3"), "solver_type"),
        (dict(prediction_type="x"), "prediction_type"),
        (dict(final_sigmas_type="min"), "final_sigmas_type"),
        (dict(timestep_spacing="uniform"), "timestep_spacing"),
        (dict(shift_terminal=0.1), "shift_terminal"),
        (dict(use_karras_sigmas=True, use_beta_sigmas=True), "only one"),
    ]:
        with pytest.raises(ValueError, match=match):
            RS(**bad)
    with pytest.raises(ValueError, match="flow_prediction"):
        RS(prediction_type="flow_prediction", predict_x0=False).set_timesteps(3)
    with pytest.raises(ValueError, match="sigmas"):
        RS().set_timesteps(sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="mu"):
        RS(use_flow_sigmas=True, use_dynamic_shifting=True).set_timesteps(5)


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def _emulated_step(order, corrector, thresholding, mo, x, last, history):
    """Step 5 of 12 (predictor of `order`, the corrector of the previous order-`order` step
    when `corrector`) from a given history: (new sample, history entry, corrected sample)."""
    s = RS(
        solver_order=3,
        thresholding=thresholding,
        sample_max_value=1.5,
        final_sigmas_type="sigma_min",
        disable_corrector=[] if corrector else [4],
    )
    s.set_timesteps(12)
    s._step_index, s.lower_order_nums, s.this_order = 5, order - 1, order
    s.model_outputs = list(history)
    s.last_sample = last
    out = s.step(mo, s.timesteps[5], x).prev_sample
    return out, s.model_outputs[-1], s.last_sample


@pytest.mark.parametrize("mdt", list(DTYPES))
@pytest.mark.parametrize("sdt", list(DTYPES))
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize(
    "shape, offset", [((1, 1, 1, 1), 0), ((2, 3, 7, 11), 1), ((2, 4, 16, 16), 0)]
)
def test_emulated_step_equals_cpu(mdt, sdt, order, shape, offset):
    """The fused corrector + predictor, each dtype pair, on the kernels and the CPU."""
    g = torch.Generator().manual_seed(100 * order + offset)

    def view(v, dtype):
        base = torch.empty(v.numel() + offset + 3, dtype=dtype)
        out = base[offset : offset + v.numel()].view(v.shape)
        out.copy_(v.to(dtype))
        return out

    for corrector, thresholding in ((True, False), (True, True), (False, False)):
        mo = view(torch.randn(shape, generator=g) * 1.5, DTYPES[mdt])
        x = view(torch.randn(shape, generator=g) * 2, DTYPES[sdt])
        last = view(torch.randn(shape, generator=g) * 2, DTYPES[sdt])
        history = [view(torch.randn(shape, generator=g), DTYPES[mdt]) for _ in range(3)]
        step = functools.partial(
            _emulated_step, order, corrector, thresholding, mo, x, last, history
        )
        cpu, emu = on_cpu_and_emulated(step)
        assert_bit_equal(cpu, emu, f"order {order} corrector {corrector}")


@pytest.mark.parametrize("dt", list(DTYPES))
def test_whole_loop_emulated_equals_cpu(dt):
    def loop():
        s = RS(solver_order=3, thresholding=True, sample_max_value=1.5)
        s.set_timesteps(9)
        model = GaussianEps(s.alphas_cumprod)
        x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0))
        x = x.to(DTYPES[dt])
        for t in s.timesteps:
            x = s.step(model(x, t), t, x).prev_sample
        return x

    cpu, emu = on_cpu_and_emulated(loop)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's final sample")


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
