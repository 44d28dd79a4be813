"""rdiff.testing.GaussianMixture against independent scipy/numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import rdiff
from rdiff.testing import GaussianMixture

torch = pytest.importorskip("torch")


def make_mixture(d: int, diagonal: bool, seed: int = 0) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(3, d))
    stds = rng.uniform(0.3, 1.2, size=(3, d) if diagonal else (3,))
    weights = np.array([0.2, 0.5, 0.3]) * 7.0  # unnormalised on purpose
    return GaussianMixture(means, stds, weights)


def scipy_log_pt(gm: GaussianMixture, x: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """log p_t(x) of the noised mixture, computed independently with scipy."""
    comps = []
    for mu, s, w in zip(gm.means, gm.stds, gm.weights, strict=True):
        cov = np.diag(alpha**2 * s**2 + sigma**2)
        comps.append(np.log(w) + multivariate_normal(alpha * mu, cov).logpdf(x))
    return logsumexp(np.stack(comps, axis=0), axis=0)


ALPHA_SIGMA = [(0.999, 0.0447), (0.8, 0.6), (0.3, np.sqrt(1 - 0.09)), (1e-3, 1.0), (0.0, 1.0)]


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("alpha,sigma", ALPHA_SIGMA)
def test_eps_is_minus_sigma_times_finite_difference_score(d, diagonal, alpha, sigma):
    gm = make_mixture(d, diagonal)
    rng = np.random.default_rng(1)
    x = alpha * gm.sample_data(6, seed=2) + sigma * rng.standard_normal((6, d))
    h = 1e-5
    grad = np.empty_like(x)
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        grad[:, j] = scipy_log_pt(gm, x + e, alpha, sigma) - scipy_log_pt(gm, x - e, alpha, sigma)
        grad[:, j] /= 2 * h
    eps = gm.eps_at(x, alpha, sigma)
    assert eps.dtype == np.float64 and eps.shape == x.shape
    np.testing.assert_allclose(eps, -sigma * grad, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gm.log_prob_at(x, alpha, sigma), scipy_log_pt(gm, x, alpha, sigma))
    # x0 and v are consistent with eps (where dividing by alpha is harmless)
    x0 = gm.x0_at(x, alpha, sigma)
    if alpha > 0.1:
        np.testing.assert_allclose(x0, (x - sigma * eps) / alpha, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.v_at(x, alpha, sigma), alpha * eps - sigma * x0, atol=1e-12)


def test_alpha_zero_limit():
    gm = make_mixture(3, True)
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_allclose(gm.eps_at(x, 0.0, 1.0), x, rtol=1e-15)
    np.testing.assert_allclose(gm.x0_at(x, 0.0, 1.0), np.tile(gm.data_mean, (4, 1)), atol=1e-14)
    # tiny alpha: x0 stays finite and tends to the data mean
    np.testing.assert_allclose(gm.x0_at(x, 1e-12, 1.0), np.tile(gm.data_mean, (4, 1)), atol=1e-9)


def test_single_gaussian_exact():
    mu, s, d = 0.7, 1.3, 4
    gm = GaussianMixture.single(mu, s, d)
    assert gm.n_components == 1 and gm.dim == d
    x = np.random.default_rng(0).standard_normal((10, d)) * 2
    for alpha, sigma in [(0.9, np.sqrt(1 - 0.81)), (0.05, 0.99), (1.0, 1e-3)]:
        expected = sigma * (x - alpha * mu) / (alpha**2 * s**2 + sigma**2)
        np.testing.assert_allclose(gm.eps_at(x, alpha, sigma), expected, rtol=1e-12, atol=1e-15)
        tr = gm.x0_cov_trace_at(x, alpha, sigma)
        np.testing.assert_allclose(tr, d * s**2 * sigma**2 / (alpha**2 * s**2 + sigma**2))


@pytest.mark.parametrize("alpha,sigma", [(0.95, np.sqrt(1 - 0.95**2)), (0.5, np.sqrt(0.75))])
def test_expected_eps_sq_single_gaussian(alpha, sigma):
    s = 0.6
    gm = GaussianMixture.single(np.array([1.0, -1.0, 0.5]), s, 3)
    est, se = gm.expected_eps_sq(alpha, sigma, n=20000, seed=3)
    exact = sigma**2 / (alpha**2 * s**2 + sigma**2)
    assert se > 0
    assert abs(est - exact) < 4 * se
    assert gm.expected_eps_sq(alpha, sigma, n=500, seed=7) == gm.expected_eps_sq(
        alpha, sigma, n=500, seed=7
    )


def test_analytic_dpm_identity_for_a_mixture():
    """E tr Cov[x0|xt]/d = (σ²/α²)(1 − E‖ε*‖²/d), the identity behind Analytic-DPM."""
    gm = make_mixture(3, True, seed=4)
    alpha, sigma = 0.7, np.sqrt(1 - 0.49)
    n = 40000
    rng = np.random.default_rng(5)
    xt = alpha * gm.sample_data(n, seed=6) + sigma * rng.standard_normal((n, 3))
    e2 = np.square(gm.eps_at(xt, alpha, sigma)).sum(1) / 3
    tr = gm.x0_cov_trace_at(xt, alpha, sigma) / 3
    diff = tr - sigma**2 / alpha**2 * (1 - e2)
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(n)


def test_sample_data_moments_and_determinism():
    gm = make_mixture(3, True, seed=8)
    n = 50000
    x = gm.sample_data(n, seed=11)
    assert x.shape == (n, 3) and x.dtype == np.float64
    np.testing.assert_array_equal(x, gm.sample_data(n, seed=11))
    assert not np.array_equal(x[:10], gm.sample_data(10, seed=12))
    # independent moments from the parameters
    w, mu, s = gm.weights, gm.means, gm.stds
    mean = (w[:, None] * mu).sum(0)
    second = w[:, None, None] * (np.einsum("ki,kj->kij", mu, mu) + np.eye(3) * s[:, None] ** 2)
    cov = second.sum(0) - np.outer(mean, mean)
    np.testing.assert_allclose(gm.data_mean, mean, rtol=1e-14)
    np.testing.assert_allclose(gm.data_cov, cov, rtol=1e-12, atol=1e-14)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 4.5 * se_mean)
    # covariance: compare with a generous multiple of its MC error scale
    emp = np.cov(x, rowvar=False)
    scale = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(emp - cov) < 6 * scale)
    assert gm.sample_data(0).shape == (0, 3)


def test_weights_are_normalised():
    gm = GaussianMixture([[0.0], [1.0]], [1.0, 2.0], [1.0, 3.0])
    np.testing.assert_allclose(gm.weights, [0.25, 0.75])
    np.testing.assert_allclose(gm.stds, [[1.0], [2.0]])
    uniform = GaussianMixture([[0.0], [1.0], [2.0]], 0.5)
    np.testing.assert_allclose(uniform.weights, [1 / 3] * 3)


def test_log_prob_integrates_to_one_in_1d():
    gm = GaussianMixture([[-2.0], [0.5], [3.0]], [0.4, 1.0, 0.7], [0.3, 0.5, 0.2])
    grid = np.linspace(-12, 12, 40001)
    p = np.exp(gm.log_prob(grid[:, None]))
    assert abs(np.trapezoid(p, grid) - 1.0) < 1e-8


def test_log_prob_matches_scipy_d3():
    gm = make_mixture(3, True, seed=9)
    x = np.random.default_rng(2).normal(size=(20, 3)) * 3
    np.testing.assert_allclose(gm.log_prob(x), scipy_log_pt(gm, x, 1.0, 0.0), rtol=1e-12)
    # image-shaped input: (n, 1, 3, 1) flattens to (n, 3)
    np.testing.assert_allclose(gm.log_prob(x.reshape(20, 1, 3, 1)), gm.log_prob(x))


def test_image_shaped_and_per_sample_alpha_sigma():
    gm = make_mixture(12, True, seed=1)
    x = np.random.default_rng(3).standard_normal((5, 3, 2, 2)).astype(np.float32)
    alpha = np.linspace(0.1, 0.99, 5)
    sigma = np.sqrt(1 - alpha**2)
    out = gm.eps_at(x, alpha, sigma)
    assert out.shape == x.shape and out.dtype == np.float64
    for i in range(5):
        row = gm.eps_at(x[i : i + 1].reshape(1, 12), alpha[i], sigma[i])
        np.testing.assert_array_equal(out[i].reshape(1, 12), row)


def test_eps_with_discrete_schedule_uses_sqrt_alphas_cumprod():
    gm = make_mixture(4, False)
    sched = rdiff.NoiseSchedule.discrete(1000)
    ac = sched.alphas_cumprod
    x = np.random.default_rng(0).standard_normal((3, 4))
    for t in [0, 17, 500, 999]:
        a, s = np.sqrt(ac[t]), np.sqrt(1 - ac[t])
        np.testing.assert_array_equal(gm.eps(x, t, sched), gm.eps_at(x, a, s))
        np.testing.assert_array_equal(gm.x0(x, t, sched), gm.x0_at(x, a, s))
        np.testing.assert_array_equal(gm.v(x, t, sched), gm.v_at(x, a, s))
    ts = np.array([999, 10, 400])
    per = gm.eps(x, ts, sched)
    for i, t in enumerate(ts):
        np.testing.assert_array_equal(per[i], gm.eps(x[i : i + 1], int(t), sched)[0])
    # non-integer timesteps use the continuous view, which agrees at the integers
    np.testing.assert_allclose(gm.eps(x, 500.0 + 1e-9, sched), gm.eps(x, 500, sched), rtol=1e-6)


def test_eps_with_linear_vp_schedule_is_continuous_time():
    gm = make_mixture(2, True)
    vp = rdiff.NoiseSchedule.linear_vp()
    x = np.random.default_rng(0).standard_normal((3, 2))
    t = np.array([0.01, 0.5, 1.0])
    a, s = vp.alpha_t(t), vp.sigma_t(t)
    np.testing.assert_array_equal(gm.eps(x, t, vp), gm.eps_at(x, a, s))
    with pytest.raises(ValueError, match="t"):
        gm.eps(x, 2.0, vp)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_model_with_torch_tensors(dtype):
    gm = make_mixture(12, True, seed=2)
    sched = rdiff.NoiseSchedule.discrete(
        1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    tdt = getattr(torch, dtype)
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0)).to(tdt)
    t = torch.tensor(700)
    xf = x.to(torch.float64).numpy()
    ac = sched.alphas_cumprod[700]
    a, s = np.sqrt(ac), np.sqrt(1 - ac)
    tol = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-6, "float64": 1e-15}[dtype]
    for pred, expected in [
        ("epsilon", gm.eps_at(xf, a, s)),
        ("sample", gm.x0_at(xf, a, s)),
        ("v_prediction", a * gm.eps_at(xf, a, s) - s * gm.x0_at(xf, a, s)),
    ]:
        out = gm.model(sched, prediction_type=pred)(x, t)
        assert isinstance(out, torch.Tensor) and out.dtype == tdt and out.shape == x.shape
        np.testing.assert_allclose(out.to(torch.float64).numpy(), expected, rtol=tol, atol=tol)
    out = gm.model(sched, dtype=torch.float64)(x, 700)
    assert out.dtype == torch.float64


def test_model_with_numpy_and_per_sample_timesteps():
    gm = make_mixture(2, False)
    sched = rdiff.NoiseSchedule.discrete(1000)
    model = gm.model(sched, "sample")
    x = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    out = model(x, np.array([5, 500, 995]))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, gm.x0(x, [5, 500, 995], sched).astype(np.float32))
    out_t = model(torch.from_numpy(x), torch.tensor([5, 500, 995]))
    np.testing.assert_array_equal(out_t.numpy(), out)
    assert gm.model(sched, dtype="float64")(x, 3).dtype == np.float64


def test_bad_input_raises():
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([[0.0, 1.0]], [-1.0])
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([[0.0, 1.0]], [0.0])
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([[0.0, 1.0], [1.0, 1.0]], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.0, -2.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([[np.nan, 1.0]], [1.0])
    with pytest.raises(TypeError, match="means"):
        GaussianMixture([["a", "b"]], [1.0])
    with pytest.raises(TypeError, match="stds"):
        GaussianMixture([[0.0, 1.0]], "wide")
    gm = make_mixture(3, False)
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="x"):
        gm.eps_at(np.zeros((2, 4)), 0.5, 0.5)
    with pytest.raises(ValueError, match="x"):
        gm.eps_at(np.zeros(3), 0.5, 0.5)
    with pytest.raises(ValueError, match="x"):
        gm.log_prob(np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="x"):
        gm.eps_at(np.array([["a", "b", "c"]]), 0.5, 0.5)
    with pytest.raises(TypeError, match="x"):
        gm.eps_at(torch.zeros(2, 3, dtype=torch.bool), 0.5, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        gm.eps_at(x, -0.1, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        gm.eps_at(x, [0.5, 0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match="sigma"):
        gm.eps_at(x, 0.5, np.inf)
    with pytest.raises(ValueError, match="alpha, sigma"):
        gm.eps_at(x, 0.0, 0.0)
    with pytest.raises(ValueError, match="x"):
        gm.eps_at(np.full((2, 3), np.nan), 0.5, 0.5)
    sched = rdiff.NoiseSchedule.discrete(1000)
    with pytest.raises(ValueError, match="t"):
        gm.eps(x, 1000, sched)
    with pytest.raises(ValueError, match="t"):
        gm.eps(x, -1, sched)
    with pytest.raises(TypeError, match="schedule"):
        gm.eps(x, 10, "linear")
    with pytest.raises(ValueError, match="prediction_type"):
        gm.model(sched, prediction_type="eps")
    with pytest.raises(ValueError, match="n"):
        gm.sample_data(-1)
    with pytest.raises(TypeError, match="n"):
        gm.sample_data(2.5)
    with pytest.raises(ValueError, match="dim"):
        GaussianMixture.single(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="mean"):
        GaussianMixture.single([0.0, 1.0], 1.0, 3)


def test_core_class_validates_too():
    core = rdiff._rdiff._GaussianMixture(np.zeros((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="x"):
        core.predict(np.zeros((2, 4)), np.ones(1), np.ones(1), "epsilon")
    with pytest.raises(ValueError, match="prediction_type"):
        core.predict(np.zeros((2, 3)), np.ones(1), np.ones(1), "noise")
    with pytest.raises(ValueError, match="stds"):
        rdiff._rdiff._GaussianMixture(np.zeros((2, 3)), np.ones((2, 2)))


def test_reexported():
    assert rdiff.testing.GaussianMixture is GaussianMixture


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
