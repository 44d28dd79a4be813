//! PyO3 bindings only: convert arguments (`tensor`), build the Rust types, run them on the
//! target the tensors decide (`run`) without the GIL, map errors (`errors`). One file per
//! area, named as the Python module or class it serves.

pub mod analytic;
pub mod analytic_dpm;
pub mod backends;
pub mod cuda;
pub mod ddim;
pub mod dpm_multistep;
pub mod dpm_singlestep;
pub mod dpm_solver_v3;
pub mod errors;
pub mod euler;
pub mod lincomb;
pub mod lms;
pub mod random;
pub mod sampling;
pub mod schedule;
pub mod spacing;
pub mod tensor;
pub mod testing;
pub mod unet;
pub mod unipc;

use pyo3::prelude::*;

use crate::target::{Op, Target};
use crate::tensor::Tensor;

/// Runs `op` over `tensors` on the target they decide (the caller's CUDA `stream` for CUDA
/// tensors), with the GIL released.
pub(crate) fn run<'a, O: Op>(
    py: Python<'_>,
    op: &O,
    tensors: impl IntoIterator<Item = &'a Tensor>,
    stream: usize,
) -> PyResult<()> {
    let target = Target::of(op.what(), tensors, stream)?;
    py.detach(|| target.run(op))?;
    Ok(())
}
