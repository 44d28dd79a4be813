"""DPM-Solver-v3's empirical model statistics (EMS): ``EMSTable`` and ``estimate_ems``.

DPM-Solver-v3 (Zheng, Lu et al., NeurIPS 2023) rewrites the probability-flow ODE of a
pretrained model with three per-element statistics on a grid uniform in λ = log(α/σ),
computed once per model (like Analytic-DPM's Γ)::

    l_λ = E[diag(σ ∂ε/∂x)]                      (Hutchinson: one Rademacher probe per sample)
    f   = (σ ε − l ⊙ x)/α,   f′ = df/dλ along the ODE
    s_λ, b_λ = the per-element least-squares fit f′ ≈ s ⊙ f + b

over x_λ = α x₀ + σ z, x₀ from the training data, as the authors' EMS example computes them::

    table = rdiff.estimate_ems(unet, images, scheduler, steps=200)     # once per model
    table.save("ems.npz")
    sched = rdiff.DPMSolverV3Scheduler(ems=rdiff.EMSTable.load("ems.npz"))

The model derivatives are forward-mode JVPs (``torch.func.jvp``) for torch models and central
finite differences for numpy models such as rdiff's native UNet (``derivative=``; the README
gives the difference's error).

Sharding: l is needed to compute f, so the estimate is two stages. One process runs both
(``stage="both"``). Across workers, give each a contiguous slice of the data starting at a
multiple of ``batch_size`` with its start row as ``offset``; run ``stage="l"`` everywhere,
``merge`` (or ``all_reduce`` under torch.distributed) the tables, then ``stage="f"`` with
``l_table=`` the merged table, and merge again. Every worker draws the noise the one-shot run
would draw for its rows, and the sums are exact fixed-point integers, so the merged table
equals the one-shot table bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from typing import Any

import numpy as np

from . import _tensor
from .analytic import (
    _alphas_cumprod,
    _check_table_schedule,
    _model_output,
    _noise_seed,
    _read_table,
)

__all__ = ["EMSTable", "estimate_ems"]

_FORMAT = "rdiff.EMSTable"
_VERSION = 1
# Per-sample values are summed as integers in units of 2⁻²⁴ (exact, order-free merges).
_SCALE = float(1 << 24)
_LIMIT = float(1 << 62)
# The f-stage sums, in this order.
_F_SUMS = ("f", "fd", "ff", "ffd")


class _Vp:
    """The discrete VP schedule of ᾱ in the DPM-Solver reference's continuous time (as
    ``rdiff.NoiseSchedule.discrete``): log α piecewise linear on t_i = (i + 1)/N, extended
    linearly past both ends."""

    def __init__(self, ac: np.ndarray) -> None:
        n = ac.shape[0]
        self.n = n
        self.t = np.arange(1, n + 1, dtype=np.float64) / n
        self.log_a = 0.5 * np.log(np.maximum(ac, 5.960464477539063e-8))

    @staticmethod
    def _interp(x: np.ndarray, xp: np.ndarray, yp: np.ndarray) -> np.ndarray:
        k = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, xp.shape[0] - 2)
        return yp[k] + (x - xp[k]) * (yp[k + 1] - yp[k]) / (xp[k + 1] - xp[k])

    def log_alpha(self, t: Any) -> np.ndarray:
        return self._interp(np.asarray(t, dtype=np.float64), self.t, self.log_a)

    def alpha_sigma(self, t: Any) -> tuple[np.ndarray, np.ndarray]:
        la = self.log_alpha(t)
        return np.exp(la), np.sqrt(-np.expm1(2.0 * la))

    def lambda_t(self, t: Any) -> np.ndarray:
        la = self.log_alpha(t)
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    def inverse_lambda(self, lam: Any) -> np.ndarray:
        la = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, dtype=np.float64))
        return self._interp(la, self.log_a[::-1], self.t[::-1])

    def dlog_alpha_dt(self, t: float) -> float:
        """The slope of log α's segment at t (the derivative the reference's autograd sees)."""
        k = int(np.clip(np.searchsorted(self.t, t, side="right") - 1, 0, self.n - 2))
        return float((self.log_a[k + 1] - self.log_a[k]) * self.n)


def _grid(vp: _Vp, t_start: float, t_end: float, steps: int) -> np.ndarray:
    """The EMS λ grid: λ(λ⁻¹(linspace(λ(t_start), λ(t_end), steps + 1))), as the authors'."""
    lo, hi = float(vp.lambda_t(t_start)), float(vp.lambda_t(t_end))
    return vp.lambda_t(vp.inverse_lambda(np.linspace(lo, hi, steps + 1)))


class EMSTable:
    """DPM-Solver-v3's statistics l, s, b on a λ grid, as mergeable sums.

    Attributes (read-only): ``lambdas`` (float64 (M + 1,), increasing: index 0 is the noisy end
    t_start), ``t_start``, ``t_end`` (the sampling range, in the DPM-Solver reference's time
    t ∈ [1/N, 1]), ``shape`` (one sample's shape), ``alphas_cumprod`` (the schedule it was
    estimated for), ``count_l`` / ``count_f`` (samples per grid point in each stage), and the
    statistics ``l``, ``s``, ``b`` (float64 (M + 1, *shape)).
    """

    def __init__(
        self,
        alphas_cumprod: Any,
        t_start: float,
        t_end: float,
        lambdas: Any,
        shape: tuple[int, ...],
        *,
        sums_l: Any = None,
        count_l: int = 0,
        sums_f: dict[str, Any] | None = None,
        count_f: int = 0,
        l_used: Any = None,
        statistics: tuple[Any, Any, Any] | None = None,
    ) -> None:
        self._ac = _alphas_cumprod(alphas_cumprod, "EMSTable").copy()
        self._t_start, self._t_end = float(t_start), float(t_end)
        self._lambdas = np.array(lambdas, dtype=np.float64).reshape(-1)
        self._shape = tuple(int(d) for d in shape)
        rows, ps = self._lambdas.shape[0], math.prod(self._shape)
        if rows < 2 or ps < 1:
            raise ValueError("EMSTable: needs a grid of at least 2 points and a sample shape")
        if not np.all(np.isfinite(self._lambdas)) or np.any(np.diff(self._lambdas) <= 0):
            raise ValueError("EMSTable: the λ grid must be finite and strictly increasing")
        want = _grid(_Vp(self._ac), self._t_start, self._t_end, rows - 1)
        if np.max(np.abs(want - self._lambdas)) > 1e-9 * (1 + np.max(np.abs(want))):
            raise ValueError(
                f"EMSTable: the λ grid is not the schedule's from t={self._t_start} to "
                f"t={self._t_end} in {rows - 1} intervals"
            )

        def ints(v: Any, what: str) -> np.ndarray:
            a = np.array(v, dtype=np.int64)
            if a.shape != (rows, ps):
                raise ValueError(f"EMSTable: {what} must have shape {(rows, ps)}, got {a.shape}")
            return a

        self._sums_l = None if sums_l is None else ints(sums_l, "sums_l")
        self._count_l = int(count_l)
        self._sums_f = None
        if sums_f is not None:
            self._sums_f = {k: ints(sums_f[k], f"sums_f[{k}]") for k in _F_SUMS}
        self._count_f = int(count_f)
        self._l_used = None
        if l_used is not None:
            self._l_used = np.array(l_used, dtype=np.float64).reshape(rows, ps)
        self._stats = None
        if statistics is not None:
            st = [np.array(v, dtype=np.float64).reshape(rows, ps) for v in statistics]
            self._stats = tuple(st)
        if self._stats is None and self._sums_l is None:
            raise ValueError("EMSTable: needs either statistics or the stage sums")
        if (self._sums_l is not None) != (self._count_l > 0):
            raise ValueError("EMSTable: sums_l and count_l go together")
        if (self._sums_f is not None) != (self._count_f > 0) or (
            (self._sums_f is not None) != (self._l_used is not None)
        ):
            raise ValueError("EMSTable: sums_f, count_f and l_used go together")
        self._lambdas.flags.writeable = False
        self._ac.flags.writeable = False

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_statistics(
        cls,
        l: Any,  # noqa: E741 - the paper's name
        s: Any,
        b: Any,
        schedule: Any,
        *,
        t_start: float = 1.0,
        t_end: float | None = None,
    ) -> EMSTable:
        """A table from known statistics (e.g. the authors' ``l.npz`` / ``sb.npz``).

        ``l``, ``s``, ``b``: arrays of shape (M + 1, *sample_shape) on the grid uniform in λ
        from ``t_start`` (default 1) to ``t_end`` (default 1/N).
        """
        ac = _alphas_cumprod(schedule, "EMSTable.from_statistics (EMS)")
        arrs = [_as_f64(v, n) for v, n in ((l, "l"), (s, "s"), (b, "b"))]
        if not (arrs[0].shape == arrs[1].shape == arrs[2].shape) or arrs[0].ndim < 2:
            raise ValueError(
                "l, s, b: expected three arrays of one shape (M + 1, *sample_shape), got "
                f"{[a.shape for a in arrs]}"
            )
        for a, n in zip(arrs, "lsb", strict=True):
            bad = np.argwhere(~np.isfinite(a))
            if bad.size:
                raise ValueError(f"{n}: not finite at grid point {int(bad[0][0])}")
        t_end = 1.0 / ac.shape[0] if t_end is None else float(t_end)
        rows = arrs[0].shape[0]
        lam = _grid(_Vp(ac), t_start, t_end, rows - 1)
        return cls(ac, t_start, t_end, lam, arrs[0].shape[1:], statistics=tuple(arrs))

    # -- values --------------------------------------------------------------------------------
    @property
    def lambdas(self) -> np.ndarray:
        return self._lambdas

    @property
    def t_start(self) -> float:
        return self._t_start

    @property
    def t_end(self) -> float:
        return self._t_end

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def steps(self) -> int:
        """M: the grid's number of intervals."""
        return int(self._lambdas.shape[0] - 1)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self._ac

    @property
    def num_train_timesteps(self) -> int:
        return int(self._ac.shape[0])

    @property
    def count_l(self) -> int:
        return self._count_l

    @property
    def count_f(self) -> int:
        return self._count_f

    @property
    def complete(self) -> bool:
        """Whether l, s and b are all available (both stages, or given statistics)."""
        return self._stats is not None or self._sums_f is not None

    def _rows(self, v: np.ndarray) -> np.ndarray:
        return v.reshape((self.steps + 1, *self._shape))

    @property
    def l(self) -> np.ndarray:  # noqa: E743 - the paper's name
        if self._stats is not None:
            return self._rows(self._stats[0])
        return self._rows(self._sums_l / (_SCALE * self._count_l))

    def _sb(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stats is not None:
            return self._stats[1], self._stats[2]
        if self._sums_f is None:
            raise ValueError(
                "EMSTable: only the l stage has been estimated; run estimate_ems(..., "
                "stage='f', l_table=this table)"
            )
        n = self._count_f * _SCALE
        ef, efd = self._sums_f["f"] / n, self._sums_f["fd"] / n
        eff, effd = self._sums_f["ff"] / n, self._sums_f["ffd"] / n
        var = eff - ef * ef
        cov = effd - ef * efd
        # Where f hardly varies over the data (Gaussian data: f is deterministic; any data at
        # the noisy end) s is not determined: any s fits, and the variance is below what the
        # fixed-point moments resolve (each sum is exact, E f² − (E f)² cancels to ~2⁻²⁴).
        # s = 0 there makes b = E f′; the authors' code has no guard and divides 0 by 0.
        tiny = var <= 1e-9 * eff + 32.0 / _SCALE * (1.0 + 2.0 * np.abs(ef))
        s = np.where(tiny, 0.0, cov / np.where(tiny, 1.0, var))
        return s, efd - s * ef

    @property
    def s(self) -> np.ndarray:
        return self._rows(self._sb()[0])

    @property
    def b(self) -> np.ndarray:
        return self._rows(self._sb()[1])

    def l_derivative(self) -> np.ndarray:
        """dl/dλ on the grid: central differences (one-sided at the ends), then a moving
        average over ±5 grid points, as the authors' ``compute_l_d``."""
        return self._rows(_l_derivative(self.l.reshape(self.steps + 1, -1), self._lambdas))

    def check_schedule(self, schedule: Any) -> None:
        """ValueError unless the table was estimated for ``schedule``'s ᾱ."""
        _check_table_schedule("ems", self._ac, schedule)

    # -- combining -----------------------------------------------------------------------------
    def _same_grid(self, other: EMSTable) -> None:
        if not isinstance(other, EMSTable):
            raise TypeError(f"merge: expected an EMSTable, got {type(other).__name__}")
        self.check_schedule(other._ac)
        if (
            other._shape != self._shape
            or not np.array_equal(other._lambdas, self._lambdas)
            or (other._t_start, other._t_end) != (self._t_start, self._t_end)
        ):
            raise ValueError("merge: the tables have different grids or sample shapes")
        if self._stats is not None or other._stats is not None:
            raise ValueError("merge: a table made from given statistics has no sums to merge")

    def merge(self, other: EMSTable) -> EMSTable:
        """The table of both sample sets (sums and counts added exactly).

        Tables of the l stage add their l sums. Tables of the f stage (which carry the merged
        l stage they were estimated with) must share it, and add their f sums.
        """
        self._same_grid(other)
        mine, theirs = self._sums_f is not None, other._sums_f is not None
        if mine != theirs:
            raise ValueError(
                "merge: one table has the f stage and the other not (merge the l stages, "
                "estimate stage 'f' with the merged table, then merge those)"
            )
        kw: dict[str, Any] = {}
        if not mine:
            kw["sums_l"] = _add(self._sums_l, other._sums_l)
            kw["count_l"] = self._count_l + other._count_l
        else:
            if not (
                np.array_equal(self._l_used, other._l_used)
                and np.array_equal(self._sums_l, other._sums_l)
            ):
                raise ValueError("merge: the f stages used different l (merge the l stages first)")
            kw["sums_l"], kw["count_l"] = self._sums_l, self._count_l
            kw["sums_f"] = {k: _add(self._sums_f[k], other._sums_f[k]) for k in _F_SUMS}
            kw["count_f"] = self._count_f + other._count_f
            kw["l_used"] = self._l_used
        return EMSTable(self._ac, self._t_start, self._t_end, self._lambdas, self._shape, **kw)

    def __add__(self, other: EMSTable) -> EMSTable:
        return self.merge(other)

    def all_reduce(self, group: Any = None) -> EMSTable:
        """The merge of every rank's table under ``torch.distributed`` (exact: int64 sums).

        Every rank must hold the same stage of one grid: l-stage tables add their l sums,
        f-stage tables (estimated with the same merged l) their f sums.
        """
        import torch
        import torch.distributed as dist

        if self._sums_l is None:
            raise ValueError("all_reduce: a table made from given statistics has no sums")
        f_stage = self._sums_f is not None
        stats = [self._sums_f[k] for k in _F_SUMS] if f_stage else [self._sums_l]
        digest = hashlib.sha256(self._lambdas.tobytes())
        if f_stage:
            digest.update(self._sums_l.tobytes())
        check = torch.tensor(
            [len(stats), *np.frombuffer(digest.digest()[:16], dtype=np.int64).tolist()],
            dtype=torch.int64,
        )
        ref = check.clone()
        dist.broadcast(ref, 0, group=group)
        if not torch.equal(ref, check):
            raise ValueError("all_reduce: the ranks' tables differ in grid, stage or l")
        payload = torch.from_numpy(np.stack(stats).copy())
        count = torch.tensor([self._count_f if f_stage else self._count_l], dtype=torch.int64)
        dist.all_reduce(payload, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
        out = payload.numpy()
        kw: dict[str, Any]
        if f_stage:
            kw = {
                "sums_l": self._sums_l,
                "count_l": self._count_l,
                "sums_f": {k: out[i] for i, k in enumerate(_F_SUMS)},
                "count_f": int(count[0]),
                "l_used": self._l_used,
            }
        else:
            kw = {"sums_l": out[0], "count_l": int(count[0])}
        return EMSTable(self._ac, self._t_start, self._t_end, self._lambdas, self._shape, **kw)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the table (its sums or statistics, the grid and the schedule) as .npz."""
        rows = self.steps + 1
        data: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT),
            "version": np.array(_VERSION, dtype=np.int64),
            "alphas_cumprod": self._ac,
            "t_range": np.array([self._t_start, self._t_end], dtype=np.float64),
            "lambdas": self._lambdas,
            "shape": np.array(self._shape, dtype=np.int64),
        }
        if self._stats is not None:
            for k, v in zip("lsb", self._stats, strict=True):
                data[f"stat_{k}"] = v.reshape(rows, -1)
        if self._sums_l is not None:
            data["sums_l"] = self._sums_l
            data["count_l"] = np.array(self._count_l, dtype=np.int64)
        if self._sums_f is not None:
            for k in _F_SUMS:
                data[f"sums_f_{k}"] = self._sums_f[k]
            data["count_f"] = np.array(self._count_f, dtype=np.int64)
            data["l_used"] = self._l_used
        with open(os.fspath(path), "wb") as f:
            np.savez(f, **data)

    @classmethod
    def load(cls, path: str | os.PathLike, schedule: Any = None) -> EMSTable:
        """Read a table written by :meth:`save`.

        Raises ``rdiff.WeightsError`` for a missing, truncated or malformed file (NaN
        statistics, a grid that is not the schedule's), and ValueError when ``schedule`` is
        given and differs from the table's.
        """
        table = _read_table(path, "EMSTable.load", "EMS table", cls._from_arrays)
        if schedule is not None:
            table.check_schedule(schedule)
        return table

    @classmethod
    def _from_arrays(cls, data: dict[str, np.ndarray]) -> EMSTable:
        for k in ("format", "version", "alphas_cumprod", "t_range", "lambdas", "shape"):
            if k not in data:
                raise KeyError(f"missing entry {k!r}")
        if str(data["format"]) != _FORMAT:
            raise ValueError(f"format is {str(data['format'])!r}, not {_FORMAT!r}")
        if int(data["version"]) != _VERSION:
            raise ValueError(f"unsupported version {int(data['version'])}")
        ac, tr = data["alphas_cumprod"], data["t_range"]
        if ac.dtype != np.float64 or ac.ndim != 1 or tr.shape != (2,):
            raise ValueError("alphas_cumprod / t_range have the wrong dtype or shape")
        kw: dict[str, Any] = {}
        if "stat_l" in data:
            st = tuple(data[f"stat_{k}"] for k in "lsb")
            for k, v in zip("lsb", st, strict=True):
                if v.dtype != np.float64:
                    raise ValueError(f"stat_{k} must be float64")
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"{k} is not finite")
            kw["statistics"] = st
        if "sums_l" in data:
            kw["sums_l"], kw["count_l"] = data["sums_l"], int(data["count_l"])
        if "sums_f_f" in data:
            kw["sums_f"] = {k: data[f"sums_f_{k}"] for k in _F_SUMS}
            kw["count_f"], kw["l_used"] = int(data["count_f"]), data["l_used"]
        for k in ("sums_l", *[f"sums_f_{k}" for k in _F_SUMS]):
            if k in data and data[k].dtype != np.int64:
                raise ValueError(f"{k} must be int64")
        table = cls(
            ac, float(tr[0]), float(tr[1]), data["lambdas"], tuple(data["shape"].tolist()), **kw
        )
        if table.complete:
            for k, v in (("l", table.l), ("s", table.s), ("b", table.b)):
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"{k} is not finite")
        return table

    def __repr__(self) -> str:
        stage = "l, s, b" if self.complete else "l only"
        n = f", samples {self._count_l}/{self._count_f}" if self._stats is None else ""
        return (
            f"EMSTable({stage} on {self.steps + 1} λ in [{self._lambdas[0]:.4g}, "
            f"{self._lambdas[-1]:.4g}], sample shape {self._shape}{n}, "
            f"num_train_timesteps={self.num_train_timesteps})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EMSTable):
            return NotImplemented

        def eq(a: Any, b: Any) -> bool:
            if a is None or b is None:
                return a is b
            if isinstance(a, dict):
                return all(np.array_equal(a[k], b[k]) for k in _F_SUMS)
            if isinstance(a, tuple):
                return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
            return np.array_equal(a, b)

        return (
            np.array_equal(self._ac, other._ac)
            and np.array_equal(self._lambdas, other._lambdas)
            and self._shape == other._shape
            and (self._t_start, self._t_end) == (other._t_start, other._t_end)
            and (self._count_l, self._count_f) == (other._count_l, other._count_f)
            and eq(self._sums_l, other._sums_l)
            and eq(self._sums_f, other._sums_f)
            and eq(self._l_used, other._l_used)
            and eq(self._stats, other._stats)
        )

    __hash__ = None  # type: ignore[assignment]


def _as_f64(v: Any, what: str) -> np.ndarray:
    if _tensor.is_torch(v):
        v = v.detach().cpu().double().numpy()
    try:
        return np.array(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected an array of numbers, got {type(v).__name__}") from None


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.max(np.abs(a.astype(np.float64) + b.astype(np.float64)), initial=0.0) >= _LIMIT:
        raise OverflowError("EMSTable: a sum leaves the fixed-point range (statistics too large)")
    return a + b


def _l_derivative(l: np.ndarray, lambdas: np.ndarray, window: int = 5) -> np.ndarray:  # noqa: E741
    m = l.shape[0] - 1
    gap = (lambdas[-1] - lambdas[0]) / m
    d = np.empty_like(l)
    d[0] = (l[1] - l[0]) / gap
    d[m] = (l[m] - l[m - 1]) / gap
    if m > 1:
        d[1:m] = (l[2:] - l[:-2]) / (2 * gap)
    out = np.empty_like(d)
    for j in range(m + 1):
        out[j] = d[max(0, j - window) : min(m, j + window) + 1].mean(axis=0)
    return out


# -- estimation --------------------------------------------------------------------------------


_MAX_STEPS = 1 << 20  # (the step limit of every other entry point)
_MAX_TABLE_VALUES = 1 << 31  # per sum array: 16 GiB of int64


def _quantise(v: np.ndarray) -> np.ndarray:
    q = np.rint(v * _SCALE)
    if not np.all(np.isfinite(q)) or np.max(np.abs(q), initial=0.0) >= _LIMIT:
        raise ValueError(
            "estimate_ems: the model gives non-finite or huge values (check its output at the "
            "noisy end of the grid)"
        )
    return q.astype(np.int64)


class _Model:
    """ε(x, t), ∂ε/∂x·v and the total dε/dλ along the ODE, for torch or numpy models."""

    def __init__(
        self, model: Any, prediction_type: str, torch_data: bool, derivative: str, h: float
    ) -> None:
        self.model, self.pt, self.torch = model, prediction_type, torch_data
        self.derivative, self.h = derivative, h

    def _times(self, like: Any, t_in: float) -> Any:
        """t_in for every sample: float64 for float64 data, else float32 (what networks take)."""
        b = int(like.shape[0])
        wide = _tensor.dtype_name(like) == "float64"
        if self.torch:
            torch = _tensor.torch_module()
            dt = torch.float64 if wide else torch.float32
            return torch.full((b,), t_in, dtype=dt, device=like.device)
        return np.full((b,), t_in, dtype=np.float64 if wide else np.float32)

    def _raw(self, x: Any, t: Any) -> Any:
        out = _model_output(self.model(x, t))
        if tuple(getattr(out, "shape", ())) != tuple(x.shape):
            raise ValueError(
                f"model: returned shape {tuple(getattr(out, 'shape', ()))} for an input of shape "
                f"{tuple(x.shape)}; expected the input's shape"
            )
        return out

    def _to_eps(self, out: Any, x: Any, a: float, s: float) -> Any:
        if self.pt == "epsilon":
            return out
        if self.pt == "sample":
            return (x - a * out) / s
        return a * out + s * x  # v_prediction

    def eps(self, x: Any, pt: dict) -> Any:
        return self._to_eps(self._raw(x, self._times(x, pt["t_in"])), x, pt["alpha"], pt["sigma"])

    def eps_jvp_x(self, x: Any, v: Any, pt: dict) -> Any:
        """∂ε/∂x · v at fixed t."""
        a, s = pt["alpha"], pt["sigma"]
        if self.derivative == "jvp":
            torch = _tensor.torch_module()
            tt = self._times(x, pt["t_in"])
            _, dout = torch.func.jvp(lambda xx: self._raw(xx, tt), (x,), (v,))
            return self._to_eps(dout, v, a, s)  # the conversion is linear in (out, x)
        h = self.h
        return (self.eps(x + h * v, pt) - self.eps(x - h * v, pt)) / (2 * h)

    def eps_total(self, x: Any, pt: dict, stencil: list | None) -> tuple[Any, Any]:
        """(ε, dε/dλ along the ODE dx/dλ = σ²x − σε)."""
        a, s = pt["alpha"], pt["sigma"]
        e = self.eps(x, pt)
        tx = s * s * x - s * e
        if self.derivative == "jvp":
            torch = _tensor.torch_module()
            tt = self._times(x, pt["t_in"])
            dt = torch.full_like(tt, pt["dt_in_dlambda"])
            out, dout = torch.func.jvp(self._raw, (x, tt), (tx.detach(), dt))
            # VP: dα/dλ = α σ², dσ/dλ = −σ α²
            da, ds = a * s * s, -s * a * a
            if self.pt == "epsilon":
                de = dout
            elif self.pt == "sample":
                de = (tx - da * out - a * dout) / s - e * (ds / s)
            else:
                de = da * out + a * dout + ds * x + s * tx
            return e, de
        # along the line (x + k·h·dx/dλ, λ + k·h): Σ w_k ε_k / h, second order
        d = sum(w * (e if k == 0 else self.eps(x + k * self.h * tx, p)) for k, w, p in stencil)
        return e, d / self.h


def _stencil(lmb: float, h: float, lo: float, hi: float, point: Any) -> list:
    """(k, weight, point at λ + k·h) of a second-order difference of step h at λ: central,
    or one-sided where λ ∓ h leaves [lo, hi] (the model's time range)."""
    if lmb - h >= lo and lmb + h <= hi:
        ks, ws = (-1, 1), (-0.5, 0.5)
    elif lmb - h < lo:
        ks, ws = (0, 1, 2), (-1.5, 2.0, -0.5)
    else:
        ks, ws = (0, -1, -2), (1.5, -2.0, 0.5)
    return [(k, w, point(lmb + k * h)) for k, w in zip(ks, ws, strict=True)]


def _rademacher(like: Any, seed: int) -> Any:
    if _tensor.is_torch(like):
        torch = _tensor.torch_module()
        g = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randint(0, 2, tuple(like.shape), generator=g).to(like.dtype) * 2 - 1
        return v.to(device=like.device)
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, like.shape) * 2 - 1).astype(like.dtype)


def _normal(like: Any, seed: int) -> Any:
    if _tensor.is_torch(like):
        g = _tensor.torch_module().Generator(device="cpu").manual_seed(seed)
        return _tensor.randn(tuple(like.shape), like, g).to(dtype=like.dtype)
    rng = np.random.default_rng(seed)
    return rng.standard_normal(like.shape, dtype=np.float32).astype(like.dtype, copy=False)


def _np(x: Any) -> np.ndarray:
    if _tensor.is_torch(x):
        return x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def estimate_ems(
    model: Any,
    data: Any,
    schedule: Any,
    *,
    steps: int = 200,
    t_start: float = 1.0,
    t_end: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    offset: int = 0,
    stage: str = "both",
    l_table: EMSTable | None = None,
    derivative: str = "auto",
    fd_step: float | None = None,
    prediction_type: str = "epsilon",
    progress: bool = True,
) -> EMSTable:
    """Estimate DPM-Solver-v3's EMS of ``model`` over the rows of ``data``.

    Args:
        model: ``model(x_t, t)`` → the network output (a tensor/array like x_t, an object with
            ``.sample``, or a tuple whose first entry is it); ``t`` is a float32 array/tensor
            of shape (B,) holding the fractional training timestep N·t − 1 of the reference's
            time t ∈ [1/N, 1] (0 … N − 1).
        data: x₀ samples, a numpy array or torch tensor (M, *sample_shape), in the model's
            range.
        schedule: an ``rdiff.NoiseSchedule`` (discrete), a scheduler with ``alphas_cumprod``
            or the ᾱ array.
        steps: M, the grid's intervals (the authors use 120–1200).
        t_start, t_end: the grid's ends in the reference's time (default 1 and 1/N: the
            whole range, what the scheduler samples over).
        batch_size, seed, offset: rows per model call; the noise (z and the Rademacher
            probes) is a deterministic function of (seed, the batch's first row + offset,
            grid point, stage), so shards reproduce the one-shot table.
        stage: "both", "l" (the l sums only) or "f" (the f sums, given ``l_table``).
        derivative: "jvp" (``torch.func.jvp``; torch models), "fd" (central differences of
            step ``fd_step``: 1e-2 for float32/16 data, 1e-4 for float64) or "auto" (jvp for
            torch data, fd otherwise).
        prediction_type: "epsilon", "sample" or "v_prediction" (converted to ε).

    Returns an :class:`EMSTable`. Cost per grid point and sample: l: one JVP (or two model
    calls); f: one model call and one JVP (or three calls).
    """
    ac = _alphas_cumprod(schedule, "estimate_ems (EMS)")
    n_train = ac.shape[0]
    vp = _Vp(ac)
    if stage not in ("both", "l", "f"):
        raise ValueError(f"stage: expected 'both', 'l' or 'f', got {stage!r}")
    if prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"prediction_type: unknown {prediction_type!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps: expected an integer >= 2, got {steps!r}")
    if steps > _MAX_STEPS:
        raise ValueError(f"steps: {steps} is more than rdiff supports ({_MAX_STEPS})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size: expected an integer, got {type(batch_size).__name__}")
    if batch_size < 1 or offset < 0:
        raise ValueError("batch_size must be positive and offset non-negative")
    t_end = 1.0 / n_train if t_end is None else float(t_end)
    if not (1.0 / n_train <= t_end < t_start <= 1.0):
        raise ValueError(
            f"t_start, t_end: need 1/N <= t_end < t_start <= 1, got {t_start}, {t_end}"
        )
    torch_data = _tensor.is_torch(data)
    if not torch_data:
        data = np.asarray(data)
        if data.dtype.kind != "f":
            data = data.astype(np.float32)
    else:
        _tensor.check_device(data, "data")
        if not data.is_floating_point():
            data = data.float()
    if data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(f"data: expected a non-empty batch of samples, got shape {data.shape}")
    if derivative == "auto":
        derivative = "jvp" if torch_data else "fd"
    if derivative not in ("jvp", "fd"):
        raise ValueError(f"derivative: expected 'auto', 'jvp' or 'fd', got {derivative!r}")
    if derivative == "jvp" and not torch_data:
        raise ValueError("derivative='jvp' needs torch data and a torch model")
    if fd_step is None:
        wide = _tensor.dtype_name(data) == "float64"
        fd_step = 1e-4 if wide else 1e-2
    if isinstance(fd_step, bool) or not isinstance(fd_step, (int, float, np.integer, np.floating)):
        raise TypeError(f"fd_step: expected a number, got {type(fd_step).__name__} {fd_step!r}")
    if not (math.isfinite(fd_step) and fd_step > 0):
        raise ValueError(f"fd_step: must be a finite step > 0, got {fd_step}")
    shape = tuple(int(d) for d in data.shape[1:])
    ps = math.prod(shape)
    # the table's sums: five int64 arrays of (steps + 1) rows, one value per sample element
    if (steps + 1) * ps > _MAX_TABLE_VALUES:
        raise ValueError(
            f"steps: {steps} intervals for samples of {ps} values make a table of "
            f"{5 * 8 * (steps + 1) * ps / 2**30:.0f} GiB; use fewer steps"
        )
    lam = _grid(vp, t_start, t_end, steps)
    rows = steps + 1
    # The grid's points and, for the finite difference along the ODE, λ ± h.

    def point(lmb: float) -> dict:
        t = float(vp.inverse_lambda(lmb))
        a, sig = (float(v) for v in vp.alpha_sigma(t))
        # dλ/dt = (d log α/dt)/σ², d log α/dt the slope of log α's segment at t
        return {
            "t_in": n_train * t - 1.0,
            "alpha": a,
            "sigma": sig,
            "lambda": lmb,
            "dt_in_dlambda": n_train * sig * sig / vp.dlog_alpha_dt(t),
        }

    pts = [point(v) for v in lam]
    mdl = _Model(model, prediction_type, torch_data, derivative, float(fd_step))
    m_rows = int(data.shape[0])
    starts = list(range(0, m_rows, batch_size))
    do_l = stage in ("both", "l")
    do_f = stage in ("both", "f")
    if stage == "f":
        if not isinstance(l_table, EMSTable) or l_table._sums_l is None:
            raise ValueError("l_table: stage 'f' needs the merged table of stage 'l'")
        if l_table.shape != shape or not np.array_equal(l_table.lambdas, lam):
            raise ValueError("l_table: estimated on another grid or sample shape")
        l_table.check_schedule(ac)
    elif l_table is not None:
        raise ValueError("l_table: only for stage 'f'")
    total = len(starts) * rows * (int(do_l) + int(do_f))
    bar = _progress(total, progress)
    ctx = (
        _tensor.torch_module().no_grad()
        if (torch_data and derivative == "fd")
        else (contextlib.nullcontext())
    )
    sums_l = np.zeros((rows, ps), dtype=np.int64) if do_l else None
    try:
        with ctx:
            if do_l:
                for start in starts:
                    x0 = data[start : start + batch_size]
                    for j, pt in enumerate(pts):
                        z = _normal(x0, _noise_seed(seed, offset + start, 2 * j))
                        v = _rademacher(x0, _noise_seed(seed + 1, offset + start, 2 * j))
                        x = pt["alpha"] * x0 + pt["sigma"] * z
                        jv = mdl.eps_jvp_x(x, v, pt)
                        per = pt["sigma"] * _np(v).reshape(-1, ps) * _np(jv).reshape(-1, ps)
                        sums_l[j] = _add(sums_l[j], _quantise(per).sum(axis=0))
                        if bar is not None:
                            bar.update(1)
            count_l = m_rows if do_l else 0
            if stage == "f":
                sums_l, count_l = l_table._sums_l, l_table._count_l
            if not do_f:
                return EMSTable(ac, t_start, t_end, lam, shape, sums_l=sums_l, count_l=count_l)
            l_now = sums_l / (_SCALE * count_l)
            l_d = _l_derivative(l_now, lam)
            sums_f = {k: np.zeros((rows, ps), dtype=np.int64) for k in _F_SUMS}
            h = float(fd_step)
            for start in starts:
                x0 = data[start : start + batch_size]
                for j, pt in enumerate(pts):
                    z = _normal(x0, _noise_seed(seed, offset + start, 2 * j + 1))
                    x = pt["alpha"] * x0 + pt["sigma"] * z
                    stencil = None
                    if derivative == "fd":
                        stencil = _stencil(pt["lambda"], h, lam[0], lam[-1], point)
                    e, de = mdl.eps_total(x, pt, stencil)
                    xn = _np(x).reshape(-1, ps)
                    en = _np(e).reshape(-1, ps)
                    den = _np(de).reshape(-1, ps)
                    a, s = pt["alpha"], pt["sigma"]
                    f = (s * en - l_now[j] * xn) / a
                    fd = math.exp(-pt["lambda"]) * ((l_now[j] - 1.0) * en + den) - l_d[j] * xn / a
                    for k, val in (("f", f), ("fd", fd), ("ff", f * f), ("ffd", f * fd)):
                        sums_f[k][j] = _add(sums_f[k][j], _quantise(val).sum(axis=0))
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return EMSTable(
        ac,
        t_start,
        t_end,
        lam,
        shape,
        sums_l=sums_l,
        count_l=count_l,
        sums_f=sums_f,
        count_f=m_rows,
        l_used=l_now,
    )


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="estimating EMS", unit="batch·λ")
