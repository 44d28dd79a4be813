//! Bindings of the random streams: the Philox normals (`random::philox`), with which
//! `rdiff.randn` fills a buffer, and torch's CPU generator (`random::torch_normal`), with which
//! the schedulers draw diffusers' noise.

use numpy::PyReadwriteArray1;
use pyo3::prelude::*;

use super::tensor::tensor;
use crate::dtype::DType;
use crate::error::RdiffError;
use crate::random::mt19937::Mt19937;
use crate::random::philox::fill_normals_par;
use crate::random::torch_normal::{fill_torch_normal, Math};
use crate::tensor::Device;

/// Fills the contiguous float32 CPU buffer `out` with elements 0..numel of the Philox stream
/// (seed, offset), in parallel without the GIL.
#[pyfunction(name = "_philox_normal_fill")]
pub fn philox_normal_fill(
    py: Python<'_>,
    out: &Bound<'_, PyAny>,
    seed: u64,
    offset: u64,
) -> PyResult<()> {
    let out = tensor(out, "out")?;
    out.expect_dtype("out", DType::F32)?;
    if out.device != Device::Cpu {
        return Err(RdiffError::Value("out: the Philox fill runs on CPU buffers".into()).into());
    }
    // SAFETY: a live, contiguous f32 CPU buffer of numel elements (checked dtype and device;
    // the Python layer allocates it fresh and keeps it alive for the call).
    let dst = unsafe { out.slice_mut::<f32>() };
    py.detach(|| fill_normals_par(seed, offset, dst));
    Ok(())
}

/// Fills the contiguous float32 CPU buffer `out` (≥ 16 elements) with what
/// `torch.randn(out.numel(), generator=g, dtype=dtype)` draws, as float32 values, from the
/// generator state `state` (`g.get_state().numpy()`: 5,056 bytes), with the ln/sin/cos named
/// by `math` (`libm`, `cephes`, `cephes_fma`), and writes into `state` the state torch would
/// leave (for `g.set_state`).
#[pyfunction(name = "_torch_normal_fill")]
pub fn torch_normal_fill(
    py: Python<'_>,
    out: &Bound<'_, PyAny>,
    mut state: PyReadwriteArray1<'_, u8>,
    dtype: &str,
    math: &str,
) -> PyResult<()> {
    let out = tensor(out, "out")?;
    out.expect_dtype("out", DType::F32)?;
    if out.device != Device::Cpu || out.numel < 16 {
        return Err(RdiffError::Value(
            "out: torch's grouped normal fill runs on CPU buffers of at least 16 elements".into(),
        )
        .into());
    }
    let dtype = match DType::parse(dtype) {
        Some(d @ (DType::F32 | DType::BF16 | DType::F16)) => d,
        _ => {
            return Err(RdiffError::Value(format!(
                "dtype: {dtype:?}; expected float32, bfloat16 or float16"
            ))
            .into())
        }
    };
    let math = Math::parse(math).ok_or_else(|| {
        RdiffError::Value(format!(
            "math: {math:?}; expected libm, cephes or cephes_fma"
        ))
    })?;
    let state = state
        .as_slice_mut()
        .map_err(|_| RdiffError::Value("state: expected a contiguous uint8 array".into()))?;
    let mut g = Mt19937::from_torch_state(state)?;
    // SAFETY: as in `philox_normal_fill`.
    let dst = unsafe { out.slice_mut::<f32>() };
    py.detach(|| fill_torch_normal(&mut g, math, dtype, dst));
    g.write_torch_state(state);
    Ok(())
}
