"""The variational bound (NELBO, bits/dim) of the bundled digits model for DDPM's two fixed
variances and Analytic-DPM, on the Analytic-DPM paper's terms; writes
``docs/nelbo_digits.json`` and prints a Markdown table.

    python scripts/nelbo_digits.py --n 600 --ks 10,25,50,100,1000

As the authors' ``nelbo_ms_eps_ddpm`` / ``nelbo_naive_ddpm`` (baofff/Analytic-DPM,
``cifar_imagenet_codes/core/inference/ll/elbo.py``) compute it, on their 1-based trajectory
with s = 0 first: the prior term KL(q(x_N|x₀) ‖ N(0, I)); for each step r → s > 0,
KL(q(x_s|x_r, x₀) ‖ N(μ_p, σ²)) at one x_r ~ q(x_r|x₀), with μ_p from the clamped x₀
prediction; at the last step the discretized Gaussian decoder (8-bit bins, the authors'
tanh approximation of Φ) with σ² = β̃ of step 2 → 1. The data are the 1,797 digits quantized
to 8 bits. Every variance choice sees the same x_r draws and model outputs (paired):

- DDPM (β̃): σ² = β̃ of the step; DDPM (β): σ² = 1 − ᾱ_r/ᾱ_s;
- Analytic-DDPM: σ² = ``rdiff.AnalyticDPMScheduler(form="ddpm").variances`` (the optimal
  variance from the bundled Γ, Cov(x₀|x_r) clipped to [0, 1], without the sampling cap of the
  second-to-last step), on the uniform trajectory and on ``rdiff.optimal_trajectory``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

import rdiff
from rdiff.cli import bundled_model_dir
from rdiff.metrics import load_real_digits

ROOT = Path(__file__).resolve().parents[1]


def approx_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def log_discretized_normal(x, mu, var):
    """log P(bin of x) under N(mu, var), bins of width 2/255, open-ended at ±1."""
    c, std = x - mu, math.sqrt(var)
    cdf_r, cdf_l = approx_cdf((c + 1 / 255) / std), approx_cdf((c - 1 / 255) / std)
    mid = np.log(np.maximum(cdf_r - cdf_l, 1e-12))
    lo = np.log(np.maximum(cdf_r, 1e-12))
    hi = np.log(np.maximum(1.0 - cdf_l, 1e-12))
    return np.where(x < -0.999, lo, np.where(x > 0.999, hi, mid))


def kl_normal(mu_q, var_q, mu_p, var_p):
    """KL(N(mu_q, var_q) ‖ N(mu_p, var_p)) per element (variances scalar)."""
    return 0.5 * (math.log(var_p / var_q) + var_q / var_p + (mu_q - mu_p) ** 2 / var_p - 1.0)


def nelbo(unet, x0, ac, ts, variances: dict, rng, batch: int) -> dict:
    """Per-image NELBO (nats) of each variance choice on trajectory ``ts`` (0-based,
    descending, from the Analytic-DPM scheduler); ``variances[name]`` gives σ² per step."""
    n = len(x0)
    cum = np.concatenate([[1.0], ac])  # the authors' 1-based ᾱ, ᾱ_0 = 1
    ns = (np.asarray(ts)[::-1] + 1).tolist()  # ascending, 1-based
    assert ns[0] == 1 and ns[-1] == len(ac)
    out = {k: np.zeros(n) for k in variances}
    prior = kl_normal(math.sqrt(cum[-1]) * x0, 1.0 - cum[-1], 0.0, 1.0).reshape(n, -1).sum(1)
    for k in out:
        out[k] += prior
    pairs = list(zip([0, *ns[:-1]], ns, strict=True))[::-1]  # (s, r), r from N down to 1
    for j, (s, r) in enumerate(pairs):
        skip_alpha = cum[r] / cum[s]
        skip_beta = 1.0 - skip_alpha
        eps = rng.standard_normal(x0.shape).astype(np.float32)
        x_r = (math.sqrt(cum[r]) * x0 + math.sqrt(1 - cum[r]) * eps).astype(np.float32)
        t = np.full(min(batch, n), r - 1, dtype=np.int64)
        eps_pred = np.concatenate(
            [unet(x_r[i : i + batch], t[: len(x_r[i : i + batch])]) for i in range(0, n, batch)]
        ).astype(np.float64)
        x0_pred = np.clip((x_r - math.sqrt(1 - cum[r]) * eps_pred) / math.sqrt(cum[r]), -1, 1)
        c1 = skip_beta * math.sqrt(cum[s]) / (1 - cum[r])
        c2 = math.sqrt(skip_alpha) * (1 - cum[s]) / (1 - cum[r])
        mu_p = c1 * x0_pred + c2 * x_r
        if s == 0:
            var = (1 - cum[2] / cum[1]) * (1 - cum[1]) / (1 - cum[2])  # the authors' σ²(1, 2)
            term = -log_discretized_normal(x0, mu_p, var).reshape(n, -1).sum(1)
            for k in out:
                out[k] += term
            continue
        mu_q = c1 * x0 + c2 * x_r
        var_q = skip_beta * (1 - cum[s]) / (1 - cum[r])
        for k, var_of in variances.items():
            out[k] += kl_normal(mu_q, var_q, mu_p, var_of(j, s, r)).reshape(n, -1).sum(1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--ks", default="10,25,50,100,1000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=600)
    p.add_argument("--json", default=str(ROOT / "docs" / "nelbo_digits.json"))
    args = p.parse_args()

    folder = bundled_model_dir("digits")
    unet = rdiff.UNet2DModel.from_pretrained(folder)
    gamma = rdiff.GammaTable.load(folder / "gamma.npz")
    ac = np.asarray(rdiff.DDPMScheduler.from_pretrained(folder).alphas_cumprod, dtype=np.float64)
    rng = np.random.default_rng(args.seed)
    x = load_real_digits()
    x = x[rng.permutation(len(x))[: args.n]]
    x0 = (np.round((x + 1) * 127.5) / 127.5 - 1).astype(np.float64)  # 8-bit digits
    dims = x0[0].size
    results = {}
    for k in [int(v) for v in args.ks.split(",")]:
        for traj in ("uniform", "optimal"):
            sched = rdiff.AnalyticDPMScheduler(
                gamma=gamma, form="ddpm", trajectory=traj, clip_sigma_pixels=None
            )
            sched.set_timesteps(k)
            ts, an = np.asarray(sched.timesteps), np.asarray(sched.variances)
            if traj == "optimal" and np.array_equal(ts, results.get(f"{k}|uniform_ts")):
                results[f"{k}|optimal"] = {"same_as": "uniform", **results[f"{k}|uniform"]}
                continue
            variances = {"Analytic-DDPM": lambda j, s, r, an=an: float(an[j])}
            if traj == "uniform":
                variances["DDPM (β̃)"] = lambda j, s, r: (
                    (1 - ac[r - 1] / (ac[s - 1])) * (1 - ac[s - 1]) / (1 - ac[r - 1])
                )
                variances["DDPM (β)"] = lambda j, s, r: 1 - ac[r - 1] / ac[s - 1]
            t0 = time.perf_counter()
            run = nelbo(
                unet, x0, ac, ts, variances, np.random.default_rng(args.seed + k), args.batch_size
            )
            bpd = {
                name: {
                    "bpd": float(v.mean() / (dims * math.log(2))),
                    "se": float(v.std(ddof=1) / math.sqrt(len(v)) / (dims * math.log(2))),
                }
                for name, v in run.items()
            }
            results[f"{k}|{traj}"] = bpd
            results[f"{k}|uniform_ts" if traj == "uniform" else f"{k}|optimal_ts"] = ts.tolist()
            print(
                k,
                traj,
                {n_: round(b["bpd"], 3) for n_, b in bpd.items()},
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    meta = {
        "n": args.n,
        "seed": args.seed,
        "data": "the 1,797 digits quantized to 8 bits",
        "dims": dims,
    }
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
