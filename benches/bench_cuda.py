"""One multistep DPM-Solver++ step on a GPU: rdiff's fused kernel against diffusers' sequence
of torch ops, on the same CUDA tensors, eagerly and replayed from a captured CUDA graph.

Run on a machine with an NVIDIA GPU: python benches/bench_cuda.py [--quick]. Prints a
markdown table per dtype: µs per step (CUDA-event timing of many back-to-back steps), the
ratio, and rdiff's effective bandwidth (bytes the fused step must move ÷ graph-replay time).
The figures "on paper" are in benches/README.md, section CUDA.
"""

from __future__ import annotations

import argparse
import math

import torch
from diffusers import DPMSolverMultistepScheduler as DS

import rdiff

SHAPES = [(1, 4, 64, 64), (8, 4, 128, 128), (16, 3, 256, 256)]
CONFIG = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, algorithm_type="dpmsolver++"
)


def prepared(cls, order: int, shape, dtype, device):
    """A scheduler at step 5 of 20 with a full history, and a closure that runs that step."""
    s = cls(solver_order=order, **CONFIG)
    s.set_timesteps(20, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device).to(dtype)
    mo = torch.randn(shape, generator=g, device=device).to(dtype)
    for t in s.timesteps[:order]:
        x = s.step(mo, t, x).prev_sample
    t = s.timesteps[5]

    def step():
        s._step_index = 5
        s.lower_order_nums = order
        return s.step(mo, t, x).prev_sample

    return step


def eager_us(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def graph_us(fn, iters: int) -> float | None:
    """Capture one step in a CUDA graph and time its replays (GPU time only: no Python)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside capture (first use compiles and allocates)
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as e:  # a step that syncs or allocates outside the pool cannot be captured
        print(f"    (capture failed: {type(e).__name__}: {e})")
        return None
    return eager_us(graph.replay, iters)


def fused_bytes(n: int, order: int, itemsize: int) -> int:
    """Reads: model output, sample, order−1 history entries; writes: history entry, sample."""
    return n * itemsize * (2 + (order - 1) + 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--order", type=int, default=2)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (torch.cuda.is_available() is False)")
    cuda = rdiff.backends()["cuda"]
    if not cuda["available"]:
        raise SystemExit(f"rdiff's CUDA backend is unavailable: {cuda['reason']}")
    device = torch.device("cuda")
    iters = 50 if args.quick else 500
    print(f"# {torch.cuda.get_device_name()}, order {args.order}, {iters} steps per timing\n")
    for dtype in (torch.float16, torch.float32):
        print(f"## {dtype}\n")
        print(
            "| shape | rdiff µs | diffusers µs | ratio | rdiff graph µs | diffusers graph µs "
            "| graph ratio | rdiff GB/s (graph) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for shape in SHAPES:
            ours = prepared(rdiff.DPMSolverMultistepScheduler, args.order, shape, dtype, device)
            theirs = prepared(DS, args.order, shape, dtype, device)
            torch.testing.assert_close(ours(), theirs(), rtol=2e-2, atol=2e-2)
            e_ours, e_theirs = eager_us(ours, iters), eager_us(theirs, iters)
            g_ours, g_theirs = graph_us(ours, iters), graph_us(theirs, iters)
            n = math.prod(shape)
            itemsize = torch.empty((), dtype=dtype).element_size()
            moved = fused_bytes(n, args.order, itemsize)
            bw = "n/a" if g_ours is None else f"{moved / g_ours / 1e3:.0f}"

            def fmt(v):
                return "n/a" if v is None else f"{v:.1f}"

            gr = "n/a" if g_ours is None or g_theirs is None else f"{g_theirs / g_ours:.1f}×"
            print(
                f"| {shape} | {e_ours:.1f} | {e_theirs:.1f} | {e_theirs / e_ours:.1f}× "
                f"| {fmt(g_ours)} | {fmt(g_theirs)} | {gr} | {bw} |"
            )
        print()


if __name__ == "__main__":
    main()
