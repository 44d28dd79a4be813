"""Sample quality of ``compute_dtype="bfloat16"`` against float32 on the bundled digits model.

For each seed, ``--n`` digits are sampled at ``--steps`` NFE with DPM-Solver++ 2M (``rdiff
sample``'s default scheduler and step count: ``make_scheduler("dpmsolver++", ...)``, order 2,
final step to σ = 0) twice from the same initial noise: once with the float32 UNet and once
with the bfloat16 one (``UNet2DModel.from_pretrained(..., compute_dtype="bfloat16")``). Both
are scored with ``rdiff.metrics.frechet_digits_distance`` (FD, lower is better). The table
gives each seed's FDs and their difference, and the relative L2 distance between the two
final samples of each noise (mean and max over the samples); below it, the seed spread (max −
min of the float32 FDs over the seeds) and whether |mean bf16 FD − mean f32 FD| is within it.

The batch size is fixed (``--batch-size``): under bf16 a sample's result depends on its batch
companions at the bf16 rounding level (tests/test_unet_bf16.py), so runs compare only at the
same batch size.

    python scripts/bf16_quality.py                  # --n 1000, seeds 0,1,2: ~1.5 min on 2 cores
    python scripts/bf16_quality.py --n 2000 --json bf16_quality.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import rdiff
from rdiff.cli import bundled_model_dir, make_scheduler, sample_images
from rdiff.metrics import frechet_digits_distance, noise_floor


def per_sample_rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a_i − b_i‖ / ‖a_i‖ for every sample i, in float64."""
    a64 = a.reshape(len(a), -1).astype(np.float64)
    b64 = b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a64 - b64, axis=1) / np.linalg.norm(a64, axis=1)


def run(args) -> dict:
    folder = bundled_model_dir("digits")
    models = {
        "f32": rdiff.UNet2DModel.from_pretrained(folder),
        "bf16": rdiff.UNet2DModel.from_pretrained(folder, compute_dtype="bfloat16"),
    }
    rows = []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        samples = {}
        for name, unet in models.items():
            sched = make_scheduler("dpmsolver++", folder, 2)
            t0 = time.perf_counter()
            x, nfe = sample_images(unet, sched, args.n, args.steps, seed, args.batch_size, False)
            row[f"wall_{name}"] = time.perf_counter() - t0
            row[f"fd_{name}"] = frechet_digits_distance(x)
            row["nfe"] = nfe
            samples[name] = x
        rel = per_sample_rel_l2(samples["f32"], samples["bf16"])
        row["rel_l2_mean"], row["rel_l2_max"] = float(rel.mean()), float(rel.max())
        row["diff"] = row["fd_bf16"] - row["fd_f32"]
        print(
            f"seed {seed}: FD f32 {row['fd_f32']:.3f}, bf16 {row['fd_bf16']:.3f} "
            f"({row['wall_f32']:.0f} s, {row['wall_bf16']:.0f} s)",
            flush=True,
        )
        rows.append(row)
    f32 = np.array([r["fd_f32"] for r in rows])
    bf16 = np.array([r["fd_bf16"] for r in rows])
    spread = float(f32.max() - f32.min())
    gap = float(abs(bf16.mean() - f32.mean()))
    return {
        "n": args.n,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "bf16_kernel": rdiff.backends()["cpu"]["bf16_kernel"],
        "weight_bytes": {k: m._core.weight_bytes for k, m in models.items()},
        "rows": rows,
        "mean_fd_f32": float(f32.mean()),
        "mean_fd_bf16": float(bf16.mean()),
        "seed_spread_f32": spread,
        "mean_gap": gap,
        "within_spread": gap <= spread,
        "rel_l2_mean": float(np.mean([r["rel_l2_mean"] for r in rows])),
    }


def table(res: dict) -> str:
    lines = [
        f"DPM-Solver++ 2M, NFE {res['rows'][0]['nfe']}, n = {res['n']} per seed, batch "
        f"{res['batch_size']}, bf16 kernel: {res['bf16_kernel']}, weights "
        f"{res['weight_bytes']['bf16'] / 1e6:.2f} MB (bf16) vs "
        f"{res['weight_bytes']['f32'] / 1e6:.2f} MB (f32)",
        "",
        "| seed | FD f32 | FD bf16 | bf16 − f32 | rel. L2 f32↔bf16 (mean / max) "
        "| wall f32 | wall bf16 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['seed']} | {r['fd_f32']:.3f} | {r['fd_bf16']:.3f} | {r['diff']:+.3f} "
            f"| {r['rel_l2_mean']:.2e} / {r['rel_l2_max']:.2e} "
            f"| {r['wall_f32']:.1f} s | {r['wall_bf16']:.1f} s |"
        )
    lines.append(
        f"| mean | {res['mean_fd_f32']:.3f} | {res['mean_fd_bf16']:.3f} "
        f"| {res['mean_fd_bf16'] - res['mean_fd_f32']:+.3f} | {res['rel_l2_mean']:.2e} | | |"
    )
    floor = noise_floor()
    verdict = "within" if res["within_spread"] else "NOT within"
    lines += [
        "",
        f"- seed spread of the f32 FDs (max − min over {len(res['rows'])} seeds): "
        f"{res['seed_spread_f32']:.3f}",
        f"- |mean bf16 FD − mean f32 FD| = {res['mean_gap']:.3f}: {verdict} the seed spread",
        f"- mean relative L2 distance between the f32 and bf16 final samples: "
        f"{res['rel_l2_mean']:.2e}",
        f"- real-vs-real FD floor: halves {floor['halves']:.2f}, half vs all "
        f"{floor['half_vs_all']:.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="digits per seed and dtype")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10, help="NFE (DPM-Solver++ 2M)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    t0 = time.perf_counter()
    res = run(args)
    res["wall_s"] = time.perf_counter() - t0
    print()
    print(table(res))
    print(f"\n(total {res['wall_s']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
