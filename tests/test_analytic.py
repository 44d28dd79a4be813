"""Analytic-DPM: the Γ estimator, GammaTable, the scheduler and the optimal trajectory.

Checked against exact answers (Gaussian data, whose Γ and optimal variance are closed form),
against diffusers' DDPMScheduler (the DDPM-form mean and, with Γ ≡ 1, the whole loop), and
against brute force (the trajectory dynamic program).
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest

import rdiff
from rdiff.testing import GaussianMixture

torch = pytest.importorskip("torch")

N = 1000


@pytest.fixture(scope="module")
def schedule():
    return rdiff.NoiseSchedule.discrete(N)


def gaussian_gamma(ac: np.ndarray, s: float) -> np.ndarray:
    """Γ_t = β̄_t/(ᾱ_t s² + β̄_t) for N(μ, s² I) data and the exact ε*."""
    return (1 - ac) / (ac * s * s + 1 - ac)


def closed_form_variances(ac, ts, gamma, form, eta, cov_max, cap):
    """σ² of the paper, step by step in numpy (the last step 0, the second-to-last capped)."""
    out = []
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_s = ac[ts[i + 1]] if i + 1 < len(ts) else 1.0
        if i + 1 == len(ts):
            out.append(0.0)
            continue
        bt, bs = 1 - a_t, 1 - a_s
        lam2 = bs / bt * (1 - a_t / a_s)
        if form == "ddim":
            lam2 *= eta**2
        cov = np.clip(bt / a_t * (1 - gamma[t]), 0, cov_max)
        coef = (math.sqrt(a_s) - math.sqrt((bs - lam2) * a_t / bt)) ** 2
        v = lam2 + coef * cov
        if cap is not None and i + 2 == len(ts):
            v = min(v, cap)
        out.append(v)
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# Exact answers


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_estimate_gamma_matches_gaussian_closed_form(schedule, framework):
    s = 0.5
    gm = GaussianMixture.single(0.3, s, 8)
    data = gm.sample_data(2000, seed=3)
    if framework == "torch":
        data = torch.from_numpy(data).float()
    else:
        data = data.astype(np.float32)
    ts = [0, 1, 20, 100, 300, 500, 700, 999]
    table = rdiff.estimate_gamma(
        gm.model(schedule), data, schedule, timesteps=ts, batch_size=256, seed=5, progress=False
    )
    assert table.timesteps.tolist() == ts
    assert table.count.tolist() == [2000] * len(ts)
    exact = gaussian_gamma(schedule.alphas_cumprod[ts], s)
    assert np.all(table.stderr > 0)
    z = np.abs(table.gamma - exact) / table.stderr
    assert np.all(z < 4), (table.gamma, exact, table.stderr)
    assert "GammaTable(8 timesteps" in repr(table)


def test_estimate_gamma_prediction_types_agree(schedule):
    gm = GaussianMixture.single(0.0, 0.7, 6)
    data = gm.sample_data(128, seed=1).astype(np.float64)
    ts = [5, 400, 900]
    tabs = [
        rdiff.estimate_gamma(
            gm.model(schedule, prediction_type=p),
            data,
            schedule,
            timesteps=ts,
            progress=False,
            prediction_type=p,
        )
        for p in ("epsilon", "sample", "v_prediction")
    ]
    for t in tabs[1:]:
        np.testing.assert_allclose(t.gamma, tabs[0].gamma, rtol=2e-4)


@pytest.mark.parametrize(
    ("form", "eta"), [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0)]
)
@pytest.mark.parametrize("trajectory", ["uniform", "quadratic", "optimal"])
def test_scheduler_variances_equal_closed_form(schedule, form, eta, trajectory):
    ac = schedule.alphas_cumprod
    gamma = gaussian_gamma(ac, 0.5)
    sched = rdiff.AnalyticDPMScheduler(gamma=gamma, form=form, eta=eta, trajectory=trajectory)
    sched.set_timesteps(25)
    ts = sched.timesteps
    assert ts.dtype == np.int64 and len(ts) == 25 and np.all(np.diff(ts) < 0)
    cap = (2 * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
    want = closed_form_variances(ac, ts, gamma, form, eta, 1.0, cap)
    assert sched.variances.dtype == np.float64
    np.testing.assert_allclose(sched.variances, want, rtol=1e-10, atol=1e-15)
    assert sched.variances[-1] == 0.0
    # The unclipped form of the paper: λ² + (√(ᾱ_s/ᾱ_t)√β̄_t − √(β̄_s − λ²))²(1 − Γ_t).
    big = rdiff.AnalyticDPMScheduler(
        gamma=gamma, form=form, eta=eta, data_range=(-1e3, 1e3), clip_sigma_pixels=None
    )
    big.set_timesteps(timesteps=ts)
    for i in range(len(ts) - 1):
        t, s_ = ts[i], ts[i + 1]
        a_t, a_s = ac[t], ac[s_]
        lam2 = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s) * (eta**2 if form == "ddim" else 1.0)
        f = math.sqrt(a_s / a_t) * math.sqrt(1 - a_t) - math.sqrt(1 - a_s - lam2)
        assert big.variances[i] == pytest.approx(lam2 + f * f * (1 - gamma[t]), rel=1e-8)


def test_second_to_last_cap_and_covariance_clip(schedule):
    ac = schedule.alphas_cumprod
    gamma = np.zeros(N)  # Cov(x₀|x_t) = β̄/ᾱ, far above the [-1, 1] bound at large t
    sched = rdiff.AnalyticDPMScheduler(gamma=gamma, clip_sigma_pixels=1.0)
    sched.set_timesteps(10)
    cap = (1 * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
    assert sched.variances[-2] == pytest.approx(cap)
    want = closed_form_variances(ac, sched.timesteps, gamma, "ddpm", 0.0, 1.0, cap)
    np.testing.assert_allclose(sched.variances, want, rtol=1e-12)


@pytest.mark.parametrize("k", [10, 25, 50])
def test_analytic_variance_beats_fixed_variances_on_the_elbo(schedule, k):
    """Monte-Carlo estimate of the variational bound terms Σ L_{s|t}, exact model ε*.

    For Gaussian-mixture data the KL between the *true* reverse conditional q(x_s|x_t) and a
    Gaussian is not closed form, but the ELBO's terms are
    L_{s|t} = E_{q(x_0, x_t)} KL(q(x_s|x_t, x_0) ‖ N(μ_θ(x_t), σ² I)), and the inner KL between
    two Gaussians is closed form. We sample (x_0, x_t), evaluate it per sample for each variance
    choice with the same samples (paired), and sum over the steps t → s with s > 0; the prior
    term and the last (decoder) term do not depend on these variances. The analytic σ² must
    beat DDPM's β̃ (λ², "fixed_small") and β (1 − ᾱ_t/ᾱ_s, "fixed_large") by more than four
    standard errors of the paired difference.
    """
    gm = GaussianMixture(
        means=[[-1.0, 0.5, 0.0, 1.0], [1.0, -0.5, 0.5, -1.0]], stds=[0.3, 0.5], weights=[0.4, 0.6]
    )
    model = gm.model(schedule)
    table = rdiff.estimate_gamma(
        model, gm.sample_data(4000, seed=11), schedule, batch_size=4000, seed=1, progress=False
    )
    sched = rdiff.AnalyticDPMScheduler(
        gamma=table, clip_x0=False, data_range=(-50.0, 50.0), clip_sigma_pixels=None
    )
    sched.set_timesteps(k)
    ts, ac, d = sched.timesteps, schedule.alphas_cumprod, gm.dim
    rng = np.random.default_rng(k)
    m = 4000
    totals = {"analytic": np.zeros(m), "beta_tilde": np.zeros(m), "beta": np.zeros(m)}
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        a_t, a_s = ac[t], ac[s]
        beta_ts = 1 - a_t / a_s
        lam2 = (1 - a_s) / (1 - a_t) * beta_ts
        c0 = math.sqrt(a_s) * beta_ts / (1 - a_t)
        cx = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        x0 = gm._sample(m, rng)
        xt = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * rng.standard_normal(x0.shape)
        mu_q = c0 * x0 + cx * xt
        mu_p = c0 * gm.x0(xt, t, schedule) + cx * xt
        dist2 = np.square(mu_q - mu_p).sum(axis=1)
        for name, var in (
            ("analytic", sched.variances[i]),
            ("beta_tilde", lam2),
            ("beta", beta_ts),
        ):
            kl = 0.5 * d * (math.log(var / lam2) + lam2 / var - 1) + dist2 / (2 * var)
            totals[name] += kl
    for other in ("beta_tilde", "beta"):
        diff = totals[other] - totals["analytic"]
        se = diff.std(ddof=1) / math.sqrt(m)
        assert diff.mean() > 4 * se, (k, other, diff.mean(), se)


# ---------------------------------------------------------------------------------------------
# Merging, sharding, torch.distributed


def _shard_setup(schedule, framework):
    gm = GaussianMixture.single(0.2, 0.6, 12)
    data = gm.sample_data(300, seed=2).astype(np.float32)
    if framework == "torch":
        data = torch.from_numpy(data)
    return gm.model(schedule), data


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_merge_of_shards_equals_one_shot_exactly(schedule, framework):
    model, data = _shard_setup(schedule, framework)
    kw = dict(timesteps=[0, 3, 250, 999], batch_size=64, seed=7, progress=False)
    one = rdiff.estimate_gamma(model, data, schedule, **kw)
    a = rdiff.estimate_gamma(model, data[:128], schedule, offset=0, **kw)
    b = rdiff.estimate_gamma(model, data[128:192], schedule, offset=128, **kw)
    c = rdiff.estimate_gamma(model, data[192:], schedule, offset=192, **kw)
    for merged in (a.merge(b).merge(c), c.merge(a.merge(b)), (b + c) + a):
        assert merged == one
        np.testing.assert_array_equal(merged.gamma, one.gamma)
        np.testing.assert_array_equal(merged.stderr, one.stderr)
        np.testing.assert_array_equal(merged.count, one.count)
    # The seed matters; the same seed reproduces.
    assert rdiff.estimate_gamma(model, data, schedule, **kw) == one
    assert rdiff.estimate_gamma(model, data, schedule, **{**kw, "seed": 8}) != one


def test_merge_unites_timesteps_and_refuses_other_schedules(schedule):
    model, data = _shard_setup(schedule, "numpy")
    a = rdiff.estimate_gamma(model, data, schedule, timesteps=[1, 2], progress=False)
    b = rdiff.estimate_gamma(model, data, schedule, timesteps=[2, 3], progress=False)
    m = a.merge(b)
    assert m.timesteps.tolist() == [1, 2, 3]
    assert m.count.tolist() == [300, 600, 300]
    other = rdiff.estimate_gamma(
        model,
        data,
        rdiff.NoiseSchedule.discrete(N, "scaled_linear", 0.00085, 0.012),
        timesteps=[1],
        progress=False,
    )
    with pytest.raises(ValueError, match="another noise schedule"):
        a.merge(other)


def _dist_worker(rank, world, init_file, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        schedule = rdiff.NoiseSchedule.discrete(N)
        model, data = _shard_setup(schedule, "torch")
        lo, hi = (0, 192) if rank == 0 else (192, 300)
        local = rdiff.estimate_gamma(
            model,
            data[lo:hi],
            schedule,
            timesteps=[0, 3, 250, 999],
            batch_size=64,
            seed=7,
            progress=False,
            offset=lo,
        )
        merged = local.all_reduce()
        if rank == 0:
            merged.save(out_path)
    finally:
        dist.destroy_process_group()


def test_two_rank_all_reduce_equals_single_process(schedule, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "merged.npz"
    init = tmp_path / "rendezvous"
    mp.spawn(_dist_worker, args=(2, str(init), str(out)), nprocs=2, join=True)
    model, data = _shard_setup(schedule, "torch")
    one = rdiff.estimate_gamma(
        model, data, schedule, timesteps=[0, 3, 250, 999], batch_size=64, seed=7, progress=False
    )
    merged = rdiff.GammaTable.load(out, schedule=schedule)
    assert merged == one
    np.testing.assert_array_equal(merged.gamma, one.gamma)


# ---------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trip(schedule, tmp_path):
    model, data = _shard_setup(schedule, "numpy")
    tab = rdiff.estimate_gamma(model, data, schedule, timesteps=[4, 9], progress=False)
    p = tmp_path / "g.table"
    tab.save(p)
    back = rdiff.GammaTable.load(p)
    assert back == tab
    assert back.num_train_timesteps == N
    np.testing.assert_array_equal(back.alphas_cumprod, schedule.alphas_cumprod)
    other = rdiff.NoiseSchedule.discrete(N, "squaredcos_cap_v2")
    with pytest.raises(ValueError, match="another noise schedule"):
        rdiff.GammaTable.load(p, schedule=other)
    with pytest.raises(ValueError, match="500"):
        rdiff.GammaTable.load(p, schedule=rdiff.NoiseSchedule.discrete(500))


def test_corrupt_files_raise_weights_error(schedule, tmp_path):
    model, data = _shard_setup(schedule, "numpy")
    tab = rdiff.estimate_gamma(model, data, schedule, timesteps=[4, 9], progress=False)
    good = tmp_path / "good.npz"
    tab.save(good)
    raw = good.read_bytes()
    cases = {
        "missing.npz": None,
        "empty.npz": b"",
        "garbage.npz": b"\x00not a zip file at all" * 10,
        "truncated.npz": raw[: len(raw) // 2],
    }
    z = dict(np.load(good))
    bad_dicts = {
        "nokey.npz": {k: v for k, v in z.items() if k != "sums"},
        "dtype.npz": {**z, "sums": z["sums"].astype(np.float64)},
        "shape.npz": {**z, "count": z["count"][:1]},
        "format.npz": {**z, "format": np.array("something else")},
        "order.npz": {**z, "timesteps": z["timesteps"][::-1].copy()},
        "ac.npz": {**z, "alphas_cumprod": np.full(N, np.nan)},
        "pickle.npz": {**z, "timesteps": np.array([object(), object()], dtype=object)},
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    for name, d in bad_dicts.items():
        with open(tmp_path / name, "wb") as f:
            np.savez(f, **d)
    for name in [*cases, *bad_dicts]:
        with pytest.raises(rdiff.WeightsError, match=r"GammaTable\.load"):
            rdiff.GammaTable.load(tmp_path / name)
    assert issubclass(rdiff.WeightsError, OSError)


# ---------------------------------------------------------------------------------------------
# The optimal trajectory


def _cost(gamma, ac, ts):
    """Σ log(1 − (1 − ᾱ_t/ᾱ_s)·Γ_t/β̄_t) over consecutive (t, s), ts descending."""
    return sum(
        math.log(1 - (1 - ac[t] / ac[s]) * gamma[t] / (1 - ac[t]))
        for t, s in itertools.pairwise(ts)
    )


def test_optimal_trajectory_equals_brute_force():
    n = 11
    betas = np.linspace(0.02, 0.3, n)
    sched = rdiff.NoiseSchedule.discrete(n, trained_betas=betas.tolist())
    ac = sched.alphas_cumprod
    gamma = gaussian_gamma(ac, 0.4)
    for k in range(2, n + 1):
        got = rdiff.optimal_trajectory(gamma, sched, k)
        assert got.dtype == np.int64 and got[0] == n - 1 and got[-1] == 0 and len(got) == k
        assert np.all(np.diff(got) < 0)
        best = min(
            (
                [n - 1, *sorted(mid, reverse=True), 0]
                for mid in itertools.combinations(range(1, n - 1), k - 2)
            ),
            key=lambda ts: _cost(gamma, ac, ts),
        )
        assert _cost(gamma, ac, got) == pytest.approx(_cost(gamma, ac, best), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("k", [2, 10, 25, 100])
def test_optimal_trajectory_never_worse_than_uniform(schedule, k):
    ac = schedule.alphas_cumprod
    gm = GaussianMixture(means=[[-1.0, 0.5], [1.0, -0.5]], stds=[0.2, 0.4])
    table = rdiff.estimate_gamma(
        gm.model(schedule), gm.sample_data(400, seed=0), schedule, batch_size=400, progress=False
    )
    gamma = np.minimum(table.gamma, 1.0)  # keep the comparison on the DP's own cost
    opt = rdiff.optimal_trajectory(gamma, schedule, k)
    s = rdiff.AnalyticDPMScheduler(gamma=gamma, trajectory="uniform")
    s.set_timesteps(k)
    uniform = s.timesteps
    assert _cost(gamma, ac, opt) <= _cost(gamma, ac, uniform) + 1e-12
    sched = rdiff.AnalyticDPMScheduler(gamma=gamma, trajectory="optimal")
    sched.set_timesteps(k)
    np.testing.assert_array_equal(sched.timesteps, opt)


def test_optimal_trajectory_splits_off_gamma_above_one(schedule):
    """Timesteps from the first Γ > 1 on are split off and spaced uniformly (the reference)."""
    ac = schedule.alphas_cumprod
    gamma = gaussian_gamma(ac, 0.5)
    gamma[950:] = 1.02  # 1-based n_bad = 951: num_bad = 2·50 = 100
    k = 20
    got = rdiff.optimal_trajectory(gamma, schedule, k)
    num_bad, n1 = 100, 900
    k1 = math.ceil((1 - 0.8 * num_bad / N) * k)
    k2 = k - k1
    frac = (N - n1) / k2
    tail = sorted(round(N - frac * j) - 1 for j in range(k2))  # 0-based
    assert sorted(got.tolist())[-k2:] == tail
    head = sorted(got.tolist())[:k1]
    assert head[0] == 0 and head[-1] == n1 - 1
    assert len(got) == k and got[0] == N - 1 and got[-1] == 0


def test_optimal_trajectory_large_problem_runs(schedule):
    import time

    gamma = gaussian_gamma(schedule.alphas_cumprod, 0.5)
    t0 = time.perf_counter()
    ts = rdiff.optimal_trajectory(gamma, schedule, 100)
    elapsed = time.perf_counter() - t0
    assert len(ts) == 100
    print(f"optimal_trajectory N=1000 K=100: {elapsed:.3f} s")


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_errors(schedule, tmp_path):
    ac = schedule.alphas_cumprod
    gamma = gaussian_gamma(ac, 0.5)
    with pytest.raises(ValueError, match="999 values for a schedule of 1000"):
        rdiff.AnalyticDPMScheduler(gamma=gamma[:-1])
    with pytest.raises(ValueError, match="999 values"):
        rdiff.optimal_trajectory(gamma[:-1], schedule, 10)
    bad = gamma.copy()
    bad[17] = np.nan
    with pytest.raises(ValueError, match="not finite at index 17"):
        rdiff.AnalyticDPMScheduler(gamma=bad)
    with pytest.raises(ValueError, match="not finite"):
        rdiff.optimal_trajectory(bad, schedule, 10)
    with pytest.raises(ValueError, match="more than the schedule's 1000"):
        rdiff.optimal_trajectory(gamma, schedule, 1001)
    with pytest.raises(ValueError, match="at least 2"):
        rdiff.optimal_trajectory(gamma, schedule, 1)
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        rdiff.AnalyticDPMScheduler(gamma=gamma).set_timesteps(1001)
    with pytest.raises(ValueError, match="needs Γ"):
        rdiff.AnalyticDPMScheduler()
    # A table for another schedule.
    other = rdiff.NoiseSchedule.discrete(N, "scaled_linear", 0.00085, 0.012)
    tab = rdiff.GammaTable.from_gamma(gaussian_gamma(other.alphas_cumprod, 0.5), other)
    with pytest.raises(ValueError, match="another noise schedule"):
        rdiff.AnalyticDPMScheduler(gamma=tab)
    with pytest.raises(ValueError, match="another noise schedule"):
        rdiff.optimal_trajectory(tab, schedule, 10)
    tab.save(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="another noise schedule"):
        rdiff.AnalyticDPMScheduler(gamma=str(tmp_path / "other.npz"))
    # A table that misses timesteps.
    part = rdiff.GammaTable.from_gamma([0.5, 0.6], schedule, timesteps=[3, 4])
    with pytest.raises(ValueError, match="covers 2 of the 1000"):
        rdiff.AnalyticDPMScheduler(gamma=part)
    with pytest.raises(ValueError, match="form"):
        rdiff.AnalyticDPMScheduler(gamma=gamma, form="ddqm")
    with pytest.raises(ValueError, match="trajectory"):
        rdiff.AnalyticDPMScheduler(gamma=gamma, trajectory="cosine")
    with pytest.raises(ValueError, match="data_range"):
        rdiff.AnalyticDPMScheduler(gamma=gamma, data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="strictly decreasing"):
        rdiff.AnalyticDPMScheduler(gamma=gamma).set_timesteps(timesteps=[10, 20])
    s = rdiff.AnalyticDPMScheduler(gamma=gamma)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(np.zeros((1, 2), np.float32), 999, np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="variances"):
        s.set_timesteps(5, variances=[1.0, 2.0])
    model = GaussianMixture.single(0.0, 1.0, 2).model(schedule)
    with pytest.raises(ValueError, match="batch_size"):
        rdiff.estimate_gamma(model, np.zeros((4, 2)), schedule, batch_size=0)
    with pytest.raises(ValueError, match="timesteps"):
        rdiff.estimate_gamma(model, np.zeros((4, 2)), schedule, timesteps=[1000])
    with pytest.raises(ValueError, match="finite"):
        rdiff.estimate_gamma(
            lambda x, t: np.full_like(x, np.nan), np.zeros((4, 2)), schedule, progress=False
        )


# ---------------------------------------------------------------------------------------------
# Against diffusers' DDPMScheduler


def _diffusers_ddpm():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler(
        num_train_timesteps=N, beta_schedule="linear", clip_sample=True, variance_type="fixed_small"
    )


def _beta_tilde(ac, ts):
    out = []
    for i, t in enumerate(ts):
        a_s = ac[ts[i + 1]] if i + 1 < len(ts) else 1.0
        out.append((1 - a_s) / (1 - ac[t]) * (1 - ac[t] / a_s))
    return np.array(out)


def _run_loop(sched, timesteps, model, x, seed):
    gen = torch.Generator().manual_seed(seed)
    for t in timesteps:
        x = sched.step(model(x, t), t, x, generator=gen).prev_sample
    return x


@pytest.mark.parametrize("k", [10, 50])
def test_ddpm_form_loop_with_gamma_one_equals_diffusers(schedule, gaussian_eps, k):
    """Γ ≡ 1 makes Cov(x₀|x_t) = 0, so σ² = λ² = β̃: the whole loop is diffusers' DDPM."""
    ours = rdiff.AnalyticDPMScheduler(gamma=np.ones(N))
    ours.set_timesteps(k)
    ts = ours.timesteps.tolist()
    np.testing.assert_allclose(ours.variances[:-1], _beta_tilde(schedule.alphas_cumprod, ts)[:-1])
    ref = _diffusers_ddpm()
    ref.set_timesteps(timesteps=ts)
    model = gaussian_eps(schedule.alphas_cumprod)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = _run_loop(ours, ts, model, x, seed=1)
    b = _run_loop(ref, ts, model, x, seed=1)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_ddpm_form_mean_equals_diffusers_step(schedule, gaussian_eps):
    """With the variance overridden to β̃ the DDPM-form update is diffusers' DDPM step, for
    any Γ: the means are the same (checked step by step from the same x_t and the same noise)."""
    ac = schedule.alphas_cumprod
    ours = rdiff.AnalyticDPMScheduler(gamma=gaussian_gamma(ac, 0.5))
    ours.set_timesteps(20)
    ts = ours.timesteps.tolist()
    assert not np.allclose(ours.variances[:-1], _beta_tilde(ac, ts)[:-1])
    ours.set_timesteps(timesteps=ts, variances=_beta_tilde(ac, ts))
    ref = _diffusers_ddpm()
    ref.set_timesteps(timesteps=ts)
    model = gaussian_eps(ac)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.5
    for i, t in enumerate(ts):
        eps = model(x, t)
        a = ours.step(eps, t, x, generator=torch.Generator().manual_seed(i))
        b = ref.step(eps, t, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(
            a.pred_original_sample, b.pred_original_sample, rtol=1e-4, atol=1e-4
        )
        # The means alone: ours without noise, diffusers' with its noise taken out.
        ours._step_index -= 1
        mean = ours.step(eps, t, x, variance_noise=torch.zeros_like(x)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        ref_mean = b.prev_sample - (ref._get_variance(t) ** 0.5 * noise if t > 0 else 0)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=2e-5)
        x = b.prev_sample


def test_ddim_form_is_deterministic_with_eta_zero_and_gamma_one(schedule, gaussian_eps):
    """η = 0 and Γ ≡ 1 give σ² = 0: DDIM's deterministic update x_s = √ᾱ_s x̂₀ + √β̄_s ε."""
    ac = schedule.alphas_cumprod
    s = rdiff.AnalyticDPMScheduler(gamma=np.ones(N), form="ddim", clip_x0=False)
    s.set_timesteps(10)
    assert np.all(s.variances == 0)
    model = gaussian_eps(ac)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).double()
    ts = s.timesteps.tolist()
    for i, t in enumerate(ts):
        eps = model(x, t)
        out = s.step(eps, t, x).prev_sample
        a_s = ac[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x0 = (x - math.sqrt(1 - ac[t]) * eps) / math.sqrt(ac[t])
        want = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        x = out


# ---------------------------------------------------------------------------------------------
# The scheduler surface


def test_numpy_and_torch_steps_agree_and_keep_dtype(schedule):
    gamma = gaussian_gamma(schedule.alphas_cumprod, 0.5)
    s = rdiff.AnalyticDPMScheduler(gamma=gamma, form="ddim", eta=0.5)
    s.set_timesteps(5)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    eps = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    noise = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    t = int(s.timesteps[0])
    a = s.step(eps, t, x, variance_noise=noise)
    s.set_timesteps(5)
    b = s.step(
        torch.from_numpy(eps), t, torch.from_numpy(x), variance_noise=torch.from_numpy(noise)
    )
    assert isinstance(a.prev_sample, np.ndarray) and a.prev_sample.dtype == np.float32
    np.testing.assert_allclose(a.prev_sample, b.prev_sample.numpy(), rtol=1e-6)
    s.set_timesteps(5)
    c = s.step(torch.from_numpy(eps).half(), t, torch.from_numpy(x), variance_noise=noise)
    assert c.prev_sample.dtype == torch.float16
    # add_noise is DDPM's.
    x0 = torch.ones(2, 3)
    n = torch.zeros(2, 3)
    y = s.add_noise(x0, n, torch.tensor([0, 999]))
    torch.testing.assert_close(
        y[:, 0], torch.tensor(np.sqrt(schedule.alphas_cumprod[[0, 999]]), dtype=torch.float32)
    )


def test_config_round_trip_and_diffusers_mixin(schedule, tmp_path):
    pytest.importorskip("diffusers")
    from rdiff.diffusers import AnalyticDPMScheduler as DiffusersAnalytic

    gamma = rdiff.GammaTable.from_gamma(gaussian_gamma(schedule.alphas_cumprod, 0.5), schedule)
    s = rdiff.AnalyticDPMScheduler(gamma=gamma, form="ddim", eta=0.3, trajectory="optimal")
    s.save_pretrained(tmp_path / "plain")
    back = rdiff.AnalyticDPMScheduler.from_pretrained(tmp_path / "plain")
    s.set_timesteps(12)
    back.set_timesteps(12)
    np.testing.assert_array_equal(s.timesteps, back.timesteps)
    np.testing.assert_array_equal(s.variances, back.variances)

    d = DiffusersAnalytic(gamma=gamma, form="ddim", eta=0.3, trajectory="optimal")
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    assert isinstance(d, SchedulerMixin)
    d.save_pretrained(tmp_path / "diff")
    d2 = DiffusersAnalytic.from_pretrained(tmp_path / "diff")
    d2.set_timesteps(12)
    assert isinstance(d2.timesteps, torch.Tensor)
    np.testing.assert_array_equal(d2.timesteps.numpy(), s.timesteps)
    np.testing.assert_array_equal(d2.variances, s.variances)
    # Switching from a DDPM pipeline's scheduler config.
    ddpm = DDPMScheduler(num_train_timesteps=N)
    d3 = DiffusersAnalytic.from_config(ddpm.config, gamma=gamma)
    d3.set_timesteps(12)
    assert len(d3.timesteps) == 12
    assert os.path.isfile(tmp_path / "diff" / "scheduler_config.json")


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

import functools

torch = pytest.importorskip("torch")

from conftest import assert_bit_equal, loop_on_cpu_and_emulated, on_cpu_and_emulated
from test_dpm_multistep import DTYPES, EMU_CASES, _view

_GAMMA = np.linspace(0.5, 0.99, N)


def _emulated_step(form, prediction, noise_kind, clip, step_index, mo, x, noise):
    s = rdiff.AnalyticDPMScheduler(
        gamma=_GAMMA,
        form=form,
        eta=0.5 if form == "ddim" else 0.0,
        prediction_type=prediction,
        clip_x0=clip,
    )
    s.set_timesteps(10)
    s._step_index = step_index
    kw = {"variance_noise": noise} if noise_kind == "buffer" else {"generator": 2**64 - 5}
    out = s.step(mo, s.timesteps[step_index], x, **kw)
    return out.prev_sample, out.pred_original_sample


@pytest.mark.parametrize("mdt", list(DTYPES))
@pytest.mark.parametrize("sdt", list(DTYPES))
@pytest.mark.parametrize("case", range(len(EMU_CASES)))
def test_emulated_step_equals_cpu(mdt, sdt, case):
    """Both forms, three prediction types, given and Philox noise, the last (σ = 0) and a
    noisy step, each dtype pair, on the kernels and the CPU."""
    shape, extra, offset = EMU_CASES[case]
    mdtype, sdtype = DTYPES[mdt], DTYPES[sdt]
    g = torch.Generator().manual_seed(77 + case)
    mo_shape = (shape[0], shape[1] + extra, *shape[2:])
    for form, prediction, noise_kind, clip in (
        ("ddpm", "epsilon", "buffer", True),
        ("ddim", "v_prediction", "philox", False),
        ("ddpm", "sample", "philox", True),
    ):
        mo = _view(torch.randn(mo_shape, generator=g), mdtype, offset)
        x = _view(torch.randn(shape, generator=g) * 1.5, sdtype, offset)
        noise = torch.randn(shape, generator=g)
        for step_index in (3, 9):
            step = functools.partial(
                _emulated_step, form, prediction, noise_kind, clip, step_index, mo, x, noise
            )
            cpu, emu = on_cpu_and_emulated(step)
            assert_bit_equal(cpu, emu, f"{form}/{prediction}/{noise_kind} step {step_index}")


def _noise_step(step_index, mo, x, kw):
    s = rdiff.AnalyticDPMScheduler(gamma=_GAMMA)
    s.set_timesteps(10)
    s._step_index = step_index
    return s.step(mo, s.timesteps[step_index], x, **kw).prev_sample, s.variances


def test_kernel_noise_is_rdiff_randn():
    """In-kernel noise (emulated) is rdiff.randn's stream: σ·randn added to the mean."""
    shape = (3, 4, 7, 9)  # per sample 252: rows start on lane groups
    g = torch.Generator().manual_seed(5)
    mo, x = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    step_index, seed = 4, 1234
    out = {}
    for kind in ("zero", "philox"):
        kw = {"variance_noise": torch.zeros(shape)} if kind == "zero" else {"generator": seed}
        step = functools.partial(_noise_step, step_index, mo, x, kw)
        (_, variances), (prev, _) = on_cpu_and_emulated(step)
        out[kind] = prev.double()
    sigma = math.sqrt(variances[step_index])
    z = torch.from_numpy(rdiff.randn(shape, seed, offset=step_index)).double()
    torch.testing.assert_close(out["philox"] - out["zero"], sigma * z, rtol=0, atol=1e-6)


LOOPS = {
    "analytic ddpm, torch generator": (
        lambda: rdiff.AnalyticDPMScheduler(gamma=_GAMMA),
        lambda: torch.Generator().manual_seed(3),
    ),
    "analytic ddim, philox seed": (
        lambda: rdiff.AnalyticDPMScheduler(gamma=_GAMMA, form="ddim", eta=1.0),
        lambda: 2024,
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


def _fixture_digest(ts) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(ts, dtype="<i8").tobytes()).hexdigest()[:16]


def test_trajectories_equal_the_authors_choice_steps():
    """The uniform and quadratic trajectories against the outputs of the Analytic-DPM authors'
    own `_choice_steps_linear` / `_choice_steps_quad_ddim` (tests/fixtures, written by
    scripts/analytic_dpm_fixture.py from their repository), for every K in 2..1000. The
    authors' quadratic (DDIM's) choice repeats timesteps from K = 30 on; rdiff pushes them
    apart (a repeated timestep is a zero step), so it is compared where theirs is distinct."""
    import json
    from pathlib import Path

    fx = json.loads((Path(__file__).parent / "fixtures/analytic_dpm_choice_steps.json").read_text())
    assert fx["N"] == N
    gamma = np.full(N, 0.5)
    for trajectory, key in (("uniform", "linear"), ("quadratic", "quad_ddim")):
        s = rdiff.AnalyticDPMScheduler(gamma=gamma, trajectory=trajectory)
        ks = range(2, N + 1) if key == "linear" else fx[key]["strictly_increasing"]
        for k_str, ts in fx[key]["examples"].items():
            if int(k_str) in ks:
                s.set_timesteps(int(k_str))
                assert s.timesteps[::-1].tolist() == ts, (trajectory, k_str)
        for k in ks:
            s.set_timesteps(k)
            assert _fixture_digest(s.timesteps[::-1]) == fx[key]["sha256"][str(k)], (trajectory, k)
