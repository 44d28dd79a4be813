"""Train the bundled ``digits`` DDPM: a small diffusers UNet2DModel on scikit-learn's digits.

Reproducible: seeded, CPU torch with a fixed thread count, and a fixed number of optimiser
steps (``--steps``; the bundled model used 5,000, about 23 min on 2 idle cores). Without ``--steps``
it trains for a wall-clock budget (``--minutes``) instead, which depends on the machine's load.
The 8x8 digits (values 0..16) are scaled to [-1, 1] and upsampled to 16x16 bilinearly
(``align_corners=False``, the same map as ``rdiff.metrics.upsample_digits``). No flips: digits
are not flip-invariant. ε-prediction, 1000 steps, linear betas, AdamW, EMA of the weights.
The EMA weights are written (diffusers folder) every ``--save-every`` seconds and at the end.

    python scripts/train_digits.py --steps 5000 --threads 2 --out python/rdiff/models/digits
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits


def digits16() -> torch.Tensor:
    x = load_digits().images.astype(np.float32) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    x = torch.from_numpy(x)[:, None]
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def make_model() -> UNet2DModel:
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        attention_head_dim=32,
    )


def save(ema: UNet2DModel, sched: DDPMScheduler, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out, safe_serialization=True)
    sched.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="budget when --steps is not given")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (reproducible)")
    p.add_argument("--out", default="python/rdiff/models/digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=float, default=120.0, help="seconds")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    data = digits16()
    n = data.shape[0]
    model = make_model()
    ema = copy.deepcopy(model).eval()
    for q in ema.parameters():
        q.requires_grad_(False)
    nparams = sum(q.numel() for q in model.parameters())
    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon"
    )
    abar = sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    budget = args.minutes * 60.0
    warmup = 200
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    last_save = t0
    step, running = 0, None
    limit = f"{args.steps} steps" if args.steps else f"budget {budget:.0f}s"
    print(f"params {nparams}, data {tuple(data.shape)}, {limit}", flush=True)
    out = Path(args.out)
    while True:
        elapsed = time.perf_counter() - t0
        if (step >= args.steps) if args.steps else (elapsed >= budget):
            break
        # lr: linear warm-up, then cosine decay over the steps (or the wall-clock budget)
        frac = step / args.steps if args.steps else min(elapsed / budget, 1.0)
        lr = (
            args.lr
            * min(1.0, (step + 1) / warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (args.batch_size,), generator=gen)
        x0 = data[idx]
        t = torch.randint(0, 1000, (args.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(model(xt, t).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        step += 1
        if step % 100 == 0:
            print(f"step {step} t={elapsed:.0f}s loss {running:.4f} lr {lr:.2e}", flush=True)
        if time.perf_counter() - last_save > args.save_every:
            meta = {"steps": step, "seconds": round(elapsed, 1), "loss_ema": running}
            save(ema, sched, out, meta)
            last_save = time.perf_counter()
    elapsed = time.perf_counter() - t0
    meta = {
        "steps": step,
        "seconds": round(elapsed, 1),
        "loss_ema": running,
        "params": nparams,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "ema": args.ema,
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    save(ema, sched, out, meta)
    print(f"done: {step} steps in {elapsed:.0f}s, loss (running mean) {running:.4f}", flush=True)


if __name__ == "__main__":
    main()
