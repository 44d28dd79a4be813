"""Estimate the bundled digits model's Analytic-DPM Γ table (``models/digits/gamma.npz``).

Γ_t = E‖ε_θ(x_t, t)‖²/d at all N = 1000 training timesteps (the scheduler needs every one),
by ``rdiff.estimate_gamma`` with rdiff's native UNet, over a seeded random subset of the real
digits (one ε draw per digit and timestep).

    python scripts/estimate_digits_gamma.py --n-data 512  # the bundled table (391 s)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import rdiff
from rdiff.cli import bundled_model_dir, make_scheduler
from rdiff.metrics import load_real_digits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-data", type=int, default=512, help="digits per timestep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    folder = bundled_model_dir("digits")
    unet = rdiff.UNet2DModel.from_pretrained(folder)
    sched = make_scheduler("ddpm", folder, None)
    real = load_real_digits()
    idx = np.random.default_rng(args.seed).permutation(len(real))[: args.n_data]
    t0 = time.perf_counter()
    table = rdiff.estimate_gamma(
        unet, real[np.sort(idx)], sched, batch_size=args.batch_size, seed=args.seed
    )
    out = args.out or str(folder / "gamma.npz")
    table.save(out)
    g = table.gamma
    print(
        f"Γ over {args.n_data} digits × {len(g)} timesteps in {time.perf_counter() - t0:.0f} s: "
        f"Γ_0 = {g[0]:.4f}, Γ_499 = {g[499]:.4f}, Γ_999 = {g[-1]:.4f} → {out}"
    )


if __name__ == "__main__":
    main()
