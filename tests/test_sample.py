"""rdiff.sample (the DPM-Solver reference sampler) and rdiff.model_wrapper.

Against exact answers: on a Gaussian mixture the optimal ε* is known in closed form, and the
probability-flow ODE in λ = log(α/σ) reads dx/dλ = σ²x − σ·ε*(x; α, σ) with α² = sigmoid(2λ),
σ² = sigmoid(−2λ), independent of the schedule. We integrate it with scipy's DOP853 at
rtol 1e-10 and measure each method's error as the number of steps doubles, with log-SNR
spaced steps (the asymptotic regime is reached at moderate step counts; with uniform time
steps the last step near t_end dominates far longer). What theory says:

- DPM-Solver-k (singlestep, and singlestep_fixed) is a k-th order method: global error
  O(h^k). "singlestep" mixes orders to use exactly `steps` model calls; with steps ≡ 2
  (mod 3) its order-3 run ends with one order-2 step, whose O(h³) local error keeps the
  global order 3 (steps ≡ 0 or 1 end with a first-order step and cap it at 2).
- Multistep order 1 and 2: global order 1 and 2. Multistep order 3 warms up with one
  first-order step, whose O(h²) local error caps the observable global order at 2 (the
  constant is smaller than order 2's, so it is still more accurate).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import rdiff
from rdiff.testing import GaussianMixture

GM = GaussianMixture(
    means=[[-1.0, 0.5, 0.0], [1.0, -0.5, 0.8]], stds=[0.3, 0.5], weights=[0.4, 0.6]
)


def exact_flow(x: np.ndarray, lam_start: float, lam_end: float) -> np.ndarray:
    """The probability-flow ODE solution from λ_start to λ_end (DOP853, rtol 1e-10)."""
    shape = x.shape

    def f(lam, y):
        a = np.sqrt(1.0 / (1.0 + np.exp(-2.0 * lam)))
        s = np.sqrt(1.0 / (1.0 + np.exp(2.0 * lam)))
        xx = y.reshape(shape)
        return (s * s * xx - s * GM.eps_at(xx, a, s)).ravel()

    r = solve_ivp(f, (lam_start, lam_end), x.ravel(), method="DOP853", rtol=1e-10, atol=1e-12)
    assert r.success
    return r.y[:, -1].reshape(shape)


SCHEDULES = {
    "linear_vp": rdiff.NoiseSchedule.linear_vp(),
    "discrete": rdiff.NoiseSchedule.discrete(1000),
}


def eps_model(schedule):
    """model_fn(x, t_continuous) -> ε*: through model_wrapper and the mixture's timestep
    model for the discrete schedule, directly at (α_t, σ_t) for the continuous one."""
    if schedule.kind == "discrete":
        return rdiff.model_wrapper(GM.model(schedule), schedule)
    return lambda x, t: GM.eps_at(x, schedule.alpha_t(np.asarray(t)), schedule.sigma_t(t))


@pytest.fixture(scope="module", params=list(SCHEDULES))
def problem(request):
    sch = SCHEDULES[request.param]
    x = np.random.default_rng(0).standard_normal((6, 3))
    ref = exact_flow(x, float(sch.lambda_t(sch.t_max)), float(sch.lambda_t(sch.t_min)))
    return sch, x, ref


def errors(problem, steps_list, **kw):
    sch, x, ref = problem
    errs, ks = [], []
    for steps in steps_list:
        out, info = rdiff.sample(
            eps_model(sch), x, sch, steps=steps, skip_type="logSNR", return_info=True, **kw
        )
        errs.append(float(np.abs(out - ref).max()))
        ks.append(len(info.orders))
    return np.array(errs), np.array(ks)


def slopes(errs, ks):
    return -np.diff(np.log(errs)) / np.diff(np.log(ks))


ALGS = ["dpmsolver++", "dpmsolver"]
TYPES = ["dpmsolver", "taylor"]


@pytest.mark.parametrize("algorithm", ALGS)
@pytest.mark.parametrize(
    ("order", "solver_type"),
    [(1, "dpmsolver"), (2, "dpmsolver"), (2, "taylor"), (3, "dpmsolver"), (3, "taylor")],
)
def test_singlestep_fixed_converges_at_its_order(problem, order, algorithm, solver_type):
    steps = [order * k for k in (16, 32, 64, 128)]
    errs, ks = errors(
        problem,
        steps,
        method="singlestep_fixed",
        order=order,
        algorithm=algorithm,
        solver_type=solver_type,
    )
    k = slopes(errs, ks)
    assert np.all(np.abs(k[-2:] - order) < 0.2), (errs, k)


@pytest.mark.parametrize("algorithm", ALGS)
@pytest.mark.parametrize("solver_type", TYPES)
@pytest.mark.parametrize(
    ("order", "steps"),
    [(2, [32, 64, 128, 256]), (3, [50, 98, 194, 386])],  # even; ≡ 2 (mod 3)
)
def test_singlestep_fast_converges_at_its_order(problem, order, steps, algorithm, solver_type):
    errs, ks = errors(
        problem,
        steps,
        method="singlestep",
        order=order,
        algorithm=algorithm,
        solver_type=solver_type,
    )
    k = slopes(errs, ks)
    assert np.all(np.abs(k[-2:] - order) < 0.2), (errs, k)


@pytest.mark.parametrize("algorithm", ALGS)
@pytest.mark.parametrize("solver_type", TYPES)
def test_multistep_orders(problem, algorithm, solver_type):
    steps = [48, 96, 192, 384]
    kw = dict(method="multistep", algorithm=algorithm, solver_type=solver_type)
    errs = {o: errors(problem, steps, order=o, **kw) for o in (1, 2, 3)}
    k = {o: slopes(*errs[o]) for o in errs}
    assert np.all(np.abs(k[1][-2:] - 1) < 0.1), errs[1]
    assert np.all(np.abs(k[2][-2:] - 2) < 0.2), errs[2]
    # Order 3: capped at 2 by the first-order warm-up step, but more accurate than order 2.
    assert np.all(np.abs(k[3][-2:] - 2) < 0.2), errs[3]
    assert np.all(errs[3][0] < errs[2][0])


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_meets_its_tolerance(problem, order):
    sch, x, ref = problem
    scale = max(1.0, float(np.abs(ref).max()))
    last_err, last_nfe = np.inf, 0
    for tol in (1e-2, 1e-3, 1e-4):
        out, info = rdiff.sample(
            eps_model(sch),
            x,
            sch,
            method="adaptive",
            order=order,
            atol=tol,
            rtol=tol,
            return_info=True,
        )
        err = float(np.abs(out - ref).max())
        assert err <= 2 * tol * scale, (tol, err)
        assert err < last_err and info.nfe > last_nfe
        # The reference's NFE count: `order` model calls per trial step.
        assert info.nfe == order * (len(info.orders) + info.rejected)
        assert abs(info.timesteps[-1] - sch.t_min) <= 1e-5
        last_err, last_nfe = err, info.nfe


# ---------------------------------------------------------------- reference semantics


def counting(model):
    calls = []

    def f(x, t):
        calls.append(float(np.asarray(t).ravel()[0]))
        return model(x, t)

    return f, calls


def test_step_orders_and_nfe_follow_the_reference():
    sch = SCHEDULES["linear_vp"]
    x = np.random.default_rng(1).standard_normal((2, 3))
    m = eps_model(sch)
    # Multistep: warm-up, and lower_order_final only below 10 steps (diffusers: 15).
    _, info = rdiff.sample(m, x, sch, steps=5, order=3, return_info=True)
    assert info.orders == [1, 2, 3, 2, 1] and info.nfe == 5
    _, info = rdiff.sample(m, x, sch, steps=12, order=3, return_info=True)
    assert info.orders == [1, 2] + [3] * 10 and info.nfe == 12
    _, info = rdiff.sample(m, x, sch, steps=5, order=3, lower_order_final=False, return_info=True)
    assert info.orders == [1, 2, 3, 3, 3]
    # DPM-Solver-fast: orders mixed to use exactly `steps` model calls.
    for steps, orders in [(6, [3, 2, 1]), (7, [3, 3, 1]), (8, [3, 3, 2])]:
        _, info = rdiff.sample(
            m, x, sch, steps=steps, order=3, method="singlestep", return_info=True
        )
        assert info.orders == orders and info.nfe == steps
    _, info = rdiff.sample(m, x, sch, steps=7, order=2, method="singlestep", return_info=True)
    assert info.orders == [2, 2, 2, 1] and info.nfe == 7
    _, info = rdiff.sample(m, x, sch, steps=8, order=3, method="singlestep_fixed", return_info=True)
    assert info.orders == [3, 3] and info.nfe == 6
    # denoise_to_zero: one more call, at t_end.
    f, calls = counting(m)
    _, info = rdiff.sample(f, x, sch, steps=4, denoise_to_zero=True, return_info=True)
    assert info.nfe == 5 == len(calls) and calls[-1] == pytest.approx(sch.t_min)
    assert calls[0] == 1.0


def test_time_range_and_intermediates():
    sch = SCHEDULES["discrete"]
    x = np.random.default_rng(2).standard_normal((2, 3))
    f, calls = counting(eps_model(sch))
    out, inter, info = rdiff.sample(
        f, x, sch, steps=6, t_start=0.8, t_end=0.1, return_intermediate=True, return_info=True
    )
    assert len(inter) == 7 and inter[0] is not None and np.array_equal(inter[-1], out)
    np.testing.assert_allclose(info.timesteps, np.linspace(0.8, 0.1, 7), atol=1e-12)
    assert calls == pytest.approx(list(np.linspace(0.8, 0.1, 7)[:-1]))
    _, inter2 = rdiff.sample(
        f, x, sch, steps=6, method="singlestep", order=3, return_intermediate=True
    )
    assert len(inter2) == 3


def test_dynamic_thresholding_fused_equals_a_callable():
    sch = SCHEDULES["linear_vp"]
    x = 3.0 * np.random.default_rng(3).standard_normal((4, 3, 4, 4))
    gm = GaussianMixture.single(0.0, 2.0, 48)

    def model(x, t):
        return gm.eps_at(x, sch.alpha_t(np.asarray(t)), sch.sigma_t(np.asarray(t)))

    ratio, max_val = 0.9, 1.5

    def thresh(x0, t):
        s = np.quantile(np.abs(x0).reshape(x0.shape[0], -1), ratio, axis=1)
        s = np.maximum(s, max_val).reshape(-1, 1, 1, 1)
        return np.clip(x0, -s, s) / s

    kw = dict(
        steps=8,
        order=3,
        thresholding_max_val=max_val,
        dynamic_thresholding_ratio=ratio,
        denoise_to_zero=True,
    )
    for method in ("multistep", "singlestep"):
        fused = rdiff.sample(
            model, x, sch, correcting_x0_fn="dynamic_thresholding", method=method, **kw
        )
        viafn = rdiff.sample(model, x, sch, correcting_x0_fn=thresh, method=method, **kw)
        plain = rdiff.sample(model, x, sch, method=method, **kw)
        np.testing.assert_allclose(fused, viafn, rtol=1e-10, atol=1e-12)
        assert np.abs(fused - plain).max() > 1e-2
        assert np.abs(fused).max() <= 1.0 + 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_torch_in_torch_out(dtype):
    sch = SCHEDULES["discrete"]
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = rdiff.model_wrapper(GM.model(sch), sch)
    want = rdiff.sample(model, x.numpy(), sch, steps=10, order=2)
    got = rdiff.sample(model, x.to(dtype), sch, steps=10, order=2)
    assert isinstance(got, torch.Tensor) and got.dtype == dtype and got.shape == x.shape
    tol = {torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
    np.testing.assert_allclose(got.double().numpy(), want, atol=tol[dtype])


def test_numpy_dtypes():
    sch = SCHEDULES["linear_vp"]
    x = np.random.default_rng(4).standard_normal((3, 3))
    m = eps_model(sch)
    ref = rdiff.sample(m, x, sch, steps=8)
    out32 = rdiff.sample(m, x.astype(np.float32), sch, steps=8)
    assert isinstance(out32, np.ndarray) and out32.dtype == np.float32
    np.testing.assert_allclose(out32, ref, atol=1e-4)


@pytest.mark.parametrize(
    ("model_type", "prediction"),
    [("x_start", "sample"), ("v", "v_prediction"), ("score", None)],
)
def test_model_wrapper_types_give_the_same_noise(model_type, prediction):
    sch = SCHEDULES["discrete"]
    x = np.random.default_rng(5).standard_normal((4, 3))
    t = np.array([0.9, 0.5, 0.2, 0.05])
    eps = rdiff.model_wrapper(GM.model(sch), sch)(x, t)
    if prediction is None:

        def net(x, t_input):
            a, s = GM.alpha_sigma(t_input, sch)
            return -GM.eps_at(x, a, s) / s[:, None]

    else:
        net = GM.model(sch, prediction_type=prediction)
    got = rdiff.model_wrapper(net, sch, model_type=model_type)(x, t)
    np.testing.assert_allclose(got, eps, rtol=1e-9, atol=1e-9)


def test_model_wrapper_time_input():
    seen = []
    for sch, want in [
        (rdiff.NoiseSchedule.discrete(1000), [999.0, 0.0]),
        (rdiff.NoiseSchedule.linear_vp(), [1.0, 1e-3]),
    ]:
        seen.clear()
        f = rdiff.model_wrapper(lambda x, t: seen.append(np.asarray(t)) or 0 * x, sch)
        f(np.zeros((2, 1)), np.array([1.0, sch.t_min]))
        np.testing.assert_allclose(seen[0], want, atol=1e-9)


def test_classifier_free_guidance_batches_cond_and_uncond():
    sch = SCHEDULES["linear_vp"]
    calls = []

    def net(x, t, cond):
        calls.append(x.shape[0])
        return x * 0.5 + cond[:, None]

    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    f = rdiff.model_wrapper(
        net,
        sch,
        guidance_type="classifier-free",
        condition=cond,
        unconditional_condition=uncond,
        guidance_scale=3.0,
    )
    x = torch.ones(2, 4)
    out = f(x, torch.full((2,), 0.5))
    assert calls == [4]
    torch.testing.assert_close(out, 0.5 * x + 3.0 * cond[:, None])
    g = rdiff.model_wrapper(
        net, sch, guidance_type="classifier-free", condition=cond, unconditional_condition=None
    )
    torch.testing.assert_close(g(x, torch.full((2,), 0.5)), 0.5 * x + cond[:, None])
    xn = np.ones((2, 4))
    fn = rdiff.model_wrapper(
        lambda x, t, c: x * 0.5 + c[:, None],
        sch,
        guidance_type="classifier-free",
        condition=np.array([1.0, 2.0]),
        unconditional_condition=np.zeros(2),
        guidance_scale=3.0,
    )
    np.testing.assert_allclose(fn(xn, np.full(2, 0.5)), 0.5 * xn + 3.0 * np.array([[1.0], [2.0]]))


def test_classifier_guidance_uses_autograd():
    sch = SCHEDULES["linear_vp"]
    c = torch.tensor([[1.0, -1.0]])

    def classifier(x, t, cond):  # log p(c | x) = −‖x − c‖²/2 → ∇ = c − x
        return -0.5 * ((x - cond) ** 2).sum(dim=1)

    f = rdiff.model_wrapper(
        lambda x, t: torch.zeros_like(x),
        sch,
        guidance_type="classifier",
        condition=c,
        classifier_fn=classifier,
        guidance_scale=2.0,
    )
    x = torch.tensor([[0.5, 0.5]])
    t = torch.tensor([0.3])
    sigma = float(sch.sigma_t(0.3))
    torch.testing.assert_close(f(x, t), -2.0 * sigma * (c - x))
    # inside rdiff.sample (torch.no_grad) the gradient is still taken
    out = rdiff.sample(f, torch.randn(1, 2), sch, steps=3)
    assert torch.isfinite(out).all()
    with pytest.raises(TypeError, match="torch"):
        f(np.zeros((1, 2)), np.array([0.3]))
    with pytest.raises(ValueError, match="classifier_fn"):
        rdiff.model_wrapper(lambda x, t: x, sch, guidance_type="classifier")


def test_bad_input():
    sch = SCHEDULES["linear_vp"]
    x = np.zeros((1, 3))
    m = eps_model(sch)
    bad = [
        dict(method="euler"),
        dict(order=4),
        dict(order=0),
        dict(method="singlestep_fixed", order=3, steps=2),
        dict(method="multistep", order=3, steps=2),
        dict(t_start=0.5, t_end=0.5),
        dict(t_start=0.2, t_end=0.5),
        dict(t_start=1.5),
        dict(method="adaptive", order=1),
        dict(method="adaptive", return_intermediate=True),
        dict(algorithm="dpmsolver+++"),
        dict(skip_type="uniform"),
        dict(solver_type="heun"),
        dict(correcting_x0_fn="clip"),
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            rdiff.sample(m, x, sch, **kw)
    with pytest.raises(ValueError, match="shape"):
        rdiff.sample(lambda x, t: np.zeros((2, 3)), x, sch, steps=2)
    with pytest.raises(TypeError):
        rdiff.sample(m, [[0.0, 0.0, 0.0]], sch)
    with pytest.raises(TypeError):
        rdiff.sample(lambda x, t: torch.zeros(1, 3), x, sch, steps=2)
    # Tolerances no float32 sample can meet: the step size collapses. An error, not a loop
    # that crawls on for ever (found by fuzzing).
    x32 = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    calls = []

    def model(x, t):
        calls.append(t)
        return 0.1 * x

    with pytest.raises(ValueError, match=r"step size fell to .* loosen them"):
        rdiff.sample(model, x32, sch, steps=5, method="adaptive", atol=1e-30, rtol=1e-30)
    assert len(calls) < 1000


# ---------------------------------------------------------------- the CUDA kernels (emulated)

from conftest import assert_bit_equal, on_cpu_and_emulated


@pytest.mark.parametrize(
    ("method", "order", "kw"),
    [
        ("multistep", 2, {}),
        ("multistep", 3, {"correcting_x0_fn": "dynamic_thresholding"}),
        ("singlestep", 3, {"algorithm": "dpmsolver"}),
        ("singlestep_fixed", 2, {"solver_type": "taylor"}),
        ("adaptive", 2, {}),
        ("adaptive", 3, {"algorithm": "dpmsolver"}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_on_the_kernels_equals_the_cpu_bit_for_bit(method, order, kw, dtype):
    """rdiff.sample runs every update (and the adaptive solver's error norm) through the CUDA
    kernels on the path CUDA tensors take; on the emulated launcher it gives the CPU's bits."""
    sch = SCHEDULES["discrete"]
    x = torch.randn(4, 3, 5, 7, generator=torch.Generator().manual_seed(2)).to(dtype)

    def model(x, t):
        return (torch.tanh(x.float() * 0.8) * 0.9 + 0.01 * t.float().reshape(-1, 1, 1, 1)).to(
            x.dtype
        )

    def run():
        return rdiff.sample(model, x, sch, steps=9, order=order, method=method, **kw)

    cpu, emu = on_cpu_and_emulated(run)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, method)


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
