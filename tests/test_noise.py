"""rdiff.randn (the Philox4x32-10 normal stream) and its use as in-pass noise by
AnalyticDPMScheduler(generator=<int seed>). The generator's known answers and a KS test are
Rust tests (src/random/philox.rs); the CUDA kernel's copy is checked in test_cuda.py."""

from __future__ import annotations

import numpy as np
import pytest

import rdiff


def test_randn_is_deterministic_and_depends_on_the_index_only():
    a = rdiff.randn((3, 5, 7), seed=9, offset=2)
    assert a.dtype == np.float32 and a.shape == (3, 5, 7)
    np.testing.assert_array_equal(a, rdiff.randn((3, 5, 7), 9, 2))
    # Element i of any shape is element i of the flattened stream.
    flat = rdiff.randn(200, 9, 2)
    np.testing.assert_array_equal(a.reshape(-1), flat[:105])
    np.testing.assert_array_equal(rdiff.randn((1,), 9, 2), flat[:1])
    assert not np.array_equal(flat, rdiff.randn(200, 9, 3))
    assert not np.array_equal(flat, rdiff.randn(200, 10, 2))
    assert rdiff.randn((0, 4), 1).shape == (0, 4)


def test_randn_moments():
    z = rdiff.randn(1 << 18, seed=123).astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(np.mean(np.abs(z) < 1) - 0.682689492) < 5 * np.sqrt(0.2166 / n)
    assert np.abs(z).max() < 5.8


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(seed=-1), ValueError),
        (dict(seed=2**64), ValueError),
        (dict(seed=1.5), TypeError),
        (dict(seed=True), TypeError),
        (dict(seed=1, offset=-3), ValueError),
    ],
)
def test_randn_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        rdiff.randn((4,), **kwargs)
    with pytest.raises(ValueError):
        rdiff.randn((-1, 2), 0)


def _analytic(**kw):
    return rdiff.AnalyticDPMScheduler(gamma=np.linspace(0.4, 0.99, 1000), **kw)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("form", ["ddpm", "ddim"])
def test_int_generator_is_randn_at_the_step_index(framework, form):
    """generator=seed draws step k's noise as rdiff.randn(shape, seed, offset=k), in the pass."""
    shape = (2, 3, 5, 7)
    seed = 2**63 + 11
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(shape).astype(np.float32)
    eps = rng.standard_normal(shape).astype(np.float32)
    if framework == "torch":
        torch = pytest.importorskip("torch")
        x0, eps = torch.from_numpy(x0), torch.from_numpy(eps)
    kw = dict(form=form, eta=1.0) if form == "ddim" else {}
    a, b = _analytic(**kw), _analytic(**kw)
    a.set_timesteps(6)
    b.set_timesteps(6)
    xa = xb = x0
    for k, t in enumerate(a.timesteps):
        xa = a.step(eps, t, xa, generator=seed).prev_sample
        z = rdiff.randn(shape, seed, offset=k)
        if framework == "torch":
            z = torch.from_numpy(z)
        xb = b.step(eps, t, xb, variance_noise=z).prev_sample
        assert type(xa) is type(x0)
        np.testing.assert_array_equal(np.asarray(xa), np.asarray(xb), err_msg=f"step {k}")
    # A different seed gives a different sample.
    c = _analytic(**kw)
    c.set_timesteps(6)
    xc = x0
    for t in c.timesteps:
        xc = c.step(eps, t, xc, generator=seed + 1).prev_sample
    assert not np.array_equal(np.asarray(xc), np.asarray(xa))


def test_int_generator_out_of_range():
    s = _analytic()
    s.set_timesteps(4)
    x = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="seed"):
        s.step(x, s.timesteps[0], x, generator=-1)


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
