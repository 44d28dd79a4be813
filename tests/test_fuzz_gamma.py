"""Fuzzing ``GammaTable.load`` with seeded mutations of a valid table file.

Byte-level damage (truncation, bit flips, inserted/deleted/overwritten bytes, npy headers
claiming huge shapes) and entry-level changes (NaN/negative/out-of-range values, wrong dtypes,
shapes and lengths, missing and extra entries, another schedule) must end in
``rdiff.WeightsError``; a table that loads must be the original one (byte damage) or a
consistent one (entry changes): finite non-negative Γ, one per timestep, for its own schedule.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

import rdiff
from rdiff import GammaTable, WeightsError

EXECS = int(os.environ.get("RDIFF_FUZZ_EXECS_GAMMA", "2000"))


def _valid_table() -> tuple[GammaTable, np.ndarray]:
    sched = rdiff.NoiseSchedule.discrete(num_train_timesteps=64)
    ts = np.arange(0, 64, 7)
    g = np.linspace(0.99, 0.2, ts.shape[0])
    return GammaTable.from_gamma(g, sched, timesteps=ts, count=5), np.asarray(sched.alphas_cumprod)


def _arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _save(path: str, arrays: dict, compressed: bool) -> None:
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def _damage_bytes(b: bytearray, rng: np.random.Generator) -> str:
    n = max(len(b), 1)
    kind = int(rng.integers(6))
    if kind == 0:
        at = int(rng.integers(n))
        del b[at:]
        return f"truncated to {at}"
    if kind == 1:
        k = int(rng.integers(1, 9))
        for _ in range(k):
            i = int(rng.integers(n))
            if i < len(b):
                b[i] ^= 1 << int(rng.integers(8))
        return f"{k} bits flipped"
    if kind == 2:
        at = int(rng.integers(n))
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        return f"bytes inserted at {at}"
    if kind == 3:
        at = int(rng.integers(n))
        del b[at : at + int(rng.integers(1, 65))]
        return f"bytes deleted at {at}"
    if kind == 4:
        # An npy header (stored uncompressed) claiming a huge shape.
        i = b.find(b"'shape': (")
        if i < 0:
            return "no npy header found"
        j = i + len(b"'shape': (")
        huge = [b"10000000000000", b"4611686018427387904", b"-1", b"0"][int(rng.integers(4))]
        b[j:j] = huge + b"0"
        return f"npy shape prefixed with {huge!r}"
    at = int(rng.integers(n))
    if at < len(b):
        b[at] = int(rng.choice([0, 0xFF, ord("{"), ord("'"), ord("9"), ord(",")]))
    return f"byte {at} overwritten"


def _change_entry(a: dict, ac: np.ndarray, rng: np.random.Generator) -> str:
    keys = sorted(a)
    key = keys[int(rng.integers(len(keys)))]
    v = a[key]
    kind = int(rng.integers(10))
    if kind == 0:
        del a[key]
        return f"{key} removed"
    if kind == 1 and v.dtype.kind == "f" and v.size:
        w = v.copy()
        w.flat[int(rng.integers(v.size))] = rng.choice([np.nan, np.inf, -1.0, 0.0, 1.0, 2.0])
        a[key] = w
        return f"{key}: a value made NaN/inf/out of range"
    if kind == 2 and v.dtype.kind in "iu" and v.size:
        w = v.copy()
        top = np.iinfo(v.dtype).max
        bottom = np.iinfo(v.dtype).min
        values = [0, int(bottom), int(top), 1 << 40, 64, 7]
        w.flat[int(rng.integers(v.size))] = values[int(rng.integers(len(values)))]
        a[key] = w
        return f"{key}: an integer changed"
    if kind == 3 and v.dtype.kind in "fiu":
        a[key] = v.astype(rng.choice([np.float32, np.int32, np.float64, np.uint64, np.int64]))
        return f"{key}: dtype {a[key].dtype}"
    if kind == 4 and v.ndim:
        a[key] = v[: int(rng.integers(v.shape[0] + 1))]
        return f"{key}: shortened to {a[key].shape}"
    if kind == 5 and v.ndim:
        a[key] = np.concatenate([v, v[:1]])
        return f"{key}: lengthened"
    if kind == 6:
        a[key] = v.reshape(-1)[:, None] if v.size else v
        return f"{key}: reshaped"
    if kind == 7:
        a[key] = np.array(["x" * int(rng.integers(40)), 3.5, -1][int(rng.integers(3))])
        return f"{key}: replaced by a scalar"
    if kind == 8:
        # Another schedule, consistently stored: loads, but not for the original schedule.
        a["alphas_cumprod"] = ac * 0.999
        return "alphas_cumprod of another schedule"
    if "timesteps" in a:
        a["timesteps"] = a["timesteps"][::-1].copy()
    return "timesteps reversed"


def _check_loaded(t: GammaTable, orig: GammaTable, exact: bool) -> None:
    if exact:
        assert t == orig
        return
    g = t.gamma
    n = t.timesteps.shape[0]
    assert g.shape == (n,) and t.count.shape == (n,)
    assert np.all(np.isfinite(g)) and np.all(g >= 0)
    assert np.all(t.count >= 1)
    assert np.all(np.diff(t.timesteps) > 0)
    assert n == 0 or 0 <= t.timesteps[0] <= t.timesteps[-1] < t.num_train_timesteps
    ac = t.alphas_cumprod
    assert ac.shape == (t.num_train_timesteps,) and np.all((ac > 0) & (ac < 1))


def test_gamma_load_fuzz(tmp_path):
    orig, ac = _valid_table()
    good = str(tmp_path / "good.npz")
    orig.save(good)
    assert GammaTable.load(good) == orig
    arrays = _arrays(good)
    rng = np.random.default_rng(20261122)
    path = str(tmp_path / "fuzzed.npz")
    outcomes = {"error": 0, "loaded": 0}
    for i in range(EXECS):
        compressed = bool(rng.integers(2))
        if rng.integers(2):
            a = dict(arrays)
            what = [_change_entry(a, ac, rng) for _ in range(int(rng.integers(1, 3)))]
            _save(path, a, compressed)
            exact = False
        else:
            _save(path, arrays, compressed)
            with open(path, "rb") as f:
                b = bytearray(f.read())
            what = [_damage_bytes(b, rng) for _ in range(int(rng.integers(1, 3)))]
            with open(path, "wb") as f:
                f.write(b)
            exact = True
        try:
            t = GammaTable.load(path)
        except WeightsError:
            outcomes["error"] += 1
            continue
        except Exception as e:
            pytest.fail(f"execution {i} ({what}): {type(e).__name__} escaped: {e}")
        outcomes["loaded"] += 1
        _check_loaded(t, orig, exact)
        # A table loaded for a schedule is for that schedule, or refused with ValueError.
        try:
            GammaTable.load(path, schedule=ac)
        except ValueError:
            assert not np.array_equal(t.alphas_cumprod, ac) or t.gamma.shape != orig.gamma.shape
    print(f"GammaTable.load fuzzed: {EXECS} executions, {outcomes}")
    assert outcomes["error"] > EXECS // 4


def test_gamma_load_refuses_huge_npy_shape_without_allocating(tmp_path):
    # An entry whose npy header claims 2^40 float64 values, in a file of a few KiB: refused
    # from the sizes alone (numpy would otherwise reserve the array before reading it).
    orig, _ = _valid_table()
    good = str(tmp_path / "good.npz")
    orig.save(good)
    src = zipfile.ZipFile(good)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "alphas_cumprod.npy":
                head = io.BytesIO()
                header = {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)}
                np.lib.format.write_array_header_1_0(head, header)
                data = head.getvalue() + np.ones(64).tobytes()
            dst.writestr(info.filename, data)
    bad = tmp_path / "huge.npz"
    bad.write_bytes(out.getvalue())
    with pytest.raises(WeightsError, match="alphas_cumprod"):
        GammaTable.load(str(bad))
