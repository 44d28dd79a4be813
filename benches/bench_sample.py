"""``rdiff sample`` against the equivalent diffusers pipeline in torch, same run.

Run: python benches/bench_sample.py [--repeats 5] [--threads N] [--n 64] [--steps 10].

rdiff: what ``rdiff sample --model bundled:digits --scheduler dpmsolver++ --steps 10 --n 64``
runs (``rdiff.cli.sample_images``: the native UNet and rdiff's DPM-Solver++ 2M, numpy in and
out, no torch). torch: diffusers' ``DDPMPipeline`` with diffusers' ``UNet2DModel`` loaded
from the same folder and diffusers' ``DPMSolverMultistepScheduler`` with the same settings,
``output_type="np"``. Both sample the same number of images in one batch with the same
thread count (``RAYON_NUM_THREADS`` / ``torch.set_num_threads``).

Each side runs in its own fresh subprocess: import, load the model, one warm-up sampling
run, then ``--repeats`` timed runs (the table shows the median and the range of wall time,
and the median CPU time of the process, which a loaded machine disturbs less); the
process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is read at the end. A
second fresh subprocess per side only imports the same modules, so the table shows both the
total peak and the increment over that import-only baseline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
t_start = time.perf_counter()
from pathlib import Path
which, folder = sys.argv[1], Path(sys.argv[2])
n, steps, repeats, threads, only_import = map(int, sys.argv[3:8])
os.environ["RAYON_NUM_THREADS"] = str(threads)
if which == "rdiff":
    import numpy as np
    import rdiff
    from rdiff.cli import make_scheduler, sample_images
else:
    import numpy as np
    import torch
    import diffusers
    torch.set_num_threads(threads)
t_import = time.perf_counter()

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

def hwm_mib():  # the same peak from the kernel's per-address-space counter, as a cross-check
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024

if only_import:
    print(json.dumps({"peak_mib": peak_mib(), "hwm_mib": hwm_mib()}))
    sys.exit(0)
if which == "rdiff":
    unet = rdiff.UNet2DModel.from_pretrained(folder)
    sched = make_scheduler("dpmsolver++", folder, None)

    def sample(seed):
        x, nfe = sample_images(unet, sched, n, steps, seed, batch_size=n, progress=False)
        return x, nfe
else:
    unet = diffusers.UNet2DModel.from_pretrained(folder).eval()
    cfg = json.loads((folder / "scheduler_config.json").read_text())
    # the settings make_scheduler gives rdiff's: DPM-Solver++ 2M, final step to σ = 0
    sched = diffusers.DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"
    )
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            out = pipe(batch_size=n, generator=g, num_inference_steps=steps, output_type="np")
        return out.images, len(pipe.scheduler.timesteps)
t_load = time.perf_counter()
x, nfe = sample(0)
t_first = time.perf_counter()
times, cpu = [], []
for r in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    x, nfe = sample(r + 1)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
print(json.dumps({
    "import_s": t_import - t_start, "load_s": t_load - t_import, "first_s": t_first - t_load,
    "times": times, "cpu": cpu, "nfe": nfe, "shape": list(np.asarray(x).shape),
    "peak_mib": peak_mib(), "hwm_mib": hwm_mib(),
}))
"""


def child(which: str, args, only_import: bool) -> dict:
    cmd = [sys.executable, "-c", CHILD, which, str(args.folder)]
    cmd += [str(v) for v in (args.n, args.steps, args.repeats, args.threads, int(only_import))]
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(v: list[float]) -> float:
    s = sorted(v)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    # The parent imports none of rdiff, torch or diffusers: ru_maxrss survives fork + exec on
    # Linux, so a heavy parent would leak its own peak into every child's figure.
    spec = importlib.util.find_spec("rdiff")
    args.folder = Path(spec.submodule_search_locations[0]) / "models" / "digits"
    ver = importlib.metadata.version
    print(
        f"rdiff {ver('rdiff')}, torch {ver('torch')}, diffusers {ver('diffusers')}"
        f", threads {args.threads}; {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        f"bundled digits model (16×16), DPM-Solver++ 2M, {args.steps} steps, {args.n} samples "
        f"in one batch, float32; median (min–max) of {args.repeats} runs after a warm-up\n"
    )
    res, base = {}, {}
    for which in ("rdiff", "torch"):  # one side at a time, each in fresh processes
        base[which] = child(which, args, only_import=True)
        res[which] = child(which, args, only_import=False)
    r, t = res["rdiff"], res["torch"]
    assert r["nfe"] == t["nfe"] == args.steps, (r["nfe"], t["nfe"])
    print("| | torch (diffusers DDPMPipeline) | rdiff sample | torch / rdiff |")
    print("|---|---:|---:|---:|")
    mt, mr = median(t["times"]), median(r["times"])
    print(
        f"| sampling wall time | {mt * 1e3:.0f} ms ({min(t['times']) * 1e3:.0f}–"
        f"{max(t['times']) * 1e3:.0f}) | {mr * 1e3:.0f} ms ({min(r['times']) * 1e3:.0f}–"
        f"{max(r['times']) * 1e3:.0f}) | {mt / mr:.2f}× |"
    )
    print(
        f"| per step (batch {args.n}) | {mt / args.steps * 1e3:.1f} ms | "
        f"{mr / args.steps * 1e3:.1f} ms | {mt / mr:.2f}× |"
    )
    ct, cr = median(t["cpu"]), median(r["cpu"])
    print(
        f"| sampling CPU time (all threads) | {ct * 1e3:.0f} ms | {cr * 1e3:.0f} ms | "
        f"{ct / cr:.2f}× |"
    )
    print(
        f"| first run (cold) | {t['first_s'] * 1e3:.0f} ms | {r['first_s'] * 1e3:.0f} ms | "
        f"{t['first_s'] / r['first_s']:.2f}× |"
    )
    print(
        f"| import | {t['import_s']:.2f} s | {r['import_s']:.2f} s | "
        f"{t['import_s'] / r['import_s']:.2f}× |"
    )
    print(
        f"| model load | {t['load_s'] * 1e3:.0f} ms | {r['load_s'] * 1e3:.0f} ms | "
        f"{t['load_s'] / r['load_s']:.2f}× |"
    )
    print(
        f"| peak RSS, total | {t['peak_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB | "
        f"{t['peak_mib'] / r['peak_mib']:.2f}× |"
    )
    print(
        f"| peak RSS, import only | {base['torch']['peak_mib']:.0f} MiB | "
        f"{base['rdiff']['peak_mib']:.0f} MiB | "
        f"{base['torch']['peak_mib'] / base['rdiff']['peak_mib']:.2f}× |"
    )
    it = t["peak_mib"] - base["torch"]["peak_mib"]
    ir = r["peak_mib"] - base["rdiff"]["peak_mib"]
    print(
        f"| peak RSS, increment (load + sample) | {it:.0f} MiB | {ir:.0f} MiB | "
        f"{it / ir if ir > 0 else float('nan'):.2f}× |"
    )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    hwm = {k: (base[k]["hwm_mib"], res[k]["hwm_mib"]) for k in res}
    print(f"cross-check, VmHWM (import only, total) MiB: {json.dumps(hwm)}")


if __name__ == "__main__":
    main()
