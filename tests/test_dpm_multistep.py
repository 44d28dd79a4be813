"""rdiff.DPMSolverMultistepScheduler against diffusers' DPMSolverMultistepScheduler."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

import rdiff

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from conftest import GaussianEps, dummy_model, dummy_noise_deter, dummy_sample_deter

DS = diffusers.DPMSolverMultistepScheduler
RS = rdiff.DPMSolverMultistepScheduler

# diffusers' test configuration (tests/schedulers/test_scheduler_dpm_multi.py).
BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    solver_order=2,
    prediction_type="epsilon",
    thresholding=False,
    sample_max_value=1.0,
    algorithm_type="dpmsolver++",
    solver_type="midpoint",
    lower_order_final=False,
    final_sigmas_type="sigma_min",
)


def full_loop(scheduler, steps=10):
    sample = dummy_sample_deter()
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        sample = scheduler.step(dummy_model(sample, torch.as_tensor(t)), t, sample).prev_sample
    return sample


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 0.3301),
        (dict(prediction_type="v_prediction"), 0.2251),
        (dict(prediction_type="v_prediction", use_karras_sigmas=True), 0.2096),  # 0.2092 here
        (dict(prediction_type="v_prediction", use_lu_lambdas=True), 0.1554),
        (dict(thresholding=True, dynamic_thresholding_ratio=0.87, sample_max_value=0.5), 1.1364),
    ],
)
def test_diffusers_published_full_loops(kwargs, expected):
    sample = full_loop(RS(**{**BASE, **kwargs}))
    assert abs(sample.abs().mean().item() - expected) < 1e-3


def test_diffusers_published_loop_with_noise():
    s = RS(**BASE)
    s.set_timesteps(10)
    timesteps = s.timesteps[5:]
    sample = s.add_noise(dummy_sample_deter(), dummy_noise_deter(), timesteps[:1])
    for t in timesteps:
        sample = s.step(dummy_model(sample, torch.as_tensor(t)), t, sample).prev_sample
    assert abs(sample.abs().sum().item() - 318.4111) < 1e-2
    assert abs(sample.abs().mean().item() - 0.4146) < 1e-3


def _tolerance(sched, i, x):
    """1e-5 of the largest intermediate the step forms: converting ε to x₀ at σ̃ multiplies the
    sample by √(1 + σ̃²) (157 at t = 999), in float32 for both implementations."""
    sig = np.asarray(sched.sigmas, dtype=np.float64)
    kappa = max(math.sqrt(1.0 + sig[j] ** 2) for j in range(max(0, i - 2), i + 1))
    return 1e-5 * max(1.0, float(x.abs().max()) * kappa)


def run_pair(cfg, n, model, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8)):
    """Both schedulers, stepped from the same inputs (diffusers' trajectory) at every step; the
    largest error relative to the per-step tolerance."""
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(n)
    r.set_timesteps(n)
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    gd, gr = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        mo = model(x, t)
        xd = d.step(mo, t, x, generator=gd).prev_sample
        xr = r.step(mo, t, x, generator=gr).prev_sample
        assert xr.dtype == xd.dtype and xr.shape == xd.shape
        tol = _tolerance(r, i, x)
        if dtype != torch.float32:
            tol = 4 * float(torch.finfo(dtype).eps) * max(1.0, float(xd.abs().max()))
        worst = max(worst, float((xd.float() - xr.float()).abs().max()) / tol)
        x = xd
    return worst


CONFIGS = list(
    itertools.product(
        [1, 2, 3],
        ["dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"],
        ["epsilon", "v_prediction", "sample"],
        ["midpoint", "heun"],
        [False, True],  # thresholding
        ["linspace", "leading", "trailing", "karras", "lu", "exponential", "beta"],
        ["zero", "sigma_min"],
        [(True, False), (False, False), (True, True)],  # lower_order_final, euler_at_final
        [1, 2, 3, 5, 10, 20, 50, 999],
    )
)


SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "lu": "use_lu_lambdas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}


def _sample_configs(k, seed):
    rnd = random.Random(seed)
    out = []
    while len(out) < k:
        order, alg, pred, st, thr, spacing, final, (lof, eaf), n = rnd.choice(CONFIGS)
        if alg == "sde-dpmsolver" and order == 3:
            continue
        if final == "zero" and "++" not in alg:
            continue
        if thr and alg not in ("dpmsolver++", "dpmsolver"):
            continue
        cfg = dict(
            solver_order=order,
            algorithm_type=alg,
            prediction_type=pred,
            solver_type=st,
            thresholding=thr,
            sample_max_value=1.5,
            final_sigmas_type=final,
            lower_order_final=lof,
            euler_at_final=eaf,
        )
        if spacing in ("linspace", "leading", "trailing"):
            cfg["timestep_spacing"] = spacing
            cfg["steps_offset"] = 1 if spacing == "leading" else 0
        else:
            cfg[SIGMA_FLAGS[spacing]] = True
        out.append((cfg, n))
    return out


@pytest.mark.parametrize("cfg, n", _sample_configs(120, seed=2026))
def test_matches_diffusers_over_the_config_matrix(cfg, n):
    model = GaussianEps(DS(**cfg).alphas_cumprod, cfg["prediction_type"])
    assert run_pair(cfg, n, model) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order", [2, 3])
def test_half_precision_within_the_dtype_rounding(dtype, order):
    cfg = dict(solver_order=order)
    model = GaussianEps(DS().alphas_cumprod)
    assert run_pair(cfg, 20, model, dtype=dtype) <= 1.0


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
    r = RS()
    r.set_timesteps(10)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    for t in r.timesteps:
        x = r.step(0.1 * x, t, x).prev_sample
    assert x.dtype == np.float64 and np.isfinite(x).all()


def test_learned_variance_uses_the_first_channels():
    cfg = dict(variance_type="learned_range")
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(5)
    r.set_timesteps(5)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    xd, xr = x, x
    for t in d.timesteps:
        mo = torch.cat([0.3 * xd, torch.ones_like(xd)], dim=1)
        xd = d.step(mo, t, xd).prev_sample
        xr = r.step(torch.cat([0.3 * xr, torch.ones_like(xr)], dim=1), t, xr).prev_sample
    torch.testing.assert_close(xr, xd, atol=1e-4, rtol=1e-5)


def test_custom_timesteps_and_begin_index():
    d, r = DS(), RS()
    ts = [900, 700, 500, 300, 100, 10]
    d.set_timesteps(timesteps=ts)
    r.set_timesteps(timesteps=ts)
    np.testing.assert_allclose(r.sigmas, d.sigmas.numpy(), rtol=2e-7)
    r.set_begin_index(0)
    assert r.begin_index == 0


def test_attributes_pipelines_use():
    r = RS(solver_order=3)
    assert r.init_noise_sigma == 1.0 and r.order == 1 and len(r) == 1000
    r.set_timesteps(7)
    assert r.step_index is None and r.model_outputs == [None, None, None]
    x = np.zeros((1, 1, 2, 2), np.float32)
    assert r.scale_model_input(x, r.timesteps[0]) is x
    out = r.step(x, r.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and r.step_index == 1
    assert r.model_outputs[-1] is not None


def test_config_round_trip(tmp_path):
    r = RS(solver_order=3, use_karras_sigmas=True, prediction_type="v_prediction")
    r.save_pretrained(tmp_path)
    d = DS.from_pretrained(tmp_path)
    assert d.config.solver_order == 3 and d.config.use_karras_sigmas
    r2 = RS.from_config(d.config)
    assert r2.config.prediction_type == "v_prediction"
    r3 = RS.from_pretrained(tmp_path)
    assert dict(r3.config) == dict(r.config)


def test_bad_input():
    r = RS()
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        r.step(x, 999, x)
    r.set_timesteps(2)
    with pytest.raises(ValueError, match="shape"):
        r.step(np.zeros((1, 3, 4, 5), np.float32), r.timesteps[0], x)
    with pytest.raises(TypeError, match="dtype"):
        r.step(x.astype(np.int32), r.timesteps[0], x)
    with pytest.raises(TypeError):
        r.step([0.0], r.timesteps[0], x)
    for t in r.timesteps:
        x = r.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="steps are done"):
        r.step(x, r.timesteps[-1], x)
    with pytest.raises(ValueError, match="solver_order"):
        RS(solver_order=4)
    with pytest.raises(ValueError, match="algorithm_type"):
        RS(algorithm_type="ddim")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        RS(algorithm_type="dpmsolver", final_sigmas_type="zero")
    with pytest.raises(ValueError, match="timestep_spacing"):
        RS(timestep_spacing="uniform")


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

import functools

from conftest import assert_bit_equal, loop_on_cpu_and_emulated, on_cpu_and_emulated

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
EMU_CASES = [
    # (sample shape, extra model-output channels, offset of the views in elements)
    ((1, 1, 1, 1), 0, 0),
    ((2, 3, 7, 11), 0, 1),  # per-sample 231: a scalar tail; misaligned views
    ((2, 4, 16, 16), 0, 0),  # whole vectors, more than one block per sample
    ((3, 4, 9, 13), 4, 0),  # learned variance: model-output rows longer than the sample
    ((2, 4, 16, 17), 0, 3),  # misaligned views: the scalar path
]


def _view(values: torch.Tensor, dtype, offset: int) -> torch.Tensor:
    """values in dtype, as a contiguous view `offset` elements into a larger buffer."""
    base = torch.empty(values.numel() + offset + 3, dtype=dtype)
    view = base[offset : offset + values.numel()].view(values.shape)
    view.copy_(values.to(dtype))
    return view


def _emulated_step(algorithm, thresholding, extra, order, mo, x, history, noise):
    """Step 5 of 12 at `order` from a given history: (new sample, history entry)."""
    s = RS(
        solver_order=3,
        algorithm_type=algorithm,
        thresholding=thresholding,
        sample_max_value=1.5,
        final_sigmas_type="sigma_min",
        variance_type="learned_range" if extra else None,
    )
    s.set_timesteps(12)
    s._step_index, s.lower_order_nums = 5, order - 1
    s.model_outputs = list(history)
    out = s.step(mo, s.timesteps[5], x, variance_noise=noise).prev_sample
    return out, s.model_outputs[-1]


@pytest.mark.parametrize("mdt", list(DTYPES))
@pytest.mark.parametrize("sdt", list(DTYPES))
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("case", range(len(EMU_CASES)))
def test_emulated_step_equals_cpu(mdt, sdt, order, case):
    """One step of every order and algorithm, each dtype pair, on the kernels and the CPU."""
    shape, extra, offset = EMU_CASES[case]
    mdtype, sdtype = DTYPES[mdt], DTYPES[sdt]
    g = torch.Generator().manual_seed(1000 * order + case)
    mo_shape = (shape[0], shape[1] + extra, *shape[2:])
    for algorithm, thresholding in (
        ("dpmsolver++", False),
        ("sde-dpmsolver++", True),
        ("dpmsolver", case % 2 == 0),
    ):
        mo = _view(torch.randn(mo_shape, generator=g) * 1.5, mdtype, offset)
        x = _view(torch.randn(shape, generator=g) * 2, sdtype, offset)
        history = [_view(torch.randn(shape, generator=g), mdtype, offset) for _ in range(2)]
        noise = torch.randn(shape, generator=g)

        step = functools.partial(
            _emulated_step, algorithm, thresholding, extra, order, mo, x, history, noise
        )
        cpu, emu = on_cpu_and_emulated(step)
        assert_bit_equal(cpu, emu, f"{algorithm} thresholding={thresholding}")


LOOPS = {
    "dpmsolver++ 2M": (lambda: RS(solver_order=2), lambda: None),
    "dpmsolver++ 3M thresholding": (
        lambda: RS(solver_order=3, thresholding=True, sample_max_value=1.5),
        lambda: None,
    ),
    "sde-dpmsolver++ 2M": (
        lambda: RS(solver_order=2, algorithm_type="sde-dpmsolver++"),
        lambda: torch.Generator().manual_seed(3),
    ),
}


@pytest.mark.parametrize("name", list(LOOPS))
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_whole_loop_emulated_equals_cpu(name, dt):
    make, gen = LOOPS[name]
    loop_on_cpu_and_emulated(make, DTYPES[dt], gen)


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n_train,n", [(1000, 1000), (25, 25)])
def test_repeated_timesteps_as_diffusers(algorithm, order, n_train, n):
    """linspace over (nearly) every training timestep repeats one, as diffusers does; the zero
    step returns the sample and the next steps use distinct points, so rdiff equals diffusers
    while diffusers is finite (its order ≥ 2 divides by zero after the repeat) and stays
    finite."""
    import diffusers as d
    from conftest import check_repeated_timesteps

    import rdiff.diffusers

    cfg = dict(num_train_timesteps=n_train, solver_order=order, algorithm_type=algorithm)
    if algorithm == "dpmsolver":
        cfg["final_sigmas_type"] = "sigma_min"
    check_repeated_timesteps(
        rdiff.diffusers.DPMSolverMultistepScheduler(**cfg),
        d.DPMSolverMultistepScheduler(**cfg),
        n,
    )


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver", "sde-dpmsolver++"])
@pytest.mark.parametrize("thresholding", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_diffusers_solver_methods(algorithm, thresholding, prediction):
    """The methods community code calls on diffusers' class (convert_model_output, the
    first/second/third-order updates, _threshold_sample) give diffusers' results."""
    import diffusers as d

    import rdiff.diffusers

    cfg = dict(
        algorithm_type=algorithm,
        thresholding=thresholding,
        prediction_type=prediction,
        solver_order=3,
        sample_max_value=1.5,
    )
    if algorithm == "dpmsolver":
        cfg["final_sigmas_type"] = "sigma_min"
    if thresholding and algorithm == "dpmsolver":
        cfg["thresholding"] = False  # diffusers thresholds x₀ only for the ++ types' output
    ours, theirs = (
        rdiff.diffusers.DPMSolverMultistepScheduler(**cfg),
        d.DPMSolverMultistepScheduler(**cfg),
    )
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g) * 2
    outputs = []
    for i, t in enumerate(theirs.timesteps[:6]):
        ours._step_index = theirs._step_index = i
        mo = torch.tanh(0.7 * x) + 0.01 * float(t) / 1000
        m = theirs.convert_model_output(mo, sample=x)
        torch.testing.assert_close(ours.convert_model_output(mo, sample=x), m, rtol=1e-5, atol=1e-5)
        outputs.append(m)
        noise = torch.randn(x.shape, generator=g)
        kw = dict(sample=x, noise=noise)
        want = theirs.dpm_solver_first_order_update(m, **kw)
        torch.testing.assert_close(
            ours.dpm_solver_first_order_update(m, **kw), want, rtol=1e-5, atol=1e-5
        )
        for order, name in ((2, "second"), (3, "third")):
            if len(outputs) >= order:
                fn = f"multistep_dpm_solver_{name}_order_update"
                want = getattr(theirs, fn)(outputs, **kw)
                got = getattr(ours, fn)(outputs, **kw)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        x = want
    th = rdiff.diffusers.DPMSolverMultistepScheduler(thresholding=True, sample_max_value=1.5)
    tt = d.DPMSolverMultistepScheduler(thresholding=True, sample_max_value=1.5)
    y = torch.randn(3, 4, 5, 5, generator=g) * 3
    # the same bounds (torch.quantile, bit for bit); the rescale is x·(1/s), within an ulp of x/s
    torch.testing.assert_close(
        th._threshold_sample(y), tt._threshold_sample(y), rtol=2.4e-7, atol=0
    )


def test_diffusers_sigma_helpers():
    """_sigma_to_t and _convert_to_karras give diffusers' arrays (float32 and float64 tables)."""
    import diffusers as d

    import rdiff.diffusers

    ours, theirs = rdiff.diffusers.DPMSolverMultistepScheduler(), d.DPMSolverMultistepScheduler()
    ac = theirs.alphas_cumprod.numpy()
    sig = ((1 - ac) / ac) ** 0.5
    for table in (np.log(sig), np.log(sig.astype(np.float64))):
        for s in (np.float64(sig[500]), np.geomspace(sig[0] / 2, sig[-1] * 2, 50)):
            want = theirs._sigma_to_t(s, table)
            got = ours._sigma_to_t(s, table)
            assert np.shape(got) == np.shape(want)
            np.testing.assert_array_equal(got, want)
    for n in (1, 2, 7, 50):
        flipped = torch.from_numpy(sig[::-1].copy())
        # numpy's SIMD pow and Rust's differ in the last bit now and then
        np.testing.assert_allclose(
            ours._convert_to_karras(flipped, n), theirs._convert_to_karras(flipped, n), rtol=5e-16
        )


def test_dynamic_shift_mu_as_diffusers():
    """set_timesteps(mu=...) shifts this schedule already (the config is read after it)."""
    import rdiff.diffusers as rdd

    cfg = dict(use_flow_sigmas=True, prediction_type="flow_prediction", use_dynamic_shifting=True)
    d, r = DS(**cfg), rdd.DPMSolverMultistepScheduler(**cfg)
    d.set_timesteps(8, mu=0.7)
    r.set_timesteps(8, mu=0.7)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    np.testing.assert_allclose(r.sigmas.numpy(), d.sigmas.numpy(), rtol=1e-6)
