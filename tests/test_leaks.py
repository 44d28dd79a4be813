"""Resident memory stays flat over 10,000 scheduler steps and 100 UNet calls.

After a warm-up (allocator pools, the UNet's activation arena, torch's caches), the loops
run and the resident set is read from /proc/self/statm; the bound (20 MiB) is generous, but a
leak of one sample-sized buffer per step (24 KiB × 10,000 steps ≈ 234 MiB) or of the UNet's
activations per call would cross it many times over.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

import rdiff
from rdiff.cli import bundled_model_dir

SHAPE = (2, 3, 32, 32)  # 24 KiB of float32
BOUND = 20 << 20

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm (Linux)"
)


def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _steps(total: int) -> int:
    """`total` steps over every scheduler kind, numpy and torch inputs, restarting each loop."""
    gamma = rdiff.GammaTable.from_gamma(
        np.linspace(0.999, 0.3, 1000), rdiff.NoiseSchedule.discrete()
    )
    makers = [
        lambda: rdiff.DPMSolverMultistepScheduler(solver_order=3),
        lambda: rdiff.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"),
        lambda: rdiff.DPMSolverSinglestepScheduler(),
        lambda: rdiff.DDIMScheduler(),
        lambda: rdiff.DDPMScheduler(),
        lambda: rdiff.AnalyticDPMScheduler(gamma=gamma),
    ]
    xs = [
        np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32),
        torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)),
    ]
    done, k = 0, 0
    while done < total:
        s = makers[k % len(makers)]()
        x0 = xs[k % 2]
        gen = np.random.default_rng(k) if k % 2 == 0 else torch.Generator().manual_seed(k)
        k += 1
        s.set_timesteps(min(50, total - done))
        x = x0
        for t in s.timesteps:
            x = s.step(x * 0.5, t, x, generator=gen).prev_sample
            done += 1
    return done


def test_scheduler_steps_keep_memory_flat():
    _steps(600)
    before = _rss()
    n = _steps(10_000)
    grown = _rss() - before
    assert n == 10_000
    assert grown < BOUND, f"resident memory grew {grown / 2**20:.1f} MiB over {n} steps"


def test_unet_calls_keep_memory_flat():
    m = rdiff.UNet2DModel.from_pretrained(bundled_model_dir("digits"))
    x = np.random.default_rng(1).standard_normal((4, 1, 16, 16)).astype(np.float32)
    xt = torch.from_numpy(x).to(torch.bfloat16)
    for t in range(10):
        m(x, t)
        m(xt, t)
    before = _rss()
    for t in range(50):
        m(x, 10 * t)
        m(xt, 10 * t)
    grown = _rss() - before
    assert grown < BOUND, f"resident memory grew {grown / 2**20:.1f} MiB over 100 UNet calls"
