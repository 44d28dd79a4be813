"""The native UNet against torch (diffusers' UNet2DModel) on the same weights.

Run: python benches/bench_unet.py [--quick] [--threads N]. The DDPM-CIFAR-10 configuration
(google/ddpm-cifar10-32, 35.7 M parameters, random weights) at 32×32, float32. Prints a
markdown table: best time per forward for both (alternating rounds in one process, same
thread count), each as GFLOP/s and as a share of this machine's float32 FMA peak (measured
in the same run by rdiff's FMA loop, `rdiff._rdiff.fma_peak_gflops`), and the peak memory
each needs for a forward: in a fresh subprocess per variant, the peak RSS (VmHWM, reset
after loading) minus the RSS after loading.

A second table times the bf16 compute path (``compute_dtype="bfloat16"``: bf16 products
with f32 sums, on AMX tiles where the CPU has them) against rdiff's own float32 and against
torch's bfloat16 (the model and input cast to ``torch.bfloat16``, oneDNN underneath), with
each one's relative L2 error against its float32 output.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=[128, 256, 256, 256],
    layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
)

CHILD = r"""
import gc, os, sys
which, path = sys.argv[1], sys.argv[2]
batch, threads, reps = (int(a) for a in sys.argv[3:6])
os.environ["RAYON_NUM_THREADS"] = str(threads)
import torch
torch.set_num_threads(threads)
if which == "torch":
    from diffusers import UNet2DModel
    m = UNet2DModel.from_pretrained(path).eval()
    def f(x, t):
        with torch.no_grad():
            return m(x, t).sample
else:
    import rdiff
    m = rdiff.UNet2DModel.from_pretrained(path)
    f = m
x = torch.randn(batch, 3, 32, 32)
t = torch.full((batch,), 500)
def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
    fh.write("5")
base = status("VmRSS:")
for _ in range(reps):
    f(x, t)
print(base, status("VmHWM:"))
"""


def best_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory(which: str, path: str, batch: int, threads: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, path, str(batch), str(threads), "3"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    base, peak = int(out[-2]), int(out[-1])
    return base / 1024, (peak - base) / 1024  # MiB (/proc/self/status is in KiB)


def model_gflop(model) -> float:
    """GFLOP of one batch-1 forward (2 per multiply-add), as torch counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32), torch.full((1,), 500))
    return counter.get_total_flops() / 1e9


def fma_peak_gflops(seconds: float) -> float:
    """This machine's float32 FMA peak on the benchmark's threads: rdiff's FMA loop."""
    from rdiff._rdiff import fma_peak_gflops

    return fma_peak_gflops(seconds)


def bf16_table(ref, path: str, rounds: int, reps: int) -> None:
    """rdiff bf16 against rdiff f32 and torch bf16, alternating, with each one's error."""
    import copy

    import torch
    from diffusers.utils import logging

    import rdiff

    logging.set_verbosity_error()  # (the cast's note on modules kept in float32: none here)
    f32 = rdiff.UNet2DModel.from_pretrained(path)
    bf = rdiff.UNet2DModel.from_pretrained(path, compute_dtype="bfloat16")
    ref_bf = copy.deepcopy(ref).to(torch.bfloat16)
    print(
        f'\nbf16 compute (`compute_dtype="bfloat16"`, kernel '
        f"{rdiff.backends()['cpu']['bf16_kernel']}) against rdiff's float32 and torch's "
        "bfloat16 (model and input cast)\n"
    )
    print(
        "| batch | rdiff f32 ms | rdiff bf16 ms | bf16 / f32 | torch bf16 ms | rdiff bf16 vs "
        "torch bf16 | rdiff bf16 rel. error | torch bf16 rel. error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        x = torch.randn(batch, 3, 32, 32)
        t = torch.full((batch,), 500)
        xb = x.to(torch.bfloat16)
        with torch.no_grad():
            want = ref(x, t).sample
            got_torch = ref_bf(xb, t).sample.float()
        got = bf(x, t)

        def rel(y, want=want):
            return float((y - want).norm() / want.norm())

        def run_torch_bf16(xb=xb, t=t):
            with torch.no_grad():
                ref_bf(xb, t)

        runs = {
            "f32": lambda x=x, t=t: f32(x, t),
            "bf16": lambda x=x, t=t: bf(x, t),
            "torch": run_torch_bf16,
        }
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(rounds):
            for name, fn in runs.items():
                best[name] = min(best[name], best_time(fn, reps))
        print(
            f"| {batch} | {best['f32'] * 1e3:.1f} | {best['bf16'] * 1e3:.1f} | "
            f"{best['f32'] / best['bf16']:.2f}× | {best['torch'] * 1e3:.1f} | "
            f"{best['torch'] / best['bf16']:.2f}× | {rel(got):.1e} | {rel(got_torch):.1e} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch
    from diffusers import UNet2DModel

    import rdiff

    torch.set_num_threads(args.threads)
    rounds, reps = (2, 3) if args.quick else (4, 5)
    torch.manual_seed(0)
    ref = UNet2DModel(**CIFAR10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = rdiff.UNet2DModel.from_pretrained(tmp)
        load = os.getloadavg()[0]
        print(
            f"rdiff {rdiff.__version__}, torch {torch.__version__}, threads {args.threads}, "
            f"load average {load:.1f} at start"
        )
        gflop = model_gflop(ref)
        peak = fma_peak_gflops(1.0)
        print(
            f"DDPM-CIFAR-10 UNet (35.7 M parameters), 32×32, float32, {gflop:.2f} GFLOP per "
            f"sample (torch's FlopCounterMode); f32 FMA peak {peak:.0f} GFLOP/s measured "
            f"({rdiff.backends()['cpu']['simd']})\n"
        )
        print(
            "| batch | torch ms | rdiff ms | speed-up | torch GFLOP/s (% peak) | "
            "rdiff GFLOP/s (% peak) | torch peak MiB | rdiff peak MiB |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for batch in (1, 8):
            x = torch.randn(batch, 3, 32, 32)
            t = torch.full((batch,), 500)

            def run_torch(x=x, t=t):
                with torch.no_grad():
                    ref(x, t)

            def run_rdiff(x=x, t=t):
                ours(x, t)

            run_torch()
            run_rdiff()
            tt = tr = float("inf")
            for _ in range(rounds):  # alternate, so load changes hit both alike
                tt = min(tt, best_time(run_torch, reps))
                tr = min(tr, best_time(run_rdiff, reps))
            _, mt = peak_memory("torch", tmp, batch, args.threads)
            _, mr = peak_memory("rdiff", tmp, batch, args.threads)
            gt, gr = gflop * batch / tt, gflop * batch / tr
            print(
                f"| {batch} | {tt * 1e3:.1f} | {tr * 1e3:.1f} | {tt / tr:.2f}× | "
                f"{gt:.0f} ({100 * gt / peak:.0f}%) | {gr:.0f} ({100 * gr / peak:.0f}%) | "
                f"{mt:.0f} | {mr:.0f} |"
            )
        bf16_table(ref, tmp, rounds, reps)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
        print("peak MiB: a fresh process's peak RSS during 3 forwards minus its RSS after loading")


if __name__ == "__main__":
    main()
