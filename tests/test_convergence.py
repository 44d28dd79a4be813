"""Convergence of the multistep DPM-Solver on data with an exact probability-flow solution.

For Gaussian data N(0, s²) the optimal ε is linear, ε*(x) = σ x / (α² s² + σ²), and the
probability-flow ODE scales x by the marginal standard deviation: x_t = x_T · m_t / m_T with
m_t = √(α_t² s² + σ_t²). The solver's error against that exact answer must fall with the
number of steps at the slope of its order. The multistep solvers warm up with lower orders,
and the first-order warm-up step's O(h²) local error caps the global order of the third-order
solver at 2 asymptotically (it is still more accurate); the test states that, not more.
"""

from __future__ import annotations

import numpy as np
import pytest

import rdiff

S0 = 0.5
NS = [20, 40, 80, 160]


def solve(order: int, n: int, algorithm: str) -> float:
    s = rdiff.DPMSolverMultistepScheduler(
        solver_order=order,
        algorithm_type=algorithm,
        final_sigmas_type="sigma_min",
        lower_order_final=False,
        use_lu_lambdas=True,
    )
    s.set_timesteps(n)
    sig = np.asarray(s.sigmas, dtype=np.float64)
    x = np.linspace(-2.0, 2.0, 64).reshape(1, 1, 8, 8)
    x_start = x.copy()
    for i, t in enumerate(s.timesteps):
        alpha = 1.0 / np.sqrt(sig[i] ** 2 + 1.0)
        sigma = sig[i] * alpha
        eps = sigma * x / (alpha**2 * S0**2 + sigma**2)
        x = s.step(eps, t, x).prev_sample

    def m(sd):  # marginal std in the (α, σ) parametrisation with σ̃ = σ/α
        return np.sqrt(S0**2 + sd**2) / np.sqrt(1.0 + sd**2)

    exact = x_start * m(sig[-1]) / m(sig[0])
    return float(np.abs(x - exact).max())


def slopes(order: int, algorithm: str) -> tuple[list[float], np.ndarray]:
    errs = [solve(order, n, algorithm) for n in NS]
    return errs, -np.diff(np.log(errs)) / np.diff(np.log(NS))


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2])
def test_error_falls_at_the_solver_order(order, algorithm):
    errs, k = slopes(order, algorithm)
    assert np.all(np.abs(k[-2:] - order) < 0.15), (errs, k)


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
def test_third_order_is_at_least_second_order_and_more_accurate(algorithm):
    errs3, k3 = slopes(3, algorithm)
    errs1, _ = slopes(1, algorithm)
    assert np.all(k3[-2:] > 1.85), (errs3, k3)
    assert all(e3 < e1 / 20 for e3, e1 in zip(errs3[1:], errs1[1:], strict=True))
