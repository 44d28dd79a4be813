"""rdiff.k against k-diffusion (PyPI `k-diffusion`, the oracle): σ schedules, every sampler's
output and noise draws, and each sampler on the CUDA kernels (emulated) equal to the CPU."""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types

import numpy as np
import pytest
import torch

import rdiff
from rdiff.testing import GaussianMixture

GM = GaussianMixture(
    means=[[-1.0, 0.5, 0.0], [1.0, -0.5, 0.8]], stds=[0.3, 0.5], weights=[0.4, 0.6]
)


def _kdiffusion_sampling():
    """k_diffusion.sampling; without k-diffusion's heavy optional imports (torchvision, clip,
    …) the package __init__ fails, so load sampling.py alone with a minimal utils module."""
    try:
        from k_diffusion import sampling

        return sampling
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    pkg = types.ModuleType("_kd_oracle")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("_kd_oracle.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.setdefault("_kd_oracle", pkg)
    sys.modules.setdefault("_kd_oracle.utils", utils)
    path = spec.submodule_search_locations[0] + "/sampling.py"
    sspec = importlib.util.spec_from_file_location("_kd_oracle.sampling", path)
    mod = importlib.util.module_from_spec(sspec)
    try:
        sspec.loader.exec_module(mod)
    except ImportError as e:  # torchsde / torchdiffeq missing
        pytest.skip(f"k_diffusion.sampling cannot be imported: {e}")
    return mod


@pytest.fixture(scope="module")
def kd():
    return _kdiffusion_sampling()


def denoiser(x, sigma):
    """The exact D(x; σ) = E[x₀ | x₀ + σ n = x] of the mixture, in x's dtype."""
    n = x.shape[0]
    out = GM.x0_at(x.double().numpy(), np.ones(n), sigma.double().numpy())
    return torch.from_numpy(out).to(x.dtype)


def test_sigma_schedules_match(kd):
    for n in (1, 5, 30):
        torch.testing.assert_close(
            rdiff.k.get_sigmas_karras(n, 0.03, 14.6), kd.get_sigmas_karras(n, 0.03, 14.6)
        )
        torch.testing.assert_close(
            rdiff.k.get_sigmas_exponential(n, 0.03, 14.6),
            kd.get_sigmas_exponential(n, 0.03, 14.6),
        )


def _x(seed=0, batch=4):
    return torch.randn(batch, 3, generator=torch.Generator().manual_seed(seed)) * 20.0


DETERMINISTIC = [
    ("sample_euler", {}),
    ("sample_heun", {}),
    ("sample_dpmpp_2m", {}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
    ("sample_dpmpp_3m_sde", {"eta": 0.0}),
    ("sample_euler_ancestral", {"eta": 0.0}),
    ("sample_dpm_2", {}),
    ("sample_dpm_2_ancestral", {"eta": 0.0}),
    ("sample_lms", {}),
    ("sample_lms", {"order": 2}),
    ("sample_lms", {"order": 7}),
    ("sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    ("sample_dpmpp_sde", {"eta": 0.0}),
    ("sample_dpmpp_sde", {"eta": 0.0, "r": 0.3}),
]


@pytest.mark.parametrize(("name", "kw"), DETERMINISTIC)
@pytest.mark.parametrize("schedule", ["karras", "exponential"])
def test_k_deterministic_samplers_match_k_diffusion(kd, name, kw, schedule):
    make = kd.get_sigmas_karras if schedule == "karras" else kd.get_sigmas_exponential
    sigmas = make(12, 0.02, 20.0)
    x = _x()
    seen = []
    torch.manual_seed(7)
    want = getattr(kd, name)(denoiser, x, sigmas, disable=True, **kw)
    torch.manual_seed(7)
    got = getattr(rdiff.k, name)(
        denoiser, x, sigmas, disable=True, callback=lambda d: seen.append(d), **kw
    )
    assert got.dtype == torch.float32
    assert (got - want).abs().max().item() <= 1e-5
    assert [d["i"] for d in seen] == list(range(12))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}


@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpm_2"])
def test_k_churn_draws_like_k_diffusion(kd, name):
    sigmas = kd.get_sigmas_karras(10, 0.02, 20.0)
    x = _x(1)
    kw = dict(s_churn=5.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.003)
    torch.manual_seed(3)
    want = getattr(kd, name)(denoiser, x, sigmas, disable=True, **kw)
    torch.manual_seed(3)
    got = getattr(rdiff.k, name)(denoiser, x, sigmas, disable=True, **kw)
    # 10⁻⁶ of the starting sample's size (~40): k-diffusion forms σ̂ and DPM2's midpoint with
    # torch's float32 log and exp, whose last bit differs by CPU; rdiff in float64
    assert (got - want).abs().max().item() <= 1e-6 * float(x.abs().max())


STOCHASTIC = [
    ("sample_euler_ancestral", {}),
    ("sample_euler_ancestral", {"eta": 0.7, "s_noise": 1.01}),
    ("sample_dpmpp_2m_sde", {}),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5}),
    ("sample_dpmpp_3m_sde", {}),
    ("sample_dpmpp_3m_sde", {"eta": 0.5, "s_noise": 0.9}),
    ("sample_dpm_2_ancestral", {}),
    ("sample_dpm_2_ancestral", {"eta": 0.7, "s_noise": 1.01}),
    ("sample_dpmpp_2s_ancestral", {}),
    ("sample_dpmpp_2s_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("sample_dpmpp_sde", {}),
    ("sample_dpmpp_sde", {"eta": 0.5, "s_noise": 1.01, "r": 0.3}),
]


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde, in both libraries
@pytest.mark.parametrize(("name", "kw"), STOCHASTIC)
def test_k_sde_samplers_draw_the_same_noise(kd, name, kw):
    """Default noise samplers under the same torch seed (the Brownian tree needs torchsde,
    which k_diffusion.sampling imports anyway)."""
    sigmas = kd.get_sigmas_karras(12, 0.02, 20.0)
    x = _x(2)
    torch.manual_seed(11)
    want = getattr(kd, name)(denoiser, x, sigmas, disable=True, **kw)
    torch.manual_seed(11)
    got = getattr(rdiff.k, name)(denoiser, x, sigmas, disable=True, **kw)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("name", "kw"), STOCHASTIC)
def test_k_sde_samplers_with_an_explicit_noise_sampler(kd, name, kw):
    sigmas = kd.get_sigmas_exponential(9, 0.05, 10.0)
    x = _x(3, batch=2)

    def make_sampler():
        g = torch.Generator().manual_seed(5)
        return lambda sigma, sigma_next: torch.randn(x.shape, generator=g)

    want = getattr(kd, name)(denoiser, x, sigmas, disable=True, noise_sampler=make_sampler(), **kw)
    got = getattr(rdiff.k, name)(
        denoiser, x, sigmas, disable=True, noise_sampler=make_sampler(), **kw
    )
    assert (got - want).abs().max().item() <= 1e-5


FAST = [
    ((0.02, 20.0, 10), {}),
    ((0.02, 20.0, 9), {}),
    ((0.05, 10.0, 1), {}),
    ((0.05, 10.0, 2), {}),
    ((0.02, 20.0, 7), {"eta": 0.5, "s_noise": 1.01}),
]


@pytest.mark.parametrize(("args", "kw"), FAST)
def test_k_dpm_fast_matches_k_diffusion(kd, args, kw):
    x = _x(6)
    torch.manual_seed(5)
    want = kd.sample_dpm_fast(denoiser, x, *args, disable=True, **kw)
    torch.manual_seed(5)
    seen = []
    got = rdiff.k.sample_dpm_fast(
        denoiser, x, *args, disable=True, callback=lambda d: seen.append(d), **kw
    )
    # (one step over the whole range, n = 2, forms terms of the sample's size ~40 in float32)
    assert (got - want).abs().max().item() <= 1e-6 * max(1.0, x.abs().max().item())
    assert {"sigma", "sigma_hat", "x", "i", "t", "t_up", "denoised"} <= set(seen[0])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_k_dpm_solver_steps_match_k_diffusion(kd, order):
    """One DPM-Solver step of each order, on the same ε cache, equal to k-diffusion's."""
    x = _x(7)
    t, t_next = torch.tensor(-math.log(8.0)), torch.tensor(-math.log(2.5))
    ref = kd.DPMSolver(denoiser)
    want, _ = getattr(ref, f"dpm_solver_{order}_step")(x, t, t_next)
    loop = rdiff.k._Loop(x, [8.0, 2.5])
    solver = rdiff.k._KDpmSolver(loop, denoiser, {}, rdiff.k._NoBar())
    got = loop.comb(solver.step(order, x, t, t_next, {}))
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    ("kw", "rel"),
    [
        ({"order": 2}, 1e-5),
        ({"eta": 0.5, "rtol": 0.02}, 1e-4),
        ({"pcoeff": 0.1, "dcoeff": 0.1, "h_init": 0.2}, 1e-4),
        ({}, 5e-3),
    ],
)
def test_k_dpm_adaptive_follows_k_diffusion(kd, kw, rel):
    """The same accepted and rejected steps and the same sample. The PID controller sizes
    each step from the estimated error, the difference of two solutions; at high σ the
    order-2 and order-3 solutions agree to float32 rounding (error ~1e-6, k-diffusion's 0.0
    where rdiff's is 9e-7), so with order 3 the step times differ in their 3rd digit and the
    sample by a few 1e-3 of its size: far inside the solver's own rtol (0.05)."""
    x = _x(8)
    torch.manual_seed(9)
    want, info_w = kd.sample_dpm_adaptive(
        denoiser, x, 0.02, 20.0, disable=True, return_info=True, **kw
    )
    torch.manual_seed(9)
    got, info_g = rdiff.k.sample_dpm_adaptive(
        denoiser, x, 0.02, 20.0, disable=True, return_info=True, **kw
    )
    assert info_g == info_w
    assert (got - want).abs().max().item() <= rel * max(1.0, want.abs().max().item())


def test_k_dpm_fast_and_adaptive_refuse_bad_ranges():
    x = _x(0)
    with pytest.raises(ValueError, match="must not be 0"):
        rdiff.k.sample_dpm_fast(denoiser, x, 0.0, 10.0, 5, disable=True)
    with pytest.raises(ValueError, match="at least one"):
        rdiff.k.sample_dpm_fast(denoiser, x, 0.1, 10.0, 0, disable=True)
    with pytest.raises(ValueError, match="order"):
        rdiff.k.sample_dpm_adaptive(denoiser, x, 0.1, 10.0, order=1, disable=True)
    with pytest.raises(ValueError, match="eta must be 0"):
        rdiff.k.sample_dpm_fast(denoiser, x, 10.0, 0.1, 5, eta=0.5, disable=True)


SIGMA_LIST_SAMPLERS = [
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_lms",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
]


@pytest.mark.parametrize("name", SIGMA_LIST_SAMPLERS)
def test_k_samplers_refuse_sigmas_eta_and_churn_that_give_nan(name):
    """Found by fuzzing: k-diffusion returns NaN for sigmas that do not decrease (a step from
    σ = 0, a zero-length step) and for negative eta or s_churn; rdiff raises before any model
    call."""
    x = _x(0)
    calls = []

    def model(x, s, **kw):
        calls.append(s)
        return denoiser(x, s)

    sampler = getattr(rdiff.k, name)
    params = inspect.signature(sampler).parameters
    for sigmas, match in [
        ([0.0, 1.0, 10.0], r"decrease strictly.*σ\[0\] = 0.0 then σ\[1\] = 1.0"),
        ([10.0, 0.0, 1.0, 0.0], r"σ\[1\] = 0.0 then σ\[2\] = 1.0"),
        ([5.0, 5.0, 1.0, 0.0], "decrease strictly"),
        ([0.0, 0.0], "decrease strictly"),
    ]:
        with pytest.raises(ValueError, match=match):
            sampler(model, x, torch.tensor(sigmas), disable=True)
    good = rdiff.k.get_sigmas_karras(4, 0.1, 10.0)
    for arg in ("eta", "s_churn"):
        if arg in params:
            for v in (-1.0, float("nan")):
                with pytest.raises(ValueError, match=f"{arg}: must be a non-negative finite"):
                    sampler(model, x, good, disable=True, **{arg: v})
    with pytest.raises(ValueError, match="x: expected a batch"):
        sampler(model, torch.tensor(1.0), good, disable=True)
    if name == "sample_lms":
        with pytest.raises(ValueError, match="order: must be at least 1, got -1"):
            sampler(model, x, good, disable=True, order=-1)
    assert calls == []
    assert torch.isfinite(sampler(model, x, good, disable=True)).all()


def test_k_brownian_tree_matches(kd):
    x = _x(4)
    a = kd.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=123)
    b = rdiff.k.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=123)
    for s, sn in [(10.0, 5.0), (5.0, 1.0), (1.0, 0.1)]:
        torch.testing.assert_close(a(s, sn), b(s, sn), rtol=0, atol=0)


def test_k_extra_args_and_numpy():
    sigmas = rdiff.k.get_sigmas_karras(6, 0.05, 10.0)
    x = _x(5)
    seen = []

    def model(x, sigma, scale=1.0):
        seen.append(scale)
        return denoiser(x, sigma) * scale

    rdiff.k.sample_dpmpp_2m(model, x, sigmas, extra_args={"scale": 1.0}, disable=True)
    assert seen == [1.0] * 6
    xt = rdiff.k.sample_heun(denoiser, x, sigmas, disable=True)

    def np_denoiser(x, sigma):
        return GM.x0_at(x, np.ones(x.shape[0]), sigma)

    xn = rdiff.k.sample_heun(np_denoiser, x.double().numpy(), sigmas.numpy(), disable=True)
    assert isinstance(xn, np.ndarray)
    np.testing.assert_allclose(xn, xt.double().numpy(), atol=1e-4)
    with pytest.raises(ValueError):
        rdiff.k.sample_dpmpp_2m_sde(denoiser, x, sigmas, solver_type="euler")


# ---------------------------------------------------------------- the CUDA kernels (emulated)

from conftest import assert_bit_equal, on_cpu_and_emulated


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("sample_euler", {"s_churn": 0.5}),
        ("sample_heun", {}),
        ("sample_dpmpp_2m", {}),
        ("sample_dpmpp_2m_sde", {}),
        ("sample_dpmpp_3m_sde", {}),
        ("sample_euler_ancestral", {}),
        ("sample_dpm_2", {}),
        ("sample_dpm_2_ancestral", {}),
        ("sample_lms", {}),
        ("sample_dpmpp_2s_ancestral", {}),
        ("sample_dpmpp_sde", {}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_k_samplers_on_the_kernels_equal_the_cpu_bit_for_bit(name, kw, dtype):
    sigmas = rdiff.k.get_sigmas_karras(8, 0.05, 10.0)
    x = (torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(4)) * 10).to(dtype)

    def model(x, sigma):
        return (torch.tanh(x.float() / (1 + sigma.reshape(-1, 1, 1, 1)))).to(x.dtype)

    def run():
        extra = {}
        if name.endswith(("_sde", "_ancestral")):
            g = torch.Generator().manual_seed(11)
            extra["noise_sampler"] = lambda s, t: torch.randn(x.shape, generator=g).to(dtype)
        torch.manual_seed(3)
        return getattr(rdiff.k, name)(model, x, sigmas, disable=True, **kw, **extra)

    cpu, emu = on_cpu_and_emulated(run)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, name)


@pytest.mark.parametrize("name", ["sample_dpm_fast", "sample_dpm_adaptive"])
def test_k_dpm_solver_samplers_on_the_kernels_equal_the_cpu_bit_for_bit(name):
    x = torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(4)) * 10

    def model(x, sigma):
        return torch.tanh(x / (1 + sigma.reshape(-1, 1, 1, 1)))

    def run():
        g = torch.Generator().manual_seed(11)
        extra = {"noise_sampler": lambda s, t: torch.randn(x.shape, generator=g), "eta": 0.5}
        args = (0.05, 10.0, 8) if name == "sample_dpm_fast" else (0.05, 10.0)
        return getattr(rdiff.k, name)(model, x, *args, disable=True, **extra)

    cpu, emu = on_cpu_and_emulated(run)
    assert torch.isfinite(cpu).all()
    assert_bit_equal(cpu, emu, name)


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
