"""One step of each scheduler family: multistep DPM-Solver++, UniPC (corrector + predictor),
DEIS and the σ-parametrised classes (Euler, Euler ancestral, flow-matching Euler, Heun,
LMS, DPM2 ancestral) against diffusers on the same torch CPU tensors; and one DPM-Solver-v3 step (no
peer package has it) against rdiff's own DPM-Solver++ 3M step.

Run: python benches/bench_scheduler_step.py [--quick] [--only dpm|unipc|deis|euler|v3]. Prints a
markdown table per scheduler: time per step for both, the ratio, and rdiff's effective
bandwidth (bytes a fused step must move ÷ its time) against this machine's copy bandwidth
measured in the same run (a large torch copy).
"""

from __future__ import annotations

import argparse
import inspect
import time

import diffusers
import torch
from diffusers import DPMSolverMultistepScheduler as DS
from diffusers import UniPCMultistepScheduler as DU

import rdiff

SHAPES = [(1, 4, 64, 64), (8, 4, 128, 128), (16, 3, 256, 256)]


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


def prepared(cls, order: int, shape, dtype):
    s = cls(solver_order=order)
    s.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    mo = torch.randn(shape, generator=g).to(dtype)
    for t in s.timesteps[:order]:  # fill the history
        x = s.step(mo, t, x).prev_sample
    t = s.timesteps[5]

    def step():
        # step 5 again and again: the same order, history and (UniPC) corrector each time
        s._step_index = 5
        s.lower_order_nums = order
        s.step(mo, t, x)

    return step


def prepared_v3(shape, dtype):
    """DPM-Solver-v3 at step 5 of 20 (corrector of order 4 and predictor of order 3), with
    statistics of the sample's shape on a 100-interval grid (values do not matter here)."""
    rows = 101
    per = shape[1:]
    g = torch.Generator().manual_seed(1)
    ll = 0.9 + 0.1 * torch.rand((rows, *per), generator=g, dtype=torch.float64)
    sb = 0.1 * torch.randn((2, rows, *per), generator=g, dtype=torch.float64)
    table = rdiff.EMSTable.from_statistics(ll, sb[0], sb[1], rdiff.NoiseSchedule.discrete())
    s = rdiff.DPMSolverV3Scheduler(ems=table)
    s.set_timesteps(20)
    x = torch.randn(shape, generator=g).to(dtype)
    mo = torch.randn(shape, generator=g).to(dtype)
    for t in s.timesteps[:5]:
        x = s.step(mo, t, x).prev_sample
    t, hist, last = s.timesteps[5], list(s.model_outputs), s.last_sample

    def step():
        s._step_index, s.model_outputs, s.last_sample = 5, hist, last
        s.step(mo, t, x)

    return step


def bench_v3(repeat: int, bw: float) -> None:
    print("\nDPMSolverV3Scheduler (against rdiff's DPMSolverMultistepScheduler, order 3)\n")
    print("| shape | dtype | DPM-Solver++ 3M | v3 | v3 ÷ 3M | v3 GB/s | % of copy |")
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES[:2]:
        for dtype in (torch.float32, torch.bfloat16):
            tp = best_of(prepared(rdiff.DPMSolverMultistepScheduler, 3, shape, dtype), repeat)
            tv = best_of(prepared_v3(shape, dtype), repeat)
            numel = torch.Size(shape).numel()
            esize = torch.empty((), dtype=dtype).element_size()
            # reads: model output, sample, last sample, 3 history entries, 13 f32 coefficient
            # rows (shared by the batch); writes: history, corrected sample, sample
            moved = (3 + 3 + 3) * numel * esize + 13 * 4 * numel // shape[0]
            gbs = moved / tv / 1e9
            print(
                f"| {tuple(shape)} | {str(dtype)[6:]} | {tp * 1e6:.0f} µs | {tv * 1e6:.0f} µs | "
                f"{tv / tp:.2f} | {gbs:.1f} | {100 * gbs * 1e9 / bw:.0f}% |"
            )


# (diffusers class, rdiff class, config, elements moved per sample element, float32 noise read)
EULER = {
    # reads: model output, sample; writes: sample, x0
    "Euler": ("EulerDiscreteScheduler", {}, 4, False),
    # the same and the noise (drawn by torch in both, then read by the pass)
    "Euler ancestral": ("EulerAncestralDiscreteScheduler", {}, 4, True),
    # reads: model output, sample; writes: sample
    "flow-matching Euler": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, 3, False),
    # one interval, both stages: 4 as Euler, then reads model output, sample, first sample,
    # first x0; writes sample, x0
    "Heun, one interval = two calls": ("HeunDiscreteScheduler", {}, 10, False),
    # reads: model output, sample, 3 earlier slopes; writes: slope, x0, sample (order 4)
    "LMS, order 4": ("LMSDiscreteScheduler", {}, 8, False),
    # as Heun, the second stage also reading the noise
    "DPM2 ancestral, one interval = two calls": ("KDPM2AncestralDiscreteScheduler", {}, 10, True),
}


def prepared_euler(cls, cfg, shape, dtype):
    s = cls(**cfg)
    s.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    mo = torch.randn(shape, generator=g).to(dtype)
    t = s.timesteps[5]
    s.is_scale_input_called = True  # no warning per call
    kw = {"generator": g} if "generator" in inspect.signature(s.step).parameters else {}

    def step():
        s._step_index = 5
        if s.order == 2:  # Heun, DPM2: the interval's first and second stage
            s.dt = s.sample = None
            s.step(mo, t, x, **kw)
            s.step(mo, s.timesteps[6], x, **kw)
            return
        s.step(mo, t, x, **kw)

    return step


def bench_euler(repeat: int, bw: float) -> None:
    for title, (name, cfg, elements, noisy) in EULER.items():
        print(f"\n{name} ({title})\n")
        print("| shape | dtype | diffusers | rdiff | speed-up | rdiff GB/s | % of copy |")
        print("|---|---|---|---|---|---|---|")
        for shape in SHAPES:
            for dtype in (torch.float32, torch.bfloat16):
                td = best_of(prepared_euler(getattr(diffusers, name), cfg, shape, dtype), repeat)
                tr = best_of(prepared_euler(getattr(rdiff, name), cfg, shape, dtype), repeat)
                numel = torch.Size(shape).numel()
                esize = torch.empty((), dtype=dtype).element_size()
                moved = elements * numel * esize + (4 * numel if noisy else 0)
                gbs = moved / tr / 1e9
                pct = 100 * gbs * 1e9 / bw
                print(
                    f"| {tuple(shape)} | {str(dtype)[6:]} | {td * 1e6:.0f} µs | "
                    f"{tr * 1e6:.0f} µs | {td / tr:.1f}× | {gbs:.1f} | {pct:.0f}% |"
                )


def copy_bandwidth() -> float:
    a = torch.empty(64 * 2**20 // 4)  # 64 MiB, well past the caches
    b = torch.empty_like(a)
    t = best_of(lambda: b.copy_(a), 5)
    return 2 * a.numel() * 4 / t


# (peer, rdiff class, elements moved per sample element at order p: reads and writes)
SCHEDULERS = {
    # reads: model output, sample, p − 1 history entries; writes: history, sample
    "dpm": (DS, rdiff.DPMSolverMultistepScheduler, lambda p: 2 + (p - 1) + 2),
    # reads: model output, sample, last sample, p history entries (the corrector's; the
    # predictor's p − 1 are among them); writes: history, corrected sample, sample
    "unipc": (DU, rdiff.UniPCMultistepScheduler, lambda p: 3 + p + 3),
    # as DPM-Solver
    "deis": (diffusers.DEISMultistepScheduler, rdiff.DEISMultistepScheduler, lambda p: 2 + p + 1),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument(
        "--only", choices=[*sorted(SCHEDULERS), "euler", "v3"], help="one scheduler family"
    )
    args = ap.parse_args()
    repeat = 3 if args.quick else 7
    bw = copy_bandwidth()
    print(
        f"rdiff {rdiff.__version__}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()} (torch) / {rdiff.backends()['cpu']['threads']} (rdiff)"
    )
    print(f"copy bandwidth (64 MiB torch copy, read + write): {bw / 1e9:.1f} GB/s")
    for name, (peer, ours, elements) in SCHEDULERS.items():
        if args.only and name != args.only:
            continue
        print(f"\n{peer.__name__}\n")
        print("| shape | order | dtype | diffusers | rdiff | speed-up | rdiff GB/s | % of copy |")
        print("|---|---|---|---|---|---|---|---|")
        for shape in SHAPES:
            for order in (2, 3):
                for dtype in (torch.float32, torch.bfloat16):
                    td = best_of(prepared(peer, order, shape, dtype), repeat)
                    tr = best_of(prepared(ours, order, shape, dtype), repeat)
                    numel = torch.Size(shape).numel()
                    esize = torch.empty((), dtype=dtype).element_size()
                    gbs = elements(order) * numel * esize / tr / 1e9
                    pct = 100 * gbs * 1e9 / bw
                    print(
                        f"| {tuple(shape)} | {order} | {str(dtype)[6:]} | {td * 1e6:.0f} µs | "
                        f"{tr * 1e6:.0f} µs | {td / tr:.1f}× | {gbs:.1f} | {pct:.0f}% |"
                    )
    if args.only in (None, "euler"):
        bench_euler(repeat, bw)
    if args.only in (None, "v3"):
        bench_v3(repeat, bw)


if __name__ == "__main__":
    main()
