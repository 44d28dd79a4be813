"""Sample-quality metric for the bundled ``digits`` model, in numpy only.

:func:`frechet_digits_distance` is an FID analogue for 16x16 digits: the Fréchet distance
between Gaussian fits of the 64-d penultimate features of a small MLP digits classifier
(``scripts/train_digits_classifier.py``, held-out accuracy > 95 %), for the given samples and
for the 1,797 real digits of scikit-learn's ``load_digits`` (their feature mean and covariance
are precomputed and shipped in ``models/digits/classifier.npz``).

Noise floor (real vs real): the FD between the two halves (898 / 899 digits) of a random split
of the real digits is ≈ 4.4, and a half against the statistics of all 1,797 is ≈ 1.1
(what this function returns for 898 real digits); the exact values are stored in
``classifier.npz`` (see :func:`noise_floor`) and quoted in ``docs/quality_vs_nfe.md``.
Like FID, the estimate is biased upwards for small sample counts:
compare settings at the same number of samples (≥ 1,000).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "classify_digits",
    "digit_features",
    "frechet_digits_distance",
    "frechet_distance",
    "load_real_digits",
    "noise_floor",
    "upsample_digits",
]

_DIR = Path(__file__).resolve().parent / "models" / "digits"


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Rows: the weights of torch's ``interpolate(mode="bilinear", align_corners=False)``."""
    w = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        f = src - i0
        w[o, i0] += 1.0 - f
        w[o, i1] += f
    return w


_MAX_SIZE = 1 << 14


def upsample_digits(x: np.ndarray, size: int = 16) -> np.ndarray:
    """Bilinear upsampling of (..., h, w) images to (..., size, size), as torch's
    ``align_corners=False``."""
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size: expected an integer, got {type(size).__name__} {size!r}")
    if not 1 <= size <= _MAX_SIZE:
        raise ValueError(f"size: must be in [1, {_MAX_SIZE}], got {size}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or 0 in x.shape[-2:]:
        raise ValueError(f"x: expected images of shape (..., h, w), got shape {x.shape}")
    wy = _bilinear_matrix(x.shape[-2], size).astype(np.float32)
    wx = _bilinear_matrix(x.shape[-1], size).astype(np.float32)
    return np.einsum("oh,...hw,pw->...op", wy, x, wx).astype(np.float32)


def load_real_digits(with_labels: bool = False):
    """The 1,797 real digits as (1797, 1, 16, 16) float32 in [-1, 1] (and their labels)."""
    d = np.load(_DIR / "data.npz")
    x = upsample_digits(d["images"].astype(np.float32) / 8.0 - 1.0)[:, None]
    return (x, d["labels"].copy()) if with_labels else x


@lru_cache(maxsize=1)
def _classifier() -> dict[str, np.ndarray]:
    with np.load(_DIR / "classifier.npz") as z:
        return {k: z[k] for k in z.files}


def _features(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    h = np.maximum(x @ w["w1"] + w["b1"], 0.0)
    return np.maximum(h @ w["w2"] + w["b2"], 0.0).astype(np.float64)


def _flat(samples) -> np.ndarray:
    if hasattr(samples, "detach"):
        samples = samples.detach().cpu().float().numpy()
    try:
        x = np.asarray(samples)
        if x.dtype.kind not in "iuf":
            raise TypeError(f"dtype {x.dtype}")
        x = x.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError(f"samples: expected an array of real numbers ({e})") from None
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"samples: expected one channel, got shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (16, 16):
        raise ValueError(f"samples: expected shape (n, 1, 16, 16) or (n, 16, 16), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("samples: contain NaN or infinite values")
    return x.reshape(x.shape[0], 256)


def digit_features(samples) -> np.ndarray:
    """The classifier's 64-d features, (n, 64) float64."""
    return _features(_flat(samples), _classifier())


def classify_digits(samples) -> np.ndarray:
    """The classifier's predicted labels, (n,) int64."""
    w = _classifier()
    return (_features(_flat(samples), w) @ w["w3"] + w["b3"]).argmax(1)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    v, u = np.linalg.eigh((a + a.T) / 2)
    return (u * np.sqrt(np.clip(v, 0.0, None))) @ u.T


def _real(v, name: str) -> np.ndarray:
    """``v`` as a float64 array: TypeError naming it unless real (complex values would lose
    their imaginary part), ValueError unless finite."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½), with symmetric eigendecompositions."""
    mu1, cov1, mu2, cov2 = (
        _real(v, n) for v, n in ((mu1, "mu1"), (cov1, "cov1"), (mu2, "mu2"), (cov2, "cov2"))
    )
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if d < 0 or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape} "
            "are not (d,), (d, d), (d,), (d, d)"
        )
    s1 = _sqrtm_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    d = mu1 - mu2
    # clipped at 0: identical statistics give a tiny negative round-off
    return max(float(d @ d + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt), 0.0)


def frechet_digits_distance(samples) -> float:
    """Fréchet distance of ``samples`` ((n, 1, 16, 16) or (n, 16, 16), in [-1, 1]) to the real
    digits, in the classifier's feature space. Lower is better; see the module docstring for the
    real-vs-real noise floor. Needs n ≥ 2 (use ≥ 1,000 to compare samplers)."""
    f = digit_features(samples)
    if f.shape[0] < 2:
        raise ValueError(f"samples: need at least two, got {f.shape[0]}")
    w = _classifier()
    return frechet_distance(f.mean(0), np.cov(f, rowvar=False), w["mu"], w["cov"])


def noise_floor() -> dict[str, float]:
    """The real-vs-real FDs stored with the classifier: ``halves`` (a random 898/899 split)
    and ``half_vs_all`` (a half against the statistics of all 1,797 digits)."""
    w = _classifier()
    return {"halves": float(w["floor_halves"]), "half_vs_all": float(w["floor_half_vs_all"])}
