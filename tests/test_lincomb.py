"""The fused pass every step and sampler runs (src/lincomb.rs, src/cpu/lincomb.rs,
kernels/lincomb.cu) and the adaptive solver's error norm (src/error_norm.rs,
kernels/error_norm.cu), through their binding `_lincomb` / `_error_norm`: the formula, float64
arithmetic for float64 buffers, dynamic thresholding against torch.quantile, the CUDA kernels
(emulated) equal to the CPU loop bit for bit, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rdiff._cuda_testing import emulated_backend, launches
from rdiff._rdiff import _error_norm, _lincomb

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def _buffer(values: torch.Tensor, dtype, offset: int) -> torch.Tensor:
    """values in dtype, as a contiguous view `offset` elements into a larger buffer."""
    base = torch.empty(values.numel() + offset + 3, dtype=dtype)
    view = base[offset : offset + values.numel()].view(values.shape)
    view.copy_(values.to(dtype))
    return view


def _pass(dt, shape, offset, thresholding, seed=0):
    """A pass with every stage the samplers use: base, terms, conversion, history,
    thresholding. Returns (out, hist, bounds) for a fresh run."""
    g = torch.Generator().manual_seed(seed)
    ins = [_buffer(torch.randn(shape, generator=g) * 1.5, dt, offset) for _ in range(5)]
    x, mo, t1, t2, u = ins
    out = _buffer(torch.zeros(shape), dt, offset)
    hist = _buffer(torch.zeros(shape), dt, offset)
    bounds = torch.zeros(shape[0], dtype=torch.float64 if dt == torch.float64 else torch.float32)
    _lincomb(
        out,
        [(0.9, u), (-0.3, t1), (0.25, t2)],
        (x, mo, 1.2, -0.4, 0.6),
        hist,
        (0.9, 1.1, math.inf) if thresholding else None,
        bounds if thresholding else None,
    )
    return out, hist, bounds


def test_the_formula():
    g = torch.Generator().manual_seed(1)
    x, mo, a, b = (torch.randn(3, 40, generator=g, dtype=torch.float64) for _ in range(4))
    out, hist = torch.empty_like(x), torch.empty_like(x)
    _lincomb(out, [(0.5, a), (-2.0, b)], (x, mo, 1.5, -0.5, 0.25), hist)
    m = 1.5 * x - 0.5 * mo
    torch.testing.assert_close(hist, m, rtol=0, atol=0)
    # float64 buffers get float64 arithmetic, in this order.
    assert torch.equal(out, ((0.5 * a) + 0.25 * m) + (-2.0 * b))


def test_thresholding_bounds_are_torch_quantile_clamped_below_bit_for_bit():
    g = torch.Generator().manual_seed(7)
    for dt in (torch.float32, torch.float64):
        x = torch.randn(3, 385, generator=g, dtype=dt) * 3
        mo = torch.randn(3, 385, generator=g, dtype=dt)
        for ratio in (0.0, 0.5, 0.995, 1.0):
            for path in ("cpu", "emulated"):
                if path == "emulated" and dt == torch.float64:
                    continue
                out, hist = torch.empty_like(x), torch.empty_like(x)
                bounds = torch.zeros(3, dtype=dt)
                with emulated_backend() if path == "emulated" else _nothing():
                    _lincomb(
                        out, [], (x, mo, 1.25, -0.5, 1.0), hist, (ratio, 2.0, math.inf), bounds
                    )
                m = 1.25 * x - 0.5 * mo
                want = torch.quantile(m.abs(), ratio, dim=1).clamp(min=2.0)
                # torch.quantile's arithmetic (f64 rank, fused lerp), to its bits.
                assert torch.equal(bounds, want), (ratio, bounds, want)
                s = want.reshape(-1, 1)
                torch.testing.assert_close(hist, m.clamp(-s, s) / s, rtol=1e-6, atol=1e-6)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


CASES = [
    # (shape, offset in elements)
    ((1, 1), 0),
    ((2, 231), 1),  # per-sample 231: a scalar tail; misaligned views
    ((2, 1024), 0),  # whole vectors, more than one block per sample
    ((3, 40_000), 0),  # parallel CPU tasks; grid-stride loops
    ((2, 6), 3),
]


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("thresholding", [False, True])
def test_emulated_kernel_equals_the_cpu_loop(dt, case, thresholding):
    shape, offset = CASES[case]
    cpu = _pass(DTYPES[dt], shape, offset, thresholding, seed=case)
    before = launches()
    with emulated_backend(max_blocks=2):
        emu = _pass(DTYPES[dt], shape, offset, thresholding, seed=case)
    assert launches() - before == (2 if thresholding else 1)
    for c, e, what in zip(cpu, emu, ("out", "hist", "bounds"), strict=True):
        assert torch.equal(c, e), what
    assert cpu[0].abs().sum() > 0


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_error_norm_is_the_scaled_rms_and_the_kernel_equals_the_cpu(dt):
    g = torch.Generator().manual_seed(3)
    hi, lo, prev = (torch.randn(3, 4, 33, generator=g).to(DTYPES[dt]) for _ in range(3))
    out = {}
    for path in ("cpu", "emulated"):
        norms = torch.zeros(3, dtype=torch.float64)
        with emulated_backend() if path == "emulated" else _nothing():
            _error_norm(hi, lo, prev, 0.0078, 0.05, norms)
        out[path] = norms
    assert torch.equal(out["cpu"], out["emulated"])
    h, lw, p = (t.double().reshape(3, -1) for t in (hi, lo, prev))
    delta = torch.clamp(0.05 * torch.maximum(lw.abs(), p.abs()), min=0.0078)
    want = (((h - lw) / delta) ** 2).mean(dim=1).sqrt()
    torch.testing.assert_close(out["cpu"], want, rtol=1e-12, atol=0)


def test_bad_input():
    x = np.ones((2, 3), np.float32)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="at most 4"):
        _lincomb(out, [(1.0, x)] * 6)
    with pytest.raises(ValueError, match="overlaps an input"):
        _lincomb(x, [(1.0, x)])
    with pytest.raises(ValueError, match="conversion"):
        _lincomb(out, [(1.0, x)], None, np.empty_like(x))
    with pytest.raises(TypeError, match="dtype"):
        _lincomb(out, [(1.0, x.astype(np.float16))])
    with pytest.raises(ValueError, match="elements"):
        _lincomb(out, [(1.0, np.ones((2, 4), np.float32))])
    with pytest.raises(ValueError, match="scratch"):
        _lincomb(out, [], (x, x, 1.0, 0.0, 1.0), None, (0.9, 1.0, math.inf))
    with pytest.raises(TypeError, match=r"bounds.*float32"):
        _lincomb(out, [], (x, x, 1.0, 0.0, 1.0), None, (0.9, 1.0, math.inf), np.zeros(2))
    with pytest.raises(ValueError, match="ratio"):
        _lincomb(
            out, [], (x, x, 1.0, 0.0, 1.0), None, (1.5, 1.0, math.inf), np.zeros(2, np.float32)
        )
    with emulated_backend(), pytest.raises(TypeError, match="float64"):
        _lincomb(out.astype(np.float64), [(1.0, x.astype(np.float64))])


# -- per-element weights (lincomb::ElementWeights, DPM-Solver-v3) ----------------------------

ALL_DTYPES = {**DTYPES, "f64": torch.float64}
A_, C_, P_, Q_, WM_, R_, W_ = 0.9, [-0.3, 0.25, 0.7], 1.2, -0.4, 0.6, 0.3, 0.8
A2_, WM2_, C2_ = 1.1, -0.2, [0.5, -0.6, 0.15]


def _slot_names(nterms: int, conv: bool, chain: bool) -> list[str]:
    names = ["a", "bias", *(f"c{i}" for i in range(nterms))]
    if conv:
        names += ["r", "wm"]
    if chain:
        names += ["chain_a", "chain_bias", *(f"chain_c{i}" for i in range(nterms))]
        if conv:
            names.append("chain_wm")
    return names


def _elem_pass(ddt, sdt, shape, nterms, conv, chain, seed, offset=0, every_slot=False):
    """A pass with element weights: base (scalar 1 on odd seeds: the CPU reads the row as is),
    `nterms` terms, optionally the conversion (r, w) with its history and the chain. A random
    subset of the slots (every one with `every_slot`) names a row of a shuffled coefficient
    tensor. Returns (inputs, outputs)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    acc = torch.float64 if ddt == sdt == torch.float64 else torch.float32
    ps = math.prod(shape[1:])

    def rnd(dt):
        return _buffer(torch.randn(shape, generator=g, dtype=torch.float64), dt, offset)

    ins = {"u": rnd(sdt), "x": rnd(sdt), "mo": rnd(ddt), "t": [rnd(ddt) for _ in range(nterms)]}
    names = _slot_names(nterms, conv, chain)
    kept = [n for n in names if every_slot or rng.random() < 0.7]
    order = rng.permutation(len(names))
    ins["rows"] = {n: int(order[k]) for k, n in enumerate(kept)}
    coef = torch.rand(len(names), ps, generator=g, dtype=torch.float64) * 3 - 1
    ins["coef"] = _buffer(coef, acc, offset)
    ins["a"] = 1.0 if seed % 2 else A_
    outs = {"out": _buffer(torch.zeros(shape), ddt, offset)}
    kw = {"coef": ins["coef"], "rows": ins["rows"]}
    terms = [(ins["a"], ins["u"]), *zip(C_[:nterms], ins["t"], strict=True)]
    hist = None
    if conv:
        outs["hist"] = hist = _buffer(torch.zeros(shape), ddt, offset)
        kw.update(r=R_, w=W_)
    if chain:
        outs["mid"] = _buffer(torch.zeros(shape), sdt, offset)
        kw["chain"] = (outs["mid"], A2_, WM2_, C2_[:nterms])
    _lincomb(
        outs["out"],
        terms,
        (ins["x"], ins["mo"], P_, Q_, WM_) if conv else None,
        hist,
        **kw,
    )
    return ins, outs


def _elem_check(ins, outs, shape):
    """The outputs against the formula in float64 (from the stored inputs): m within the
    rounding of hist's dtype, then y (from the stored m) within mid's, then out (from the
    stored m and y) within its own; the arithmetic's error bound grows with Σ|term|."""

    def f(t):
        return t.double().numpy()

    coef = f(ins["coef"]).reshape(-1, *shape[1:])  # one row per slot, shared by the batch
    rows = ins["rows"]
    acc_eps = 2.0**-52 if ins["coef"].dtype == torch.float64 else 2.0**-23

    def wt(name, scalar):
        return scalar * coef[rows[name]] if name in rows else scalar

    def bias(name):
        return coef[rows[name]] if name in rows else 0.0

    def close(got, parts, extra, what):
        want = sum(parts) + extra
        mag = sum(np.abs(p) for p in parts) + np.abs(extra)
        info = torch.finfo(got.dtype)
        tol = 16 * acc_eps * mag + info.eps * np.abs(want) + info.tiny * info.eps
        err = np.abs(f(got) - want)
        assert np.all(err <= tol), (what, float((err / np.maximum(mag, 1e-300)).max()))
        assert np.abs(want).sum() > 0

    x, u, mo = f(ins["x"]), f(ins["u"]), f(ins["mo"])
    ts = [f(t) for t in ins["t"]]
    m = None
    if "hist" in outs:
        close(outs["hist"], [wt("r", R_) * x, W_ * (P_ * x), W_ * (Q_ * mo)], 0.0, "hist")
        m = f(outs["hist"])  # the pass continues from the stored value
    y = [wt("a", ins["a"]) * u]
    y += [wt(f"c{i}", c) * t for i, (c, t) in enumerate(zip(C_[: len(ts)], ts, strict=True))]
    if m is not None:
        y.append(wt("wm", WM_) * m)
    if "mid" not in outs:
        close(outs["out"], y, bias("bias"), "out")
        return
    close(outs["mid"], y, bias("bias"), "mid")
    z = [wt("chain_a", A2_) * f(outs["mid"])]
    z += [wt(f"chain_c{i}", c) * t for i, (c, t) in enumerate(zip(C2_[: len(ts)], ts, strict=True))]
    if m is not None:
        z.append(wt("chain_wm", WM2_) * m)
    close(outs["out"], z, bias("chain_bias"), "out")


# (output dtype D, sample dtype S, chain): S ≠ D only with a chain (its `mid` has S)
ELEM_PAIRS = [(d, d, chain) for d in ALL_DTYPES for chain in (False, True)]
ELEM_PAIRS += [("f32", "bf16", True), ("f16", "f32", True), ("bf16", "f16", True)]


@pytest.mark.parametrize("case", ELEM_PAIRS, ids=lambda v: f"{v[0]}-{v[1]}-chain{int(v[2])}")
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("nterms", [0, 1, 2, 3])
def test_element_weights_match_the_formula(case, conv, nterms):
    *pair, chain = case
    shape = (3, 4, 7)  # the batch shares the rows
    seed = 10 * nterms + 2 * conv + chain
    ins, outs = _elem_pass(*(ALL_DTYPES[d] for d in pair), shape, nterms, conv, chain, seed)
    _elem_check(ins, outs, shape)


@pytest.mark.parametrize("pair", [("f64", "f64"), ("f32", "f32"), ("bf16", "f16")], ids="-".join)
def test_element_weights_across_the_parallel_split(pair):
    # per sample more than one CPU task (TASK = 32768): the rows follow the element index
    shape = (2, 40_001)
    ins, outs = _elem_pass(*(ALL_DTYPES[d] for d in pair), shape, 3, True, True, 5, 0, True)
    _elem_check(ins, outs, shape)


def test_element_weights_with_unit_rows_are_the_scalar_pass():
    """Rows of ones (and zero biases) give the scalar pass's bits."""
    g = torch.Generator().manual_seed(4)
    x, mo, u, t1, t2 = (torch.randn(2, 300, generator=g) for _ in range(5))
    names = ["r", "a", "wm", "c0", "c1", "chain_a", "chain_wm", "chain_c0", "chain_c1"]
    coef = torch.cat([torch.ones(len(names), 300), torch.zeros(2, 300)])
    rows = {n: k for k, n in enumerate(names)} | {"bias": len(names), "chain_bias": 10}
    got = {}
    for path in ("cpu", "emulated"):
        for elem in (False, True):
            out, hist, mid = (torch.zeros(2, 300) for _ in range(3))
            kw = {"coef": coef, "rows": rows} if elem else {}
            with emulated_backend() if path == "emulated" else _nothing():
                _lincomb(
                    out,
                    [(A_, u), (C_[0], t1), (C_[1], t2)],
                    (x, mo, P_, Q_, WM_),
                    hist,
                    r=R_,
                    w=W_,
                    chain=(mid, A2_, WM2_, C2_[:2]),
                    **kw,
                )
            got[path, elem] = (out, hist, mid)
    for k in got:
        for a, b in zip(got[k], got["cpu", False], strict=True):
            assert torch.equal(a, b), k


ELEM_EMULATED = [(d, s, True) for d in DTYPES for s in DTYPES] + [(d, d, False) for d in DTYPES]


@pytest.mark.parametrize("dts", ELEM_EMULATED, ids=lambda v: f"{v[0]}-{v[1]}-chain{int(v[2])}")
@pytest.mark.parametrize("case", range(len(CASES)))
def test_emulated_kernel_with_element_weights_equals_the_cpu_loop(dts, case):
    ddt, sdt, chain = DTYPES[dts[0]], DTYPES[dts[1]], dts[2]
    shape, offset = CASES[case]
    args = (ddt, sdt, shape, 3, True, chain, case, offset, case % 2 == 0)
    cpu = _elem_pass(*args)[1]
    before = launches()
    with emulated_backend(max_blocks=2):
        emu = _elem_pass(*args)[1]
    assert launches() - before == 1
    assert cpu.keys() == emu.keys()
    for k in cpu:
        assert torch.equal(cpu[k], emu[k]), k
    assert cpu["out"].abs().sum() > 0


def test_element_weights_bad_input():
    x = np.ones((2, 3), np.float32)
    out, hist = np.empty_like(x), np.empty_like(x)
    coef = np.ones((4, 3), np.float32)
    conv = (x, x, 1.0, 0.0, 1.0)

    def run(rows, coef=coef, conv=conv, out=out, terms=((1.0, x), (0.5, x)), **kw):
        _lincomb(out, list(terms), conv, hist if conv else None, coef=coef, rows=rows, **kw)

    run({"a": 0, "c0": 1, "r": 2, "wm": 3, "bias": 3})  # fine
    with pytest.raises(ValueError, match="float32 expected for a float32/float16/bfloat16 pass"):
        run({"a": 0}, coef=coef.astype(np.float64))
    x64 = x.astype(np.float64)
    with pytest.raises(ValueError, match="float64 expected for a float64 pass"):
        _lincomb(np.empty_like(x64), [(1.0, x64)], coef=coef, rows={"a": 0})
    with pytest.raises(ValueError, match="row 4 named, but the tensor holds 4 rows of 3"):
        run({"bias": 4})
    with pytest.raises(ValueError, match="row 1 named, but the tensor holds 1 rows"):
        run({"a": 1}, coef=np.ones(5, np.float32))  # 5 values: one whole row of 3
    with pytest.raises(ValueError, match="2 term slots"):
        run({"c1": 0})  # one term after the base
    with pytest.raises(ValueError, match="chained element weights without a chain"):
        run({"chain_bias": 0})
    with pytest.raises(ValueError, match="without a conversion"):
        run({"r": 0}, conv=None)
    with pytest.raises(ValueError, match="without a conversion"):
        run({"wm": 0}, conv=None)
    with pytest.raises(ValueError, match="without a base"):
        run({"a": 0}, terms=())
    with pytest.raises(ValueError, match='unknown slot "c4"'):
        run({"c4": 0})
    with pytest.raises(ValueError, match='unknown slot "x"'):
        run({"x": 0})
    with pytest.raises(ValueError, match=r"row index is ≥ 0"):
        run({"a": -1})
    with pytest.raises(ValueError, match="need coef"):
        run({"a": 0}, coef=None)
    with pytest.raises(ValueError, match="overlaps an input"):
        run({"a": 0}, out=coef[:2])
    with pytest.raises(ValueError, match="need a model-output conversion"):
        run({}, conv=None, r=0.5)
    mid = np.empty_like(x)
    run({"chain_c0": 0, "chain_a": 1, "chain_wm": 2, "chain_bias": 3}, chain=(mid, 1.0, 0.0, [0.5]))
    with pytest.raises(ValueError, match="2 chained term slots"):
        run({"chain_c1": 0}, chain=(mid, 1.0, 0.0, [0.5]))
    with pytest.raises(ValueError, match="2 chained weights for 1 terms"):
        run({}, chain=(mid, 1.0, 0.0, [0.5, 0.5]))
    # with a chain, x and the base have mid's dtype (the sample's)
    with pytest.raises(TypeError, match="x: expected dtype float16"):
        run({}, chain=(mid.astype(np.float16), 1.0, 0.0, [0.5]))
    with pytest.raises(TypeError, match="term 0: expected dtype float16"):
        run({}, conv=None, chain=(mid.astype(np.float16), 1.0, 0.0, [0.5]))
    with emulated_backend(), pytest.raises(ValueError, match="row 4 named"):
        run({"bias": 4})


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
