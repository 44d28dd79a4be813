"""Shared fixtures: diffusers' own deterministic dummy sample and model, and realistic models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def dummy_sample_deter() -> torch.Tensor:
    """diffusers' `dummy_sample_deter` (tests/schedulers/test_schedulers.py): (4, 3, 8, 8)."""
    b, c, h, w = 4, 3, 8, 8
    n = b * c * h * w
    s = torch.arange(n).flip(-1).reshape(c, h, w, b) / n
    return s.permute(3, 0, 1, 2)


def dummy_noise_deter() -> torch.Tensor:
    """diffusers' `dummy_noise_deter`: the same ramp, not flipped."""
    b, c, h, w = 4, 3, 8, 8
    n = b * c * h * w
    s = torch.arange(n).reshape(c, h, w, b) / n
    return s.permute(3, 0, 1, 2)


def dummy_model(sample, t):
    """diffusers' dummy model: sample · t / (t + 1)."""
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device, dtype=sample.dtype)
    return sample * t / (t + 1)


class GaussianEps:
    """A non-linear stand-in for a trained network: the exact ε of N(0, 0.5²) data plus a
    smooth non-linear term, evaluated in float64 from diffusers' ᾱ."""

    def __init__(self, alphas_cumprod, prediction_type: str = "epsilon"):
        self.ac = torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64)
        self.prediction_type = prediction_type

    def __call__(self, x, t):
        ac = self.ac[int(t)]
        a, s = ac.sqrt(), (1 - ac).sqrt()
        xd = x.double()
        eps = s * xd / (a * a * 0.25 + s * s) + 0.05 * torch.sin(3 * xd)
        if self.prediction_type == "epsilon":
            out = eps
        else:
            x0 = (xd - s * eps) / a
            out = x0 if self.prediction_type == "sample" else a * eps - s * x0
        return out.to(x.dtype)


@pytest.fixture
def gaussian_eps():
    return GaussianEps
