"""rdiff.DPMSolverSinglestepScheduler against diffusers' DPMSolverSinglestepScheduler."""

from __future__ import annotations

import itertools
import logging
import math
import random

import numpy as np
import pytest

import rdiff
from rdiff._rdiff import _DpmSinglestep, _singlestep_order_list

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from conftest import GaussianEps, dummy_model, dummy_noise_deter, dummy_sample_deter

DS = diffusers.DPMSolverSinglestepScheduler
RS = rdiff.DPMSolverSinglestepScheduler


@pytest.fixture(autouse=True)
def _quiet_lower_order_final_warnings():
    # Both implementations log when set_timesteps switches lower_order_final on.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    yield
    logging.disable(previous)


# diffusers' test configuration (tests/schedulers/test_scheduler_dpm_single.py).
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
    lambda_min_clipped=-float("inf"),
    variance_type=None,
)


def full_loop(scheduler, steps=10, start=0, sample=None):
    sample = dummy_sample_deter() if sample is None else sample
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps[start:]:
        sample = scheduler.step(dummy_model(sample, torch.as_tensor(t)), t, sample).prev_sample
    return sample


# diffusers' published numbers were computed when `final_sigmas_type` defaulted to "sigma_min"
# behaviour; with diffusers 0.42.1 they are reproduced by diffusers itself only with
# final_sigmas_type="sigma_min" (checked against diffusers in `test_published_numbers_are_
# diffusers_own`). Under 0.42.1's default ("zero", which also forces lower_order_final) diffusers
# gives the second column, which rdiff matches too.
PUBLISHED = [
    # (kwargs, published mean with sigma_min, diffusers 0.42.1 mean with the default "zero")
    ({}, 0.2791, 0.2278),
    (dict(use_karras_sigmas=True), 0.2248, 0.2239),
    (dict(prediction_type="v_prediction"), 0.1453, 0.0781),
    (dict(prediction_type="v_prediction", use_karras_sigmas=True), 0.0649, 0.0646),
]


@pytest.mark.parametrize("kwargs, published, default_zero", PUBLISHED)
def test_diffusers_published_full_loops(kwargs, published, default_zero):
    got = full_loop(RS(**{**BASE, **kwargs, "final_sigmas_type": "sigma_min"}))
    assert abs(got.abs().mean().item() - published) < 1e-3
    got = full_loop(RS(**{**BASE, **kwargs}))
    assert abs(got.abs().mean().item() - default_zero) < 1e-3


@pytest.mark.parametrize("kwargs, published, default_zero", PUBLISHED)
def test_published_numbers_are_diffusers_own(kwargs, published, default_zero):
    got = full_loop(DS(**{**BASE, **kwargs, "final_sigmas_type": "sigma_min"}))
    assert abs(got.abs().mean().item() - published) < 1e-3
    got = full_loop(DS(**{**BASE, **kwargs}))
    assert abs(got.abs().mean().item() - default_zero) < 1e-3


@pytest.mark.parametrize("cls", [RS, DS])
@pytest.mark.parametrize("final, expected", [("sigma_min", 0.2574), ("zero", 0.2527)])
def test_diffusers_published_uneven_loop(cls, final, expected):
    """50 steps entered at index 3 (mid-group: the first step is lowered to order 1)."""
    got = full_loop(cls(**BASE, final_sigmas_type=final), steps=50, start=3)
    assert abs(got.abs().mean().item() - expected) < 1e-3


@pytest.mark.parametrize("cls", [RS, DS])
@pytest.mark.parametrize(
    "final, total, mean", [("sigma_min", 269.2187, 0.3505), ("zero", 219.7097, 0.2861)]
)
def test_diffusers_published_loop_with_noise(cls, final, total, mean):
    s = cls(**BASE, final_sigmas_type=final)
    s.set_timesteps(10)
    timesteps = s.timesteps[5:]
    sample = s.add_noise(dummy_sample_deter(), dummy_noise_deter(), timesteps[:1])
    for t in timesteps:
        sample = s.step(dummy_model(sample, torch.as_tensor(t)), t, sample).prev_sample
    assert abs(sample.abs().sum().item() - total) < 1e-2
    assert abs(sample.abs().mean().item() - mean) < 1e-3


@pytest.mark.parametrize("final", ["sigma_min", "zero"])
def test_diffusers_fp16_loop(final):
    """diffusers' test_fp16_support (thresholding with ratio 0): float16 out, diffusers' value."""
    cfg = dict(BASE, thresholding=True, dynamic_thresholding_ratio=0, final_sigmas_type=final)
    outs = [full_loop(cls(**cfg), sample=dummy_sample_deter().half()) for cls in (RS, DS)]
    assert outs[0].dtype == torch.float16
    assert abs(outs[0].float().abs().mean().item() - outs[1].float().abs().mean().item()) < 1e-3


def test_switch_through_diffusers_schedulers_and_back():
    """diffusers' test_switch (with final_sigmas_type="sigma_min", see PUBLISHED)."""
    from rdiff.diffusers import DPMSolverMultistepScheduler as RM
    from rdiff.diffusers import DPMSolverSinglestepScheduler as RSD

    s = RSD(**BASE, final_sigmas_type="sigma_min")
    assert abs(full_loop(s).abs().mean().item() - 0.2791) < 1e-3
    s = diffusers.DEISMultistepScheduler.from_config(s.config)
    s = RM.from_config(s.config)
    s = diffusers.UniPCMultistepScheduler.from_config(s.config)
    s = RSD.from_config(s.config)
    assert isinstance(s, diffusers.SchedulerMixin)
    assert abs(full_loop(s).abs().mean().item() - 0.2791) < 1e-3


# -- step-by-step parity over the configuration matrix ------------------------------------------


class PatchedDS(DS):
    """diffusers with its `dpmsolver` + thresholding conversion repaired: diffusers 0.42.1 indexes
    its α/σ tables with timestep None there (a shape error); the intended formula converts at the
    current σ as every other branch does (and as the multistep scheduler does)."""

    def convert_model_output(self, model_output, *args, sample=None, **kwargs):
        cfg = self.config
        if cfg.algorithm_type != "dpmsolver" or not cfg.thresholding:
            return super().convert_model_output(model_output, *args, sample=sample, **kwargs)
        a, s = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
        if cfg.prediction_type == "epsilon":
            eps = model_output
        elif cfg.prediction_type == "sample":
            eps = (sample - a * model_output) / s
        else:
            eps = a * model_output + s * sample
        x0 = self._threshold_sample((sample - s * eps) / a)
        return (sample - a * x0) / s


class FlowModel:
    """A smooth stand-in for a flow-matching network: v = ε − x₀ for N(0, 0.5²) data, with the
    flow σ read off the timestep (t = 1000·σ)."""

    def __call__(self, x, t):
        sig = min(max(float(t) / 1000.0, 1e-3), 1.0 - 1e-3)
        a = 1.0 - sig
        xd = x.double()
        x0 = a * 0.25 * xd / (a * a * 0.25 + sig * sig) + 0.05 * torch.sin(3 * xd)
        return ((xd - a * x0) / sig - x0).to(x.dtype)


def _tolerance(sched, i, x):
    """1e-5 of the largest intermediate the step forms (as in test_dpm_multistep): converting to
    x₀ divides the sample by α, in float32 for both implementations. α = 1/√(1 + σ̃²) (so 1/α is
    test_dpm_multistep's √(1 + σ̃²)), or 1 − σ for flow sigmas; the window covers the group."""
    sig = np.asarray(sched.sigmas, dtype=np.float64)
    if sched.config.use_flow_sigmas:
        inv_alpha = [1.0 / (1.0 - sig[j]) for j in range(max(0, i - 2), i + 1)]
    else:
        inv_alpha = [math.sqrt(1.0 + sig[j] ** 2) for j in range(max(0, i - 2), i + 1)]
    return 1e-5 * max(1.0, float(x.abs().max()) * max(inv_alpha))


def run_pair(cfg, n, model, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8), begin=0):
    """Both schedulers, stepped from the same inputs (diffusers' trajectory) at every step; the
    largest error relative to the per-step tolerance."""
    d, r = PatchedDS(**cfg), RS(**cfg)
    d.set_timesteps(n)
    r.set_timesteps(n)
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    assert r.order_list == d.order_list
    assert r.config.lower_order_final == d.config.lower_order_final
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    gd, gr = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        if i < begin:
            continue
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


SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
    "flow": "use_flow_sigmas",
}

CONFIGS = list(
    itertools.product(
        [1, 2, 3],
        ["dpmsolver++", "dpmsolver", "sde-dpmsolver++"],
        ["epsilon", "v_prediction", "sample", "flow_prediction"],
        ["midpoint", "heun"],
        [False, True],  # thresholding
        ["default", "clipped", "cosine", "karras", "exponential", "beta", "flow"],
        ["zero", "sigma_min"],
        [False, True],  # lower_order_final
        [1, 2, 3, 5, 10, 20, 50],
    )
)


def _sample_configs(k, seed):
    rnd = random.Random(seed)
    out = []
    while len(out) < k:
        order, alg, pred, st, thr, sig, final, lof, n = rnd.choice(CONFIGS)
        if final == "zero" and alg == "dpmsolver":
            continue
        if pred == "flow_prediction" and (alg == "dpmsolver" or sig != "flow"):
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
        )
        if sig == "clipped":
            cfg.update(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)
        elif sig == "cosine":
            cfg.update(beta_schedule="squaredcos_cap_v2")
        elif sig in SIGMA_FLAGS:
            cfg[SIGMA_FLAGS[sig]] = True
            if sig == "flow":
                cfg["flow_shift"] = 3.0
        out.append((cfg, n))
    return out


def _model(cfg):
    if cfg.get("prediction_type") == "flow_prediction":
        return FlowModel()
    ac = DS(**{**cfg, "algorithm_type": "dpmsolver++"}).alphas_cumprod
    return GaussianEps(ac, cfg.get("prediction_type", "epsilon"))


@pytest.mark.parametrize("cfg, n", _sample_configs(160, seed=2027))
def test_matches_diffusers_over_the_config_matrix(cfg, n):
    assert run_pair(cfg, n, _model(cfg)) <= 1.0


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver", "sde-dpmsolver++"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_every_order_algorithm_and_solver_type(order, alg, solver_type):
    """Complete coverage of the update formulas (the sample above is random)."""
    cfg = dict(
        solver_order=order,
        algorithm_type=alg,
        solver_type=solver_type,
        final_sigmas_type="sigma_min",
        prediction_type="v_prediction",
    )
    assert run_pair(cfg, 12, _model(cfg)) <= 1.0


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("begin", [1, 2, 4])
def test_loops_entered_mid_group(order, begin):
    """img2img: the first steps lower their order until the history has the group's outputs."""
    cfg = dict(solver_order=order, final_sigmas_type="sigma_min")
    assert run_pair(cfg, 12, _model(cfg), begin=begin) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order", [2, 3])
def test_half_precision_within_the_dtype_rounding(dtype, order):
    cfg = dict(solver_order=order)
    assert run_pair(cfg, 20, _model(cfg), dtype=dtype) <= 1.0


def test_sde_in_half_precision():
    """sde-dpmsolver++ in float16: noise drawn from the same generator stream as diffusers."""
    cfg = dict(algorithm_type="sde-dpmsolver++", solver_order=2)
    assert run_pair(cfg, 10, _model(cfg), dtype=torch.float16) <= 1.0


def test_variance_noise_replaces_the_draw():
    r1, r2 = RS(algorithm_type="sde-dpmsolver++"), RS(algorithm_type="sde-dpmsolver++")
    for s in (r1, r2):
        s.set_timesteps(4)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x1, x2 = x, x
    for t in r1.timesteps:
        g = torch.Generator().manual_seed(int(t))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t)))
        x1 = r1.step(0.1 * x1, t, x1, generator=g).prev_sample
        x2 = r2.step(0.1 * x2, t, x2, variance_noise=noise).prev_sample
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)


def test_numpy_in_numpy_out():
    cfg = dict(solver_order=3, final_sigmas_type="sigma_min")
    model = GaussianEps(DS().alphas_cumprod)
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(15)
    r.set_timesteps(15)
    assert isinstance(r.timesteps, np.ndarray) and r.timesteps.dtype == np.int64
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
    assert isinstance(r.sample, np.ndarray)


def test_learned_variance_uses_the_first_channels():
    cfg = dict(variance_type="learned_range")
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(5)
    r.set_timesteps(5)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    xd, xr = x, x
    for t in d.timesteps:
        xd = d.step(torch.cat([0.3 * xd, torch.ones_like(xd)], dim=1), t, xd).prev_sample
        xr = r.step(torch.cat([0.3 * xr, torch.ones_like(xr)], dim=1), t, xr).prev_sample
    torch.testing.assert_close(xr, xd, atol=1e-4, rtol=1e-5)


# -- set_timesteps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(beta_schedule="scaled_linear"),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1),
        dict(use_karras_sigmas=True),
        dict(use_karras_sigmas=True, beta_schedule="squaredcos_cap_v2"),
        dict(use_exponential_sigmas=True),
        dict(use_beta_sigmas=True),
        dict(use_flow_sigmas=True, flow_shift=3.0),
        dict(num_train_timesteps=100),
    ],
)
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("order, lof", [(1, False), (2, False), (3, False), (3, True)])
def test_schedule_and_order_list_equal_diffusers(kwargs, final, order, lof):
    cfg = dict(kwargs, final_sigmas_type=final, solver_order=order, lower_order_final=lof)
    d, r = DS(**cfg), RS(**cfg)
    assert r.order_list == d.order_list  # the constructor's list, over the training steps
    for n in (1, 2, 3, 4, 5, 6, 7, 10, 25, 50, 99):
        d.set_timesteps(n)
        r.set_timesteps(n)
        np.testing.assert_array_equal(r.timesteps, d.timesteps.numpy())
        assert r.sigmas.dtype == np.float32
        # the σ table is float32 in both; cosine differs by at most one float32 ulp (torch's
        # x ** 0.5 against sqrt), as for the multistep scheduler.
        np.testing.assert_allclose(r.sigmas, d.sigmas.numpy(), rtol=1.2e-7, atol=0)
        assert r.order_list == d.order_list
        assert r.config.lower_order_final == d.config.lower_order_final


def test_custom_timesteps_mu_and_begin_index():
    d, r = DS(), RS()
    ts = [900, 700, 500, 300, 100, 10]
    d.set_timesteps(timesteps=ts)
    r.set_timesteps(timesteps=ts)
    np.testing.assert_array_equal(r.timesteps, d.timesteps.numpy())
    np.testing.assert_allclose(r.sigmas, d.sigmas.numpy(), rtol=2e-7)
    assert r.order_list == d.order_list and r.num_inference_steps == 6
    cfg = dict(use_flow_sigmas=True, use_dynamic_shifting=True)
    d, r = DS(**cfg), RS(**cfg)
    d.set_timesteps(8, mu=0.7)
    r.set_timesteps(8, mu=0.7)
    np.testing.assert_allclose(r.sigmas, d.sigmas.numpy(), rtol=2e-7)
    np.testing.assert_array_equal(r.timesteps, d.timesteps.numpy())
    # diffusers places flow sigmas by count only: custom timesteps give just their number.
    d.set_timesteps(timesteps=ts)
    r.set_timesteps(timesteps=ts)
    np.testing.assert_allclose(r.sigmas, d.sigmas.numpy(), rtol=2e-7)
    r.set_begin_index(2)
    assert r.begin_index == 2


def test_attributes_pipelines_use():
    r = RS(solver_order=3)
    assert r.init_noise_sigma == 1.0 and r.order == 1 and len(r) == 1000
    assert r.timesteps.dtype == np.float32 and r.timesteps[0] == 999
    r.set_timesteps(7)
    assert r.step_index is None and r.model_outputs == [None, None, None] and r.sample is None
    assert r.config.lower_order_final  # switched on by set_timesteps, as diffusers does
    x = np.zeros((1, 1, 2, 2), np.float32)
    assert r.scale_model_input(x, r.timesteps[0]) is x
    out = r.step(x, r.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and r.step_index == 1
    assert r.model_outputs[-1] is not None and r.sample is not None


def test_config_round_trip(tmp_path):
    r = RS(solver_order=3, use_karras_sigmas=True, prediction_type="v_prediction")
    r.save_pretrained(tmp_path)
    d = DS.from_pretrained(tmp_path)
    assert d.config.solver_order == 3 and d.config.use_karras_sigmas
    r2 = RS.from_config(d.config)
    assert r2.config.prediction_type == "v_prediction"
    r3 = RS.from_pretrained(tmp_path)
    assert dict(r3.config) == dict(r.config)
    # A multistep config (with options the singlestep solver lacks) converts, as in diffusers.
    m = rdiff.DPMSolverMultistepScheduler(timestep_spacing="trailing", solver_order=3)
    assert RS.from_config(m.config).config.solver_order == 3


def test_deis_and_solver_type_aliases_update_the_config():
    r = RS(algorithm_type="deis", solver_type="bh2")
    d = DS(algorithm_type="dpmsolver++", solver_type="bh2")
    assert r.config.algorithm_type == "dpmsolver++"
    assert r.config.solver_type == d.config.solver_type == "midpoint"


def test_diffusers_subclass_in_a_pipeline_slot(tmp_path):
    from rdiff.diffusers import DPMSolverSinglestepScheduler as RSD

    s = RSD.from_config(DS(solver_order=3).config)
    assert isinstance(s, diffusers.SchedulerMixin)
    s.set_timesteps(6)
    assert isinstance(s.timesteps, torch.Tensor) and s.timesteps.dtype == torch.int64
    s.save_pretrained(tmp_path)
    assert RSD.from_pretrained(tmp_path).config.solver_order == 3
    x = torch.zeros(1, 3, 4, 4)
    assert s.step(x, s.timesteps[0], x).prev_sample.shape == x.shape


# -- the Rust core ------------------------------------------------------------------------------


def test_core_order_list_and_coefficients():
    assert _singlestep_order_list(7, 2, True, True) == [1, 2, 1, 2, 1, 2, 1]
    assert _singlestep_order_list(9, 3, True, False) == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    sig = [4.0, 2.0, 1.0, 0.5]

    def solver(algorithm):
        return {
            "algorithm_type": algorithm,
            "solver_type": "midpoint",
            "prediction_type": "epsilon",
            "thresholding": False,
            "dynamic_thresholding_ratio": 0.995,
            "sample_max_value": 1.0,
            "flow": False,
            "learned_variance": False,
            "sigmas": sig,
        }

    core = _DpmSinglestep(solver("dpmsolver++"), [1, 2, 3])
    # A constant converted output: every order is the first-order step from the group start.
    c3 = core.coefficients(2, 3)
    a = [1 / math.sqrt(s * s + 1) for s in sig]
    lam = [math.log(1 / s) for s in sig]
    h = lam[3] - lam[0]
    assert c3[4] == pytest.approx(sig[3] * a[3] / (sig[0] * a[0]), rel=1e-14)
    assert sum(c3[5:8]) == pytest.approx(-a[3] * math.expm1(-h), rel=1e-12)
    with pytest.raises(ValueError, match="order 3 is not possible"):
        core.coefficients(1, 3)
    with pytest.raises(ValueError, match="past the end"):
        core.coefficients(3, 1)
    with pytest.raises(ValueError, match="sde-dpmsolver"):
        _DpmSinglestep(solver("sde-dpmsolver"), [1, 2, 3])


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input():
    r = RS()
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        r.step(x, 999, x)
    with pytest.raises(ValueError, match="exactly one"):
        r.set_timesteps()
    with pytest.raises(ValueError, match="exactly one"):
        r.set_timesteps(5, timesteps=[10, 5])
    with pytest.raises(ValueError, match="mu"):
        r.set_timesteps(5, mu=0.5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        r.set_timesteps(0)
    with pytest.raises(ValueError, match="timesteps"):
        RS(use_karras_sigmas=True).set_timesteps(timesteps=[900, 100])
    with pytest.raises(ValueError, match="timesteps"):
        r.set_timesteps(timesteps=[100, 900])
    r.set_timesteps(4)
    with pytest.raises(ValueError, match="shape"):
        r.step(np.zeros((1, 3, 4, 5), np.float32), r.timesteps[0], x)
    with pytest.raises(TypeError, match="dtype"):
        r.step(x.astype(np.int32), r.timesteps[0], x)
    with pytest.raises(TypeError):
        r.step([0.0], r.timesteps[0], x)
    with pytest.raises(TypeError, match="mixes"):
        r.step(torch.zeros(1, 3, 4, 4), r.timesteps[0], x)
    x = r.step(x, r.timesteps[0], x).prev_sample
    # The group's second step needs the group's start sample.
    r.sample = None
    with pytest.raises(ValueError, match="group"):
        r.step(x, r.timesteps[1], x)
    r.set_timesteps(4)
    for t in r.timesteps:
        x = r.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="steps are done"):
        r.step(x, r.timesteps[-1], x)
    s = RS(algorithm_type="sde-dpmsolver++")
    s.set_timesteps(3)
    with pytest.raises(ValueError, match="variance_noise"):
        s.step(x, s.timesteps[0], x, variance_noise=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="solver_order"):
        RS(solver_order=4)
    with pytest.raises(ValueError, match="algorithm_type"):
        RS(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        RS(algorithm_type="dpmsolver", final_sigmas_type="zero")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        RS(final_sigmas_type="one")
    with pytest.raises(ValueError, match="prediction_type"):
        RS(
            prediction_type="flow_prediction",
            algorithm_type="dpmsolver",
            final_sigmas_type="sigma_min",
        )
    with pytest.raises(ValueError, match="prediction_type"):
        RS(prediction_type="x0")
    with pytest.raises(ValueError, match="solver_type"):
        RS(solver_type="euler")
    with pytest.raises(ValueError, match="only one"):
        RS(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="sample_max_value"):
        RS(thresholding=True, sample_max_value=0.0).set_timesteps(3)


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

from conftest import loop_on_cpu_and_emulated
from test_dpm_multistep import DTYPES

LOOPS = {
    # orders 2 and 3 update from the group's start sample (self.sample)
    "dpmsolver++ singlestep 2": (lambda: RS(solver_order=2), lambda: None),
    "dpmsolver singlestep 3": (
        lambda: RS(solver_order=3, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        lambda: None,
    ),
    "dpmsolver++ singlestep 3 thresholding": (
        lambda: RS(solver_order=3, thresholding=True, sample_max_value=1.5),
        lambda: None,
    ),
    "sde-dpmsolver++ singlestep 2": (
        lambda: RS(solver_order=2, algorithm_type="sde-dpmsolver++"),
        lambda: torch.Generator().manual_seed(6),
    ),
}


@pytest.mark.parametrize("name", list(LOOPS))
@pytest.mark.parametrize("dt", ["f32", "f16", "bf16"])
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
    """A repeated timestep (linspace over nearly every training timestep, as diffusers has it):
    a step whose points repeat updates at first order from the current sample, so rdiff
    equals diffusers while diffusers is finite and stays finite."""
    from conftest import check_repeated_timesteps

    import rdiff.diffusers

    cfg = dict(num_train_timesteps=n_train, solver_order=order, algorithm_type=algorithm)
    if algorithm == "dpmsolver":
        cfg["final_sigmas_type"] = "sigma_min"
    check_repeated_timesteps(
        rdiff.diffusers.DPMSolverSinglestepScheduler(**cfg),
        diffusers.DPMSolverSinglestepScheduler(**cfg),
        n,
    )
