"""The tensor boundary (src/py/tensor.rs, src/tensor.rs): numpy arrays through numpy's C
array interface, torch tensors through DLPack, other objects through `__array_interface__` /
`__cuda_array_interface__`, each checked before any slice is formed: dtype, device, null,
alignment for the dtype, a length that fits in memory, and contiguity. `_lincomb` (out = 1·x)
is the probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rdiff
from rdiff import _rdiff


def _copy(x, out=None):
    out = np.empty((2, 4), np.float32) if out is None else out
    _rdiff._lincomb(out, [(1.0, x)])
    return out


class _Iface:
    """An object exposing only `__array_interface__` (or the CUDA one), with any values."""

    def __init__(self, ptr, shape, typestr="<f4", strides=None, cuda=False):
        d = {"data": (ptr, False), "shape": shape, "typestr": typestr, "version": 3}
        if strides is not None:
            d["strides"] = strides
        setattr(self, "__cuda_array_interface__" if cuda else "__array_interface__", d)


def test_numpy_torch_and_the_array_interface_are_read_alike():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(_copy(x), x)
    np.testing.assert_array_equal(_copy(torch.from_numpy(x.copy())), x)
    np.testing.assert_array_equal(_copy(_Iface(x.ctypes.data, (2, 4))), x)
    t = torch.from_numpy(x.copy()).bfloat16()
    out = torch.empty(2, 4, dtype=torch.bfloat16)
    _rdiff._lincomb(out, [(1.0, t)])
    assert torch.equal(out, t)


def test_torch_subclasses_are_read_like_tensors():
    """Plain tensors go through DLPack 1.3's exchange API where torch has it (no capsule);
    subclasses (a Parameter) take the capsule: both read the same data."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    p = torch.nn.Parameter(torch.from_numpy(x.copy()), requires_grad=False)
    np.testing.assert_array_equal(_copy(p), x)
    np.testing.assert_array_equal(_copy(torch.from_numpy(x.copy())), x)
    with pytest.raises(TypeError, match="int32"):
        _copy(torch.zeros(2, 4, dtype=torch.int32))  # an error from the exchange-API path


def test_views_with_an_offset_are_read_from_their_first_element():
    base = np.arange(20, dtype=np.float32)
    np.testing.assert_array_equal(_copy(base[3:11].reshape(2, 4)), base[3:11].reshape(2, 4))
    tb = torch.arange(20, dtype=torch.float32)
    np.testing.assert_array_equal(_copy(tb[5:13].reshape(2, 4)), tb[5:13].reshape(2, 4).numpy())


def test_null_pointer_is_refused():
    with pytest.raises(ValueError, match="null data pointer"):
        _copy(_Iface(0, (2, 4)))


@pytest.mark.parametrize(("typestr", "offset"), [("<f4", 2), ("<f8", 4), ("<f2", 1)])
def test_misaligned_pointer_is_refused(typestr, offset):
    base = np.zeros(64, np.uint8)
    with pytest.raises(ValueError, match="not aligned"):
        _copy(_Iface(base.ctypes.data + offset, (2, 4), typestr))


@pytest.mark.parametrize("shape", [(2**62,), (2**31, 2**31), (2**63 - 1,)])
def test_length_past_the_address_space_is_refused(shape):
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=r"does not fit in memory|overflows"):
        _copy(_Iface(x.ctypes.data, shape))


def test_unsupported_dtypes_are_type_errors():
    with pytest.raises(TypeError, match="unsupported dtype int32"):
        _copy(np.ones((2, 4), np.int32))
    with pytest.raises(TypeError, match=r"unsupported dtype torch\.int64"):
        _copy(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="unsupported dtype"):
        _copy(_Iface(np.ones(8, np.int32).ctypes.data, (2, 4), "<i4"))
    with pytest.raises(TypeError, match="byte order"):
        _copy(np.ones((2, 4), ">f4"))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        _copy([1.0, 2.0])


def test_tensors_without_data_are_value_errors():
    with pytest.raises(ValueError, match="meta"):
        _copy(torch.empty(2, 4, device="meta"))


def test_non_contiguous_buffers_are_refused():
    a = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="non-contiguous"):
        _rdiff._lincomb(np.empty((4, 3), np.float32), [(1.0, a[:, ::2])])
    with pytest.raises(ValueError, match="non-contiguous"):
        _rdiff._lincomb(np.empty((6, 4), np.float32), [(1.0, a.T)])
    t = torch.ones(4, 6)
    with pytest.raises(ValueError, match="non-contiguous"):
        _rdiff._lincomb(torch.empty(4, 5), [(1.0, t[:, 1:])])
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="non-contiguous"):
        _copy(_Iface(x.ctypes.data, (2, 4), strides=(4, 8)))
    # Unit dimensions may have any stride; a contiguous view with an offset is fine.
    _copy(_Iface(x.ctypes.data, (2, 4), strides=(16, 4)))
    np.testing.assert_array_equal(_copy(t[1:3, 1:5].contiguous()), np.ones((2, 4)))


def test_a_cuda_interface_is_a_cuda_tensor():
    if rdiff.backends()["cuda"]["available"]:
        pytest.skip("checks the error raised where CUDA is unavailable")
    x = np.ones(8, np.float32)
    with pytest.raises(rdiff.CudaUnavailableError):
        _rdiff._lincomb(
            _Iface(x.ctypes.data, (2, 4), cuda=True),
            [(1.0, _Iface(x.ctypes.data, (2, 4), cuda=True))],
        )


def test_layout_products_that_wrap_round_are_refused():
    # batch × row stride = 2^64 + 16, which wraps to the 16 elements the buffer holds: taken
    # at its word, a pass would read 2^60 rows past the end.
    mo = np.ones(16, np.float32)
    with pytest.raises(ValueError, match=r"does not fit in memory|overflows"):
        _rdiff._gamma_batch_sums(_Iface(mo.ctypes.data, (2**60 + 1, 16)), None, 16, "epsilon", 0.5)


def test_unet_shape_products_that_wrap_round_are_refused():
    from rdiff.cli import bundled_model_dir

    core = rdiff.UNet2DModel.from_pretrained(bundled_model_dir("digits"))._core
    x = np.zeros((1, 1, 16, 16), np.float32)
    out = np.zeros_like(x)
    # h·w = 2^64 + 256 wraps to the 256 elements of x and out; both multiples of 4, as the
    # model's three levels need.
    h, w = 4 * 4112, 4 * ((2**56 + 1) // 257)
    assert (h * w) % 2**64 == 256
    with pytest.raises(ValueError, match=r"does not fit in memory|overflows"):
        core.forward(
            _Iface(x.ctypes.data, (1, 1, h, w)), [0.0], _Iface(out.ctypes.data, (1, 1, h, w))
        )
