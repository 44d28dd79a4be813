//! Bindings of the Philox normal stream (`random::philox`): `rdiff.randn` fills a buffer.

use pyo3::prelude::*;

use super::tensor::tensor;
use crate::dtype::DType;
use crate::error::RdiffError;
use crate::random::philox::fill_normals_par;
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
