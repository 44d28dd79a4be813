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


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
