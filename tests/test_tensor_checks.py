"""Pointers received from Python are checked before any slice is formed: null, alignment for
the dtype, a length that fits in memory, and contiguity (in ``rdiff._tensor.describe``). The
private describe tuples ``(data_ptr, numel, dtype, device, index)`` reach the checks directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rdiff import _rdiff
from rdiff._tensor import describe


def _gamma(desc, batch=1):
    return _rdiff._emulated_gamma(desc, batch)


def test_valid_tuple_is_accepted():
    x = np.ones(8, np.float32)
    assert _gamma(describe(x), 2) == [1.0, 1.0]


def test_null_pointer_is_refused():
    with pytest.raises(ValueError, match="null data pointer"):
        _gamma((0, 8, "float32", "cpu", 0))


@pytest.mark.parametrize(("dtype", "offset"), [("float32", 2), ("float64", 4), ("float16", 1)])
def test_misaligned_pointer_is_refused(dtype, offset):
    base = np.zeros(64, np.uint8)
    ptr = base.ctypes.data + offset
    with pytest.raises(ValueError, match=f"not aligned for {dtype}"):
        _gamma((ptr, 4, dtype, "cpu", 0))


@pytest.mark.parametrize("numel", [2**62, 2**63 - 1, 2**64 - 1])
def test_length_past_the_address_space_is_refused(numel):
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="does not fit in memory"):
        _gamma((x.ctypes.data, numel, "float32", "cpu", 0))


def test_unknown_dtype_and_device_are_refused():
    x = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="unsupported dtype int32"):
        _gamma((x.ctypes.data, 8, "int32", "cpu", 0))
    with pytest.raises(ValueError, match="unsupported device"):
        _gamma((x.ctypes.data, 8, "float32", "mps", 0))


def test_length_is_checked_against_the_operation():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError):
        # 3 samples do not split 8 elements.
        _gamma(describe(x), 3)


def test_describe_refuses_non_contiguous_buffers():
    a = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="non-contiguous"):
        describe(a[:, ::2])
    with pytest.raises(ValueError, match="non-contiguous"):
        describe(a.T)
    t = torch.ones(4, 6)
    with pytest.raises(ValueError, match="non-contiguous"):
        describe(t[:, 1:])
    assert describe(t[1:])[1] == 18  # a contiguous view with an offset is fine


def test_layout_products_that_wrap_round_are_refused():
    # batch × row stride = 2^64 + 16, which wraps to the 16 elements the buffer holds: taken
    # at its word, the sum would read 2^60 rows past the end.
    mo = np.ones(16, np.float32)
    with pytest.raises(ValueError, match="does not fit in memory"):
        _rdiff._gamma_batch_sums(describe(mo), None, 2**60 + 1, 16, 16, 0.0, 1.0)


def test_unet_shape_products_that_wrap_round_are_refused():
    import rdiff
    from rdiff.cli import bundled_model_dir

    core = rdiff.UNet2DModel.from_pretrained(bundled_model_dir("digits"))._core
    x = np.zeros((1, 1, 16, 16), np.float32)
    out = np.zeros_like(x)
    # h·w = 16·4112 · 16·(2^56 + 1)/257 = 2^64 + 256, which wraps to the 256 elements of
    # x and out; both are multiples of 4, as the model's three levels need.
    h, w = 4 * 4112, 4 * ((2**56 + 1) // 257)
    assert (h * w) % 2**64 == 256
    with pytest.raises(ValueError, match="does not fit in memory"):
        core.forward(describe(x), (1, 1, h, w), [0.0], describe(out))
