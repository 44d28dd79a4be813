"""torch.randn on the CPU drawn by rdiff (python/rdiff/_torch_normal.py,
src/random/torch_normal.rs): torch's numbers to the bit and the generator left where torch
leaves it, or the draw left to torch. The MT19937 known answer and the group bookkeeping are
Rust tests (src/random/mt19937.rs, src/random/torch_normal.rs)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rdiff import _tensor, _torch_normal
from rdiff._rdiff import _torch_normal_fill

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 16 and 17 (one group, a tail), a state block (624) either side, a 2-D shape, a large odd one
SHAPES = [(16,), (17,), (31,), (624,), (625,), (1249,), (3, 4, 9, 11), (2, 4, 64, 65)]


def test_a_candidate_reproduces_the_installed_torch():
    # AVX2 and AVX-512 kernels run the Cephes polynomials with fused multiply-adds (AVX-512
    # checked on a Sapphire Rapids-class Xeon, torch 2.15), the default ones libm.
    expected = {"AVX2": "cephes_fma", "AVX512": "cephes_fma", "DEFAULT": "libm"}
    capability = torch.backends.cpu.get_cpu_capability()
    found = _torch_normal._math()
    if capability in expected:
        assert found == expected[capability]
    else:
        assert found in (None, "libm", "cephes_fma")


def test_libm_is_found_when_torch_runs_its_default_kernels():
    # ATEN_CPU_CAPABILITY=default makes torch run its scalar kernels (libm's ln, sin, cos).
    code = "import torch; from rdiff import _torch_normal; print(_torch_normal._math())"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "libm"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_draws_torchs_numbers_and_advances_the_generator_as_torch(shape, dtype):
    theirs = torch.Generator().manual_seed(sum(shape))
    ours = torch.Generator().manual_seed(sum(shape))
    torch.randn(5, generator=theirs)  # a state in the middle of a block
    torch.randn(5, generator=ours)
    want = torch.randn(shape, generator=theirs, dtype=dtype)
    got = _tensor.randn(shape, want, ours, dtype=dtype)
    assert got.dtype == dtype and tuple(got.shape) == shape
    assert torch.equal(got, want)
    assert torch.equal(ours.get_state(), theirs.get_state())
    widened = _tensor.randn(shape, want, ours, dtype=dtype, widen=True)
    assert torch.equal(widened, torch.randn(shape, generator=theirs, dtype=dtype).float())


def test_the_default_generator_and_per_sample_generators():
    torch.manual_seed(11)
    want = torch.randn(2, 3, 8, 8)
    torch.manual_seed(11)
    assert torch.equal(_tensor.randn((2, 3, 8, 8), want, None), want)
    after_ours = torch.rand(3)
    torch.manual_seed(11)
    torch.randn(2, 3, 8, 8)
    assert torch.equal(after_ours, torch.rand(3))
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    want = torch.cat([torch.randn(1, 3, 8, 8, generator=g) for g in gens])
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    assert torch.equal(_tensor.randn((2, 3, 8, 8), want, gens), want)


def test_what_it_does_not_draw_is_left_to_torch():
    g = torch.Generator().manual_seed(0)
    assert _torch_normal.randn((15,), g, torch.float32) is None  # torch's one-at-a-time path
    assert _torch_normal.randn((64,), g, torch.float64) is None
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    # ... and _tensor.randn then gives torch's numbers
    want = torch.randn(15, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = _tensor.randn((15,), want, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(got, want)


def test_bad_states_are_refused_with_a_clear_error():
    out = torch.empty(32)
    state = torch.Generator().manual_seed(0).get_state().numpy()
    with pytest.raises(ValueError, match="5056"):
        _torch_normal_fill(out, state[:-1].copy(), "float32", "libm")
    bad = state.copy()
    bad[8:12] = np.frombuffer((700).to_bytes(4, "little"), np.uint8)  # left past the block
    with pytest.raises(ValueError, match="not a seeded MT19937 state"):
        _torch_normal_fill(out, bad, "float32", "libm")
    with pytest.raises(ValueError, match="contiguous"):
        _torch_normal_fill(out, np.repeat(state, 2)[::2], "float32", "libm")
    with pytest.raises(ValueError, match="dtype"):
        _torch_normal_fill(out, state, "float64", "libm")
    with pytest.raises(ValueError, match="math"):
        _torch_normal_fill(out, state, "float32", "sleef")
    with pytest.raises(ValueError, match="at least 16"):
        _torch_normal_fill(torch.empty(8), state, "float32", "libm")
    with pytest.raises(TypeError):
        _torch_normal_fill(torch.empty(32, dtype=torch.float64), state, "float32", "libm")
