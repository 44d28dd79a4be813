"""Train the small digits classifier behind ``rdiff.metrics.frechet_digits_distance``.

An MLP (256 → 128 → 64 → 10, ReLU) on the 16x16 digits (the same [-1, 1] bilinear 2x upsampling
as the diffusion model's training data), trained in torch on a seeded 80/20 split; its held-out
accuracy is printed and stored. Writes, to ``python/rdiff/models/digits/``:

- ``classifier.npz``: the weights (``w1, b1, w2, b2, w3, b3, w4, b4``, y = x @ w + b), the
  mean ``mu`` and covariance ``cov`` of the 64-d features (post-ReLU second hidden layer) of
  all 1,797 real digits, the held-out accuracy and the real-vs-real noise floors;
- ``data.npz``: the 1,797 real 8x8 digits (uint8, 0..16) and their labels, so the metric and
  the tests need neither scikit-learn nor torch.

    python scripts/train_digits_classifier.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _metrics_module():
    # rdiff.metrics without importing the compiled extension (works from a source checkout)
    import importlib.util

    spec = importlib.util.spec_from_file_location("_m", ROOT / "python/rdiff/metrics.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_m"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "python/rdiff/models/digits"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    m = _metrics_module()
    d = load_digits()
    x8 = d.images.astype(np.uint8)
    y = d.target.astype(np.int64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "data.npz", images=x8, labels=y)

    x = m.upsample_digits(x8.astype(np.float32) / 8.0 - 1.0).reshape(len(y), -1)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(y))
    ntr = int(0.8 * len(y))
    tr, te = perm[:ntr], perm[ntr:]
    net = nn.Sequential(
        nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        order = torch.randperm(len(tr), generator=gen)
        for i in range(0, len(tr), 64):
            b = order[i : i + 64]
            # light noise augmentation: the classifier must not be brittle to sampler noise
            xb = xt[b] + 0.05 * torch.randn(xt[b].shape, generator=gen)
            loss = nn.functional.cross_entropy(net(xb), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (net(torch.from_numpy(x[te])).argmax(1).numpy() == y[te]).mean()
    print(f"held-out accuracy {acc:.4f} ({len(te)} digits)")
    assert acc > 0.95, acc
    lin = [mod for mod in net if isinstance(mod, nn.Linear)]
    w = {}
    for i, mod in enumerate(lin, 1):
        w[f"w{i}"] = mod.weight.detach().numpy().T.astype(np.float32).copy()
        w[f"b{i}"] = mod.bias.detach().numpy().astype(np.float32).copy()
    feats = m._features(x, w)
    mu, cov = feats.mean(0), np.cov(feats, rowvar=False)
    # noise floors: FD between the two halves of a random split, and a half vs all digits
    a, b = perm[: len(y) // 2], perm[len(y) // 2 :]
    halves = m.frechet_distance(
        feats[a].mean(0),
        np.cov(feats[a], rowvar=False),
        feats[b].mean(0),
        np.cov(feats[b], rowvar=False),
    )
    half_vs_all = m.frechet_distance(feats[a].mean(0), np.cov(feats[a], rowvar=False), mu, cov)
    print(f"noise floor: halves {halves:.3f}, half vs all {half_vs_all:.3f}")
    np.savez_compressed(
        out / "classifier.npz",
        **w,
        mu=mu.astype(np.float64),
        cov=cov.astype(np.float64),
        heldout_accuracy=np.float64(acc),
        floor_halves=np.float64(halves),
        floor_half_vs_all=np.float64(half_vs_all),
    )


if __name__ == "__main__":
    main()
