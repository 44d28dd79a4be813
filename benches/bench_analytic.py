"""Analytic-DPM: estimate_gamma's own overhead and one fused step, against torch ops.

Run: python benches/bench_analytic.py [--quick]. Prints two markdown tables with ratios:

1. ``rdiff.estimate_gamma`` with a model that costs nothing (it returns a precomputed tensor),
   so the time is the estimator's own overhead (noise, x_t, the ‖ε‖²/d reduction, the sums),
   against the same loop written with torch ops (torch.Generator noise, x_t, a float64
   per-sample reduction, sums).
2. One Analytic-DPM DDPM-form step (ε → x̂₀, clip, mean, σ·noise; noise given) against the
   same formula written with torch ops.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import rdiff


def best_of(fn, repeat: int, min_time: float = 0.2) -> float:
    """Best mean over `repeat` rounds of enough calls to take `min_time` seconds."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time / 4 or n > 1e5:
            break
        n *= 4
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def torch_estimate(model, data, ac, timesteps, batch_size, seed):
    """The reference estimator in torch ops (same work: noise, x_t, model, reduction, sums)."""
    sums = {}
    for start in range(0, data.shape[0], batch_size):
        x0 = data[start : start + batch_size]
        for t in timesteps:
            g = torch.Generator().manual_seed(seed * 1_000_003 + start * 1009 + t)
            eps = torch.randn(x0.shape, generator=g)
            a, s = math.sqrt(ac[t]), math.sqrt(1 - ac[t])
            xt = a * x0 + s * eps
            out = model(xt, torch.full((x0.shape[0],), t))
            v = out.double().flatten(1).square().mean(1)
            acc = sums.setdefault(t, [0, 0.0, 0.0])
            acc[0] += v.numel()
            acc[1] += float(v.sum())
            acc[2] += float(v.square().sum())
    return sums


def bench_estimate(quick: bool) -> None:
    schedule = rdiff.NoiseSchedule.discrete(1000)
    ac = schedule.alphas_cumprod
    print("\n## estimate_gamma overhead (model calls excluded)\n")
    print("| data | timesteps | rdiff ms | torch ops ms | torch / rdiff |")
    print("|---|---|---|---|---|")
    shapes = [(64, 3, 32, 32), (16, 3, 64, 64)] if not quick else [(16, 3, 32, 32)]
    for shape in shapes:
        data = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        cached = torch.randn(shape, generator=torch.Generator().manual_seed(1))

        def model(x, t, cached=cached):
            return cached

        ts = list(range(0, 1000, 100 if not quick else 250))
        b = shape[0]

        def ours(data=data, model=model, ts=ts, b=b):
            rdiff.estimate_gamma(model, data, schedule, timesteps=ts, batch_size=b, progress=False)

        def ref(data=data, model=model, ts=ts, b=b):
            with torch.no_grad():
                torch_estimate(model, data, ac, ts, b, 0)

        r = best_of(ours, 3 if quick else 5)
        t = best_of(ref, 3 if quick else 5)
        print(f"| {shape} | {len(ts)} | {r * 1e3:.2f} | {t * 1e3:.2f} | {t / r:.2f} |")


def torch_step(eps, x, noise, c):
    x0 = ((x - c["sb"] * eps) * c["isa"]).clamp(-1, 1)
    return c["c_x0"] * x0 + c["c_x"] * x + c["sigma"] * noise, x0


def bench_step(quick: bool) -> None:
    schedule = rdiff.NoiseSchedule.discrete(1000)
    ac = schedule.alphas_cumprod
    gamma = (1 - ac) / (ac * 0.25 + 1 - ac)
    print("\n## One Analytic-DPM step (DDPM form, x̂₀ clipped, noise given)\n")
    print("| shape | dtype | rdiff µs | torch ops µs | torch / rdiff |")
    print("|---|---|---|---|---|")
    shapes = [(1, 4, 64, 64), (8, 4, 128, 128), (16, 3, 256, 256)]
    if quick:
        shapes = shapes[:2]
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            s = rdiff.AnalyticDPMScheduler(gamma=gamma)
            s.set_timesteps(50)
            i = 10
            t = int(s.timesteps[i])
            t_prev = int(s.timesteps[i + 1])
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g).to(dtype)
            eps = torch.randn(shape, generator=g).to(dtype)
            noise = torch.randn(shape, generator=g)
            a_t, a_s = ac[t], ac[t_prev]
            beta_ts = 1 - a_t / a_s
            c = dict(
                sb=math.sqrt(1 - a_t),
                isa=1 / math.sqrt(a_t),
                c_x0=math.sqrt(a_s) * beta_ts / (1 - a_t),
                c_x=math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t),
                sigma=math.sqrt(s.variances[i]),
            )
            # Same result (to rounding) before timing.
            s._step_index = i
            ours_out = s.step(eps, t, x, variance_noise=noise).prev_sample
            ref_out, _ = torch_step(eps.float(), x.float(), noise, c)
            assert np.allclose(ours_out.float().numpy(), ref_out.numpy(), atol=5e-2)

            def ours(s=s, eps=eps, x=x, noise=noise, t=t, i=i):
                s._step_index = i
                s.step(eps, t, x, variance_noise=noise)

            def ref(eps=eps, x=x, noise=noise, c=c, dtype=dtype):
                out, x0 = torch_step(eps, x, noise, c)
                out.to(dtype), x0.to(dtype)

            r = best_of(ours, 3 if quick else 5)
            tt = best_of(ref, 3 if quick else 5)
            name = str(dtype).removeprefix("torch.")
            print(f"| {shape} | {name} | {r * 1e6:.0f} | {tt * 1e6:.0f} | {tt / r:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    args = p.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; rdiff {rdiff.__version__}")
    bench_estimate(args.quick)
    bench_step(args.quick)


if __name__ == "__main__":
    main()
