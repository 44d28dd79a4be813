"""Analytic-DPM (Bao et al., ICLR 2022): the Γ statistic and the optimal trajectory.

Γ_t = E‖ε_θ(x_t, t)‖²/d over x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, x_0 from the training data, is
all Analytic-DPM needs to give a pretrained model its optimal reverse variance::

    table = rdiff.estimate_gamma(unet, images, scheduler)      # once per model
    table.save("gamma.npz")
    sched = rdiff.AnalyticDPMScheduler(gamma=rdiff.GammaTable.load("gamma.npz"))

Sharding: give each worker a contiguous slice of the data that starts at a multiple of
``batch_size`` and pass its start row as ``offset``; every worker draws the same noise for a
row as the one-shot run would, and ``merge`` (or ``all_reduce`` under torch.distributed)
reproduces the one-shot table exactly: the sums are kept as exact fixed-point integers.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from . import _tensor
from ._rdiff import NoiseSchedule, WeightsError, _gamma_batch_sums, _optimal_trajectory

__all__ = ["GammaTable", "estimate_gamma", "optimal_trajectory"]

_FIXED_BITS = 64
_FIXED = 1 << _FIXED_BITS
_FORMAT = "rdiff.GammaTable"
_VERSION = 1
_MASK64 = (1 << 64) - 1


def _alphas_cumprod(schedule: Any, who: str = "Analytic-DPM") -> np.ndarray:
    """ᾱ (float64, shape (N,)) of a NoiseSchedule, an rdiff or diffusers scheduler or an array;
    ``who`` (the caller) is named where a continuous schedule has no ᾱ table."""
    if isinstance(schedule, NoiseSchedule):
        ac = schedule.alphas_cumprod
        if ac is None:
            raise ValueError(f"schedule: {who} needs a discrete schedule (NoiseSchedule.discrete)")
        return np.asarray(ac, dtype=np.float64)
    ac = getattr(schedule, "alphas_cumprod", schedule)
    if _tensor.is_torch(ac):
        ac = ac.detach().cpu().double().numpy()
    try:
        ac = np.asarray(ac, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            "schedule: expected an rdiff.NoiseSchedule, a scheduler with alphas_cumprod or an "
            f"array of ᾱ, got {type(schedule).__name__}"
        ) from None
    if ac.ndim != 1 or ac.size == 0:
        raise ValueError(f"schedule: ᾱ must be a non-empty 1-d array, got shape {ac.shape}")
    if not np.all((ac > 0) & (ac < 1)):
        raise ValueError("schedule: every ᾱ must lie in (0, 1)")
    return ac


# A table file's entry above this is corrupt (a table for 10⁶ timesteps needs 16 MB at most).
_MAX_ENTRY_BYTES = 1 << 28


def _check_npz_sizes(path: str) -> None:
    """ValueError for an entry whose npy header claims another size than the entry holds.

    numpy reserves an array of the header's shape before reading it, so a header claiming a
    huge shape would allocate (or fail to) before the short read is noticed; the header is
    checked against the zip's record of the entry's size first, and that size is bounded.
    """
    fmt = np.lib.format
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.file_size > _MAX_ENTRY_BYTES:
                raise ValueError(f"{info.filename}: {info.file_size} bytes is past the bound")
            with zf.open(info) as f:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = fmt.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = fmt.read_array_header_2_0(f)
                else:
                    raise ValueError(f"{info.filename}: npy format version {version}")
                need = math.prod(shape) * dtype.itemsize
                have = info.file_size - f.tell()
                if need != have:
                    raise ValueError(
                        f"{info.filename}: the header claims shape {shape} of {dtype} "
                        f"({need} bytes) but the entry holds {have} bytes"
                    )


def _read_table(path: str | os.PathLike, owner: str, what: str, build: Any) -> Any:
    """``build(arrays)`` of the .npz at ``path`` (a statistics table: Γ, EMS), every failure a
    ``WeightsError`` naming ``owner`` (e.g. "GammaTable.load") and ``what`` the file should be:
    missing, unreadable, entries whose headers lie about their size, or ``build`` refusing
    the arrays (KeyError, ValueError, TypeError, IndexError, OverflowError)."""
    p = os.fspath(path)
    try:
        _check_npz_sizes(p)
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise WeightsError(f"{owner}: no such file: {p}") from None
    except Exception as e:
        raise WeightsError(f"{owner}: {p} is not a readable .npz file ({e})") from None
    try:
        return build(data)
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as e:
        raise WeightsError(f"{owner}: {p} is not a valid {what} ({e})") from None


def _same_schedule(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=0.0))


def _check_table_schedule(what: str, table_ac: np.ndarray, schedule: Any) -> None:
    """ValueError (prefixed ``what``) unless a statistics table estimated for ᾱ = ``table_ac``
    (Γ, EMS) belongs to ``schedule``: the same number of training timesteps and ᾱ."""
    ac = _alphas_cumprod(schedule)
    if ac.shape != table_ac.shape:
        raise ValueError(
            f"{what}: the table was estimated for another noise schedule ({table_ac.shape[0]} "
            f"training timesteps, not {ac.shape[0]})"
        )
    if not _same_schedule(ac, table_ac):
        i = int(np.argmax(np.abs(ac - table_ac)))
        raise ValueError(
            f"{what}: the table was estimated for another noise schedule (ᾱ differs at "
            f"timestep {i}: {table_ac[i]!r} vs {ac[i]!r})"
        )


def _to_limbs(values: Sequence[int]) -> np.ndarray:
    """Non-negative ints below 2¹²⁸ as (n, 2) uint64 (low, high)."""
    out = np.zeros((len(values), 2), dtype=np.uint64)
    for i, v in enumerate(values):
        if v < 0 or v >> 128:
            raise ValueError("GammaTable: a sum is out of range")
        out[i, 0] = v & _MASK64
        out[i, 1] = v >> 64
    return out


def _from_limbs(limbs: np.ndarray) -> list[int]:
    return [int(lo) | (int(hi) << 64) for lo, hi in limbs.tolist()]


class GammaTable:
    """Γ_t = E‖ε_θ(x_t, t)‖²/d at a set of training timesteps, as mergeable sums.

    Attributes (read-only): ``timesteps`` (int64, ascending, diffusers' 0-based indices),
    ``gamma`` (float64 means), ``count`` (int64 samples per timestep), ``stderr`` (float64
    standard errors of the means), ``num_train_timesteps`` and ``alphas_cumprod`` (the schedule
    the table was estimated for; a table refuses to be used with another one).

    The per-sample values v = ‖ε‖²/d are summed as exact integers (v rounded to a multiple of
    2⁻⁶⁴), so ``merge`` is exact and independent of the order in which shards are combined.
    """

    def __init__(
        self,
        timesteps: Any,
        count: Any,
        sums: Sequence[int],
        sums_sq: Sequence[int],
        alphas_cumprod: Any,
    ) -> None:
        ts = np.array(timesteps, dtype=np.int64).reshape(-1)
        cnt = np.array(count, dtype=np.int64).reshape(-1)
        ac = _alphas_cumprod(alphas_cumprod).copy()
        n = ts.shape[0]
        if cnt.shape != (n,) or len(sums) != n or len(sums_sq) != n:
            raise ValueError("GammaTable: timesteps, count and sums must have the same length")
        # Compared, not differenced: np.diff wraps around for extreme int64 values.
        if n and (np.any(ts[1:] <= ts[:-1]) or ts[0] < 0 or ts[-1] >= ac.shape[0]):
            raise ValueError(
                f"GammaTable: timesteps must be strictly increasing in [0, {ac.shape[0] - 1}]"
            )
        if np.any(cnt < 1):
            raise ValueError("GammaTable: every timestep needs at least one sample")
        self._timesteps = ts
        self._count = cnt
        self._sums = [int(s) for s in sums]
        self._sums_sq = [int(s) for s in sums_sq]
        if any(s < 0 for s in self._sums + self._sums_sq):
            raise ValueError("GammaTable: sums must be non-negative")
        self._ac = ac
        self._timesteps.flags.writeable = False
        self._count.flags.writeable = False
        self._ac.flags.writeable = False

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_gamma(
        cls, gamma: Any, schedule: Any, timesteps: Any = None, count: int = 1
    ) -> GammaTable:
        """A table from known Γ values (e.g. the reference code's ``ms_eps[1:]``).

        ``gamma`` has one value per timestep in ``timesteps`` (default: all N, 0-based);
        each value counts as ``count`` samples with no spread (stderr 0).
        """
        ac = _alphas_cumprod(schedule)
        g = _check_gamma_values(gamma)
        ts = np.arange(ac.shape[0]) if timesteps is None else np.asarray(timesteps, np.int64)
        if g.shape != ts.shape:
            raise ValueError(f"gamma: {g.shape[0]} values for {ts.shape[0]} timesteps")
        sums = [count * round(float(v) * _FIXED) for v in g]
        sums_sq = [count * round(float(v) ** 2 * _FIXED) for v in g]
        return cls(ts, np.full(ts.shape, count), sums, sums_sq, ac)

    # -- values --------------------------------------------------------------------------------
    @property
    def timesteps(self) -> np.ndarray:
        return self._timesteps

    @property
    def count(self) -> np.ndarray:
        return self._count

    @property
    def num_train_timesteps(self) -> int:
        return int(self._ac.shape[0])

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self._ac

    @property
    def gamma(self) -> np.ndarray:
        """Γ at each of ``timesteps`` (float64; correctly rounded from the exact sums)."""
        return np.array(
            [s / (int(n) * _FIXED) for s, n in zip(self._sums, self._count, strict=True)],
            dtype=np.float64,
        )

    @property
    def stderr(self) -> np.ndarray:
        """The standard error of each Γ (float64; NaN with a single sample)."""
        out = np.empty(len(self._sums), dtype=np.float64)
        for i, (s, q, n) in enumerate(zip(self._sums, self._sums_sq, self._count, strict=True)):
            n = int(n)
            if n < 2:
                out[i] = math.nan
                continue
            # Var = (n Σv² − (Σv)²)/(n²(n − 1)) per the mean, exactly in fixed point.
            num = max(n * q * _FIXED - s * s, 0)
            out[i] = math.sqrt(Fraction(num, n * n * (n - 1) * _FIXED * _FIXED))
        return out

    def full_gamma(self) -> np.ndarray:
        """Γ at every training timestep 0..N−1 (float64); ValueError if some are missing."""
        n = self.num_train_timesteps
        if self._timesteps.shape[0] != n:
            missing = sorted(set(range(n)) - set(self._timesteps.tolist()))
            raise ValueError(
                f"gamma: the table covers {self._timesteps.shape[0]} of the {n} training "
                f"timesteps (missing {missing[:5]}...); estimate it with timesteps=None"
            )
        return self.gamma

    def check_schedule(self, schedule: Any) -> None:
        """ValueError unless the table was estimated for ``schedule``'s ᾱ."""
        _check_table_schedule("gamma", self._ac, schedule)

    # -- combining -----------------------------------------------------------------------------
    def merge(self, other: GammaTable) -> GammaTable:
        """The table of both sample sets: sums and counts added exactly (timesteps united)."""
        if not isinstance(other, GammaTable):
            raise TypeError(f"merge: expected a GammaTable, got {type(other).__name__}")
        self.check_schedule(other._ac)
        acc: dict[int, list[int]] = {}
        for tab in (self, other):
            for t, n, s, q in zip(
                tab._timesteps.tolist(), tab._count.tolist(), tab._sums, tab._sums_sq, strict=True
            ):
                cur = acc.setdefault(t, [0, 0, 0])
                cur[0] += n
                cur[1] += s
                cur[2] += q
        ts = sorted(acc)
        return GammaTable(
            ts,
            [acc[t][0] for t in ts],
            [acc[t][1] for t in ts],
            [acc[t][2] for t in ts],
            self._ac,
        )

    def __add__(self, other: GammaTable) -> GammaTable:
        return self.merge(other)

    def all_reduce(self, group: Any = None) -> GammaTable:
        """The merge of every rank's table under ``torch.distributed`` (exact).

        Every rank must hold a table for the same schedule and timesteps. The sums travel as
        16-bit limbs in int64 tensors, so the all-reduce cannot overflow or round.
        """
        import torch
        import torch.distributed as dist

        limbs = 8  # 128 bits
        n = len(self._sums)
        rows = []
        for v in self._sums + self._sums_sq:
            rows.append([(v >> (16 * j)) & 0xFFFF for j in range(limbs)])
        payload = torch.tensor(
            [*self._count.tolist(), *[x for r in rows for x in r]], dtype=torch.int64
        )
        check = torch.tensor([n, int(self._timesteps.sum()) if n else 0], dtype=torch.int64)
        ref = check.clone()
        dist.broadcast(ref, 0, group=group)
        if not torch.equal(ref, check):
            raise ValueError("all_reduce: the ranks' tables cover different timesteps")
        dist.all_reduce(payload, op=dist.ReduceOp.SUM, group=group)
        vals = payload.tolist()
        count = vals[:n]
        flat = vals[n:]
        ints = [sum(flat[i * limbs + j] << (16 * j) for j in range(limbs)) for i in range(2 * n)]
        return GammaTable(self._timesteps, count, ints[:n], ints[n:], self._ac)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the table (exact sums, counts and the schedule's ᾱ) as an .npz file."""
        with open(os.fspath(path), "wb") as f:
            np.savez(
                f,
                format=np.array(_FORMAT),
                version=np.array(_VERSION, dtype=np.int64),
                num_train_timesteps=np.array(self.num_train_timesteps, dtype=np.int64),
                alphas_cumprod=self._ac,
                timesteps=self._timesteps,
                count=self._count,
                sums=_to_limbs(self._sums),
                sums_sq=_to_limbs(self._sums_sq),
                gamma=self.gamma,
            )

    @classmethod
    def load(cls, path: str | os.PathLike, schedule: Any = None) -> GammaTable:
        """Read a table written by :meth:`save`.

        Raises ``rdiff.WeightsError`` for a missing, truncated or malformed file, and
        ValueError when ``schedule`` is given and differs from the table's.
        """
        table = _read_table(path, "GammaTable.load", "Γ table", cls._from_arrays)
        if schedule is not None:
            table.check_schedule(schedule)
        return table

    @classmethod
    def _from_arrays(cls, data: dict[str, np.ndarray]) -> GammaTable:
        needed = ("format", "version", "num_train_timesteps", "alphas_cumprod", "timesteps")
        needed += ("count", "sums", "sums_sq")
        missing = [k for k in needed if k not in data]
        if missing:
            raise KeyError(f"missing entries {missing}")
        if str(data["format"]) != _FORMAT:
            raise ValueError(f"format is {str(data['format'])!r}, not {_FORMAT!r}")
        if int(data["version"]) != _VERSION:
            raise ValueError(f"unsupported version {int(data['version'])}")
        ac = data["alphas_cumprod"]
        if ac.dtype != np.float64 or ac.ndim != 1:
            raise ValueError("alphas_cumprod must be a float64 vector")
        if int(data["num_train_timesteps"]) != ac.shape[0]:
            raise ValueError("num_train_timesteps does not match alphas_cumprod")
        if not np.all(np.isfinite(ac)):
            raise ValueError("alphas_cumprod is not finite")
        n = data["timesteps"].shape[0]
        for k, dt, shape in (
            ("timesteps", np.int64, (n,)),
            ("count", np.int64, (n,)),
            ("sums", np.uint64, (n, 2)),
            ("sums_sq", np.uint64, (n, 2)),
        ):
            if data[k].dtype != dt or data[k].shape != shape:
                raise ValueError(f"{k} must be {np.dtype(dt).name} of shape {shape}")
        return cls(
            data["timesteps"],
            data["count"],
            _from_limbs(data["sums"]),
            _from_limbs(data["sums_sq"]),
            ac,
        )

    def __repr__(self) -> str:
        n = len(self._sums)
        if n == 0:
            return f"GammaTable(empty, num_train_timesteps={self.num_train_timesteps})"
        g = self.gamma
        return (
            f"GammaTable({n} timesteps in [{int(self._timesteps[0])}, "
            f"{int(self._timesteps[-1])}], samples per timestep {int(self._count.min())}"
            f"{'' if self._count.min() == self._count.max() else '–' + str(self._count.max())}"
            f", Γ in [{g.min():.4g}, {g.max():.4g}], "
            f"num_train_timesteps={self.num_train_timesteps})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GammaTable):
            return NotImplemented
        return (
            np.array_equal(self._timesteps, other._timesteps)
            and np.array_equal(self._count, other._count)
            and self._sums == other._sums
            and self._sums_sq == other._sums_sq
            and np.array_equal(self._ac, other._ac)
        )

    __hash__ = None  # type: ignore[assignment]


def _check_gamma_values(gamma: Any) -> np.ndarray:
    if _tensor.is_torch(gamma):
        gamma = gamma.detach().cpu().double().numpy()
    try:
        g = np.asarray(gamma, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(
            f"gamma: expected a GammaTable or an array of numbers, got {type(gamma).__name__}"
        ) from None
    bad = np.nonzero(~np.isfinite(g))[0]
    if bad.size:
        raise ValueError(f"gamma: Γ is not finite at index {int(bad[0])} ({g[bad[0]]})")
    neg = np.nonzero(g < 0)[0]
    if neg.size:
        raise ValueError(f"gamma: Γ is negative at index {int(neg[0])} ({g[neg[0]]})")
    return g


def resolve_gamma(gamma: Any, alphas_cumprod: np.ndarray) -> np.ndarray:
    """Γ at all N timesteps (float64) from a GammaTable, a path to one, or an array of N."""
    n = alphas_cumprod.shape[0]
    if isinstance(gamma, (str, os.PathLike)):
        gamma = GammaTable.load(gamma)
    if isinstance(gamma, GammaTable):
        gamma.check_schedule(alphas_cumprod)
        return gamma.full_gamma()
    if gamma is None:
        raise ValueError(
            "gamma: Analytic-DPM needs Γ_t = E‖ε_θ(x_t, t)‖²/d; estimate it with "
            "rdiff.estimate_gamma(model, data, schedule) and pass the table"
        )
    g = _check_gamma_values(gamma)
    if g.shape[0] != n:
        raise ValueError(
            f"gamma: {g.shape[0]} values for a schedule of {n} training timesteps; "
            "pass one Γ per timestep"
        )
    return g


# -- estimation --------------------------------------------------------------------------------


def _noise_seed(seed: int, row: int, t: int) -> int:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(row), int(t)])
    return int(ss.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)


def _draw_noise(like: Any, seed: int, row: int, t: int) -> Any:
    """Standard normal noise shaped like ``like`` for the batch starting at ``row``."""
    s = _noise_seed(seed, row, t)
    if _tensor.is_torch(like):
        g = _tensor.torch_module().Generator(device="cpu").manual_seed(s)
        return _tensor.randn(tuple(like.shape), like, g).to(dtype=like.dtype)
    rng = np.random.default_rng(s)
    return rng.standard_normal(like.shape, dtype=np.float32).astype(like.dtype, copy=False)


def _model_output(out: Any) -> Any:
    if hasattr(out, "sample") and not hasattr(out, "shape"):
        out = out.sample
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="estimating Γ", unit="call")


def estimate_gamma(
    model: Any,
    data: Any,
    schedule: Any,
    *,
    timesteps: Any = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    offset: int = 0,
    prediction_type: str = "epsilon",
) -> GammaTable:
    """Monte-Carlo Γ_t = E‖ε_θ(x_t, t)‖²/d over the rows of ``data``, one ε draw per row and
    timestep (the Analytic-DPM reference's estimator).

    Args:
        model: ``model(x_t, t)`` → the network output (a tensor/array like x_t, or an object
            with ``.sample`` such as a diffusers UNet output, or a tuple whose first entry is
            it); ``t`` is an int64 array/tensor of shape (B,). Called under ``torch.no_grad``.
        data: x_0 samples, a numpy array or a torch tensor of shape (M, ...), in the range the
            model was trained on.
        schedule: an ``rdiff.NoiseSchedule`` (discrete), a scheduler with ``alphas_cumprod``
            (rdiff or diffusers) or the ᾱ array itself.
        timesteps: the 0-based training timesteps to estimate (default: all N).
        batch_size: rows per model call.
        seed: the noise is a deterministic function of (seed, the batch's first row + offset,
            t): a numpy Generator for numpy data, a torch CPU Generator for torch data.
        progress: show a tqdm bar (if tqdm is installed).
        offset: the global index of ``data``'s first row, for sharding (see the module doc).
        prediction_type: what the model predicts ("epsilon", "sample" or "v_prediction");
            other outputs are converted to ε before the reduction.

    Returns a :class:`GammaTable`. The reduction ‖ε‖²/d runs fused in Rust with the GIL
    released; the model output may have extra channels (learned variance), which are ignored.
    """
    ac = _alphas_cumprod(schedule)
    n_train = ac.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size: expected an integer, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")
    if offset < 0:
        raise ValueError(f"offset: must be non-negative, got {offset}")
    if prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(
            f"prediction_type: expected 'epsilon', 'sample' or 'v_prediction', got "
            f"{prediction_type!r}"
        )
    if timesteps is None:
        ts = np.arange(n_train, dtype=np.int64)
    else:
        if _tensor.is_torch(timesteps):
            timesteps = timesteps.detach().cpu().numpy()
        ts = np.unique(np.asarray(timesteps, dtype=np.int64).reshape(-1))
        if ts.size == 0 or ts[0] < 0 or ts[-1] >= n_train:
            raise ValueError(f"timesteps: must be a non-empty set of integers in [0, {n_train})")
    torch_data = _tensor.is_torch(data)
    if not torch_data:
        data = np.asarray(data)
        if data.dtype.kind in "iub":
            data = data.astype(np.float32)
        elif data.dtype.kind != "f":
            raise TypeError(f"data: expected real numbers, got an array of dtype {data.dtype}")
    else:
        _tensor.check_device(data, "data")
        if data.is_complex():
            raise TypeError(f"data: expected real numbers, got dtype {data.dtype}")
    if data.ndim < 1 or data.shape[0] == 0:
        raise ValueError(f"data: expected a non-empty batch of samples, got shape {data.shape}")
    if torch_data and not data.is_floating_point():
        data = data.float()
    m = int(data.shape[0])
    starts = list(range(0, m, batch_size))
    sums = {int(t): [0, 0, 0] for t in ts}
    bar = _progress(len(starts) * len(ts), progress)
    if torch_data:
        torch = _tensor.torch_module()
        ctx = torch.no_grad()
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    try:
        with ctx:
            for start in starts:
                x0 = data[start : start + batch_size]
                b = int(x0.shape[0])
                per_sample = math.prod(tuple(x0.shape[1:])) if x0.ndim > 1 else 1
                for t in ts.tolist():
                    a, s = math.sqrt(ac[t]), math.sqrt(1.0 - ac[t])
                    eps = _draw_noise(x0, seed, offset + start, t)
                    xt = a * x0 + s * eps
                    if torch_data:
                        tt = torch.full((b,), t, dtype=torch.int64, device=x0.device)
                    else:
                        tt = np.full((b,), t, dtype=np.int64)
                    out = _model_output(model(xt, tt))
                    sums_t = sums[t]
                    _accumulate(sums_t, out, xt, b, per_sample, float(ac[t]), prediction_type)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    ts_sorted = sorted(sums)
    return GammaTable(
        ts_sorted,
        [sums[t][0] for t in ts_sorted],
        [sums[t][1] for t in ts_sorted],
        [sums[t][2] for t in ts_sorted],
        ac,
    )


def _accumulate(
    acc: list[int],
    out: Any,
    xt: Any,
    b: int,
    per_sample: int,
    alpha_cumprod: float,
    prediction_type: str,
) -> None:
    if _tensor.is_torch(out):
        if out.device.type != "cpu":
            out = out.detach().cpu()
        if _tensor.is_torch(xt) and xt.device.type != "cpu":
            xt = xt.cpu()
        out = out.detach()
    else:
        out = np.asarray(out)
    _tensor.check_float(out, "model output")
    numel = int(out.numel() if _tensor.is_torch(out) else out.size)
    if int(out.shape[0]) != b or numel % b != 0 or numel // b < per_sample:
        raise ValueError(
            f"model output: shape {tuple(out.shape)} does not hold a batch of {b} samples of "
            f"{per_sample} elements"
        )
    out = _tensor.contiguous(out)
    x = None
    if prediction_type != "epsilon":
        x = _tensor.contiguous(xt)
        _tensor.check_float(x, "x_t")
    # The conversion to ε is Rust's, the one Analytic-DPM's step uses.
    count, _, _, s_fx, q_fx = _gamma_batch_sums(out, x, per_sample, prediction_type, alpha_cumprod)
    acc[0] += int(count)
    acc[1] += int(s_fx)
    acc[2] += int(q_fx)


# -- trajectory ---------------------------------------------------------------------------------


def optimal_trajectory(gamma: Any, schedule: Any, num_steps: int) -> np.ndarray:
    """Analytic-DPM's optimal K-step trajectory by dynamic programming (in Rust).

    Minimises Σ log(1 − (1 − ᾱ_t/ᾱ_s)·Γ_t/β̄_t) over consecutive visited timesteps s < t (the
    trajectory-dependent part of the ELBO with the analytic DDPM-form variance), O(K·N²) time.
    Timesteps from the first one whose Γ exceeds 1 onwards are split off and spaced uniformly,
    as in the reference code.

    Args:
        gamma: a :class:`GammaTable` covering all N timesteps, or N values of Γ.
        schedule: an ``rdiff.NoiseSchedule``, a scheduler with ``alphas_cumprod`` or ᾱ.
        num_steps: K, 2 ≤ K ≤ N.

    Returns int64 timesteps (0-based, descending, like ``scheduler.timesteps``), starting at
    N − 1 and ending at 0.
    """
    ac = _alphas_cumprod(schedule)
    g = resolve_gamma(gamma, ac)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps: expected an integer, got {type(num_steps).__name__}")
    if num_steps < 1:
        raise ValueError(f"num_steps: must be positive, got {num_steps}")
    return _optimal_trajectory(g.tolist(), ac.tolist(), int(num_steps))
