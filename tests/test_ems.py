"""`rdiff.estimate_ems` / `rdiff.EMSTable`: DPM-Solver-v3's statistics against closed forms,
JVP against finite differences, exact sharded merges, files."""

from __future__ import annotations

import math

import numpy as np
import pytest

import rdiff
from rdiff.ems import _grid, _Vp

N = 1000


def _schedule():
    return rdiff.NoiseSchedule.discrete(N)


def _gaussian(d=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, d), rng.uniform(0.2, 0.7, d)


def _closed_form(mu, std, lam):
    a2 = 1.0 / (1.0 + np.exp(-2 * lam))[:, None]
    s2 = 1.0 - a2
    v = a2 * std**2 + s2
    return s2 / v, 2 * mu * s2 * a2 * std**2 / v**2


def _torch_gaussian_eps(mu, std, sch):
    """A differentiable ε* of one diagonal Gaussian as a torch model(x, t_input)."""
    torch = pytest.importorskip("torch")
    ac = torch.from_numpy(np.asarray(sch.alphas_cumprod))
    log_a = 0.5 * torch.log(ac)
    mu_t, var0 = torch.from_numpy(mu), torch.from_numpy(std) ** 2

    def model(x, t_in):
        # log α piecewise linear in t = (t_in + 1)/N through the knots, as the reference's
        t = t_in.double()
        k = torch.clamp(torch.floor(t).long(), 0, N - 2)
        w = t - k
        la = log_a[k] * (1 - w) + log_a[k + 1] * w
        a = torch.exp(la)[:, None]
        s = torch.sqrt(1 - a * a)
        v = a * a * var0 + s * s
        return (s * (x - a * mu_t) / v).to(x.dtype)

    return model


def test_fd_on_numpy_gaussian_matches_the_closed_form():
    """l is exact for linear ε (Hutchinson with Rademacher probes, the difference exact);
    s = 0 (f has no spread); b = E f′ up to the authors' l′ (differences of l smoothed over
    ±5 grid points: 0.7 % of b's range on 400 intervals, 38 % on 40)."""
    mu, std = _gaussian()
    gm = rdiff.testing.GaussianMixture(mu[None], std[None])
    sch = _schedule()
    data = gm.sample_data(64, seed=0)
    table = rdiff.estimate_ems(
        gm.model(sch), data, sch, steps=400, batch_size=32, progress=False, fd_step=1e-4
    )
    l_ref, b_ref = _closed_form(mu, std, table.lambdas)
    np.testing.assert_allclose(table.l, l_ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(table.s, 0.0)
    np.testing.assert_allclose(table.b, b_ref, rtol=0, atol=1e-2 * np.abs(b_ref).max())


def test_jvp_on_torch_gaussian_matches_the_closed_form():
    torch = pytest.importorskip("torch")
    mu, std = _gaussian()
    sch = _schedule()
    model = _torch_gaussian_eps(mu, std, sch)
    gm = rdiff.testing.GaussianMixture(mu[None], std[None])
    data = torch.from_numpy(gm.sample_data(64, seed=0))
    table = rdiff.estimate_ems(model, data, sch, steps=400, batch_size=64, progress=False)
    l_ref, b_ref = _closed_form(mu, std, table.lambdas)
    np.testing.assert_allclose(table.l, l_ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(table.s, 0.0)
    np.testing.assert_allclose(table.b, b_ref, rtol=0, atol=1e-2 * np.abs(b_ref).max())


def _torch_mixture_eps(gm, sch):
    """A differentiable ε* of a diagonal Gaussian mixture as a torch model(x, t_input)."""
    torch = pytest.importorskip("torch")
    log_a = 0.5 * torch.log(torch.from_numpy(np.asarray(sch.alphas_cumprod)))
    mu, var0 = torch.from_numpy(gm.means), torch.from_numpy(gm.stds) ** 2
    logw = torch.log(torch.from_numpy(gm.weights))

    def model(x, t_in):
        t = t_in.double()
        k = torch.clamp(torch.floor(t).long(), 0, N - 2)
        la = log_a[k] * (1 - (t - k)) + log_a[k + 1] * (t - k)
        a = torch.exp(la)[:, None, None]
        s = torch.sqrt(1 - a * a)
        var = a * a * var0 + s * s  # (n, K, d)
        diff = x[:, None, :] - a * mu
        logn = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        r = torch.softmax(logw + logn, dim=-1)
        return (s[:, 0] * (r[..., None] * diff / var).sum(1)).to(x.dtype)

    return model


def test_jvp_and_fd_agree_on_a_mixture():
    """Both derivative routes estimate the same l, s, b on a 2-component mixture from the
    same noise: the finite difference's error (float64, h = 1e-4) is far below the
    estimate's sampling error."""
    torch = pytest.importorskip("torch")
    gm = rdiff.testing.GaussianMixture(
        [[-0.6, 0.4, 0.0], [0.5, -0.7, 0.6]], [[0.3, 0.2, 0.45], [0.25, 0.35, 0.2]]
    )
    sch = _schedule()
    model = _torch_mixture_eps(gm, sch)
    data = torch.from_numpy(gm.sample_data(128, seed=2))
    # the torch model equals the mixture's own ε*
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((5, 3)))
    t = torch.full((5,), 417.25, dtype=torch.float64)
    np.testing.assert_allclose(model(x, t).numpy(), gm.eps(x.numpy(), 417.25, sch), atol=1e-12)
    kw = dict(steps=60, batch_size=64, progress=False)
    jvp = rdiff.estimate_ems(model, data, sch, derivative="jvp", **kw)
    fd = rdiff.estimate_ems(model, data, sch, derivative="fd", fd_step=1e-4, **kw)
    np.testing.assert_allclose(fd.l, jvp.l, rtol=0, atol=1e-6)
    for name in ("s", "b"):
        a, b = getattr(fd, name), getattr(jvp, name)
        assert np.abs(a - b).max() < 1e-4 * (1 + np.abs(b).max()), name
    assert np.abs(jvp.s).max() > 0.1  # a mixture's f varies over the data


def test_shards_merge_exactly():
    mu, std = _gaussian(d=4)
    gm = rdiff.testing.GaussianMixture(np.stack([mu, -mu]), np.stack([std, std[::-1]]))
    sch = _schedule()
    data = gm.sample_data(96, seed=5)
    kw = dict(steps=20, batch_size=32, progress=False, seed=7)
    one = rdiff.estimate_ems(gm.model(sch), data, sch, **kw)
    parts_l = [
        rdiff.estimate_ems(gm.model(sch), data[a:b], sch, offset=a, stage="l", **kw)
        for a, b in ((0, 32), (32, 96))
    ]
    merged_l = parts_l[1].merge(parts_l[0])
    assert not merged_l.complete
    with pytest.raises(ValueError, match="only the l stage"):
        _ = merged_l.s
    parts_f = [
        rdiff.estimate_ems(
            gm.model(sch), data[a:b], sch, offset=a, stage="f", l_table=merged_l, **kw
        )
        for a, b in ((0, 64), (64, 96))
    ]
    merged = parts_f[0] + parts_f[1]
    assert merged.count_f == 96
    assert merged == one
    np.testing.assert_array_equal(merged.l, one.l)
    np.testing.assert_array_equal(merged.s, one.s)
    np.testing.assert_array_equal(merged.b, one.b)
    # f stages from different l do not merge
    other_l = rdiff.estimate_ems(gm.model(sch), data[:32], sch, stage="l", **kw)
    stray = rdiff.estimate_ems(gm.model(sch), data[:32], sch, stage="f", l_table=other_l, **kw)
    with pytest.raises(ValueError, match="different l"):
        merged.merge(stray)
    with pytest.raises(ValueError, match="f stage and the other not"):
        merged.merge(merged_l)


def test_file_round_trip_and_corruption(tmp_path):
    mu, std = _gaussian(d=4)
    gm = rdiff.testing.GaussianMixture(mu[None], std[None])
    sch = _schedule()
    t = rdiff.estimate_ems(gm.model(sch), gm.sample_data(16), sch, steps=10, progress=False)
    t.save(tmp_path / "e.npz")
    assert rdiff.EMSTable.load(tmp_path / "e.npz", schedule=sch) == t
    with pytest.raises(ValueError, match="another noise schedule"):
        rdiff.EMSTable.load(tmp_path / "e.npz", schedule=rdiff.NoiseSchedule.discrete(500))
    with np.load(tmp_path / "e.npz") as z:
        d = {k: z[k] for k in z.files}
    bad = dict(d, lambdas=d["lambdas"] * 1.01)
    np.savez(tmp_path / "grid.npz", **bad)
    with pytest.raises(rdiff.WeightsError, match="λ grid"):
        rdiff.EMSTable.load(tmp_path / "grid.npz")
    bad = dict(d, format=np.array("rdiff.GammaTable"))
    np.savez(tmp_path / "fmt.npz", **bad)
    with pytest.raises(rdiff.WeightsError, match="format"):
        rdiff.EMSTable.load(tmp_path / "fmt.npz")
    bad = dict(d, sums_l=d["sums_l"].astype(np.float64))
    np.savez(tmp_path / "dt.npz", **bad)
    with pytest.raises(rdiff.WeightsError, match="int64"):
        rdiff.EMSTable.load(tmp_path / "dt.npz")


def test_grid_is_the_authors():
    """λ_j uniform from λ(1) to λ(1/N), through t and back (the fixture's grid)."""
    from pathlib import Path

    with np.load(Path(__file__).parent / "fixtures" / "dpm_solver_v3_gm.npz") as z:
        lam = z["ems_lambda"]
    grid = _grid(_Vp(np.asarray(_schedule().alphas_cumprod)), 1.0, 1.0 / N, 200)
    np.testing.assert_allclose(grid, lam, rtol=0, atol=1e-12)


def test_estimate_bad_input():
    sch = _schedule()
    gm = rdiff.testing.GaussianMixture([[0.0, 1.0]], [[0.5, 0.5]])
    data = gm.sample_data(8)
    m = gm.model(sch)
    with pytest.raises(ValueError, match="stage"):
        rdiff.estimate_ems(m, data, sch, stage="g", progress=False)
    with pytest.raises(ValueError, match="l_table"):
        rdiff.estimate_ems(m, data, sch, stage="f", progress=False)
    with pytest.raises(ValueError, match="t_start, t_end"):
        rdiff.estimate_ems(m, data, sch, t_end=2.0, progress=False)
    with pytest.raises(ValueError, match="jvp"):
        rdiff.estimate_ems(m, data, sch, derivative="jvp", progress=False)
    with pytest.raises(ValueError, match="steps"):
        rdiff.estimate_ems(m, data, sch, steps=1, progress=False)

    def nan_model(x, t):
        return np.full_like(x, math.nan)

    with pytest.raises(ValueError, match="non-finite"):
        rdiff.estimate_ems(nan_model, data, sch, steps=4, progress=False)


def _dist_worker(rank, world, init_file, out_path):
    """Rank `rank` of a two-stage sharded estimate, all-reduced after each stage."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gm, sch, data, kw = _dist_setup()
        lo, hi = (0, 64) if rank == 0 else (64, 96)
        model = gm.model(sch)
        ll = rdiff.estimate_ems(model, data[lo:hi], sch, offset=lo, stage="l", **kw)
        ll = ll.all_reduce()
        ff = rdiff.estimate_ems(
            model, data[lo:hi], sch, offset=lo, stage="f", l_table=ll, **kw
        ).all_reduce()
        if rank == 0:
            ff.save(out_path)
    finally:
        dist.destroy_process_group()


def _dist_setup():
    mu, std = _gaussian(d=4)
    gm = rdiff.testing.GaussianMixture(np.stack([mu, -mu]), np.stack([std, std[::-1]]))
    sch = _schedule()
    return gm, sch, gm.sample_data(96, seed=5), dict(steps=12, batch_size=32, progress=False)


def test_two_rank_all_reduce_equals_single_process(tmp_path):
    """Two torch.distributed ranks (gloo), each stage all-reduced: the one-shot table."""
    pytest.importorskip("torch")
    import torch.multiprocessing as mp

    out, init = tmp_path / "merged.npz", tmp_path / "rendezvous"
    mp.spawn(_dist_worker, args=(2, str(init), str(out)), nprocs=2, join=True)
    gm, sch, data, kw = _dist_setup()
    one = rdiff.estimate_ems(gm.model(sch), data, sch, **kw)
    assert rdiff.EMSTable.load(out, schedule=sch) == one


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
