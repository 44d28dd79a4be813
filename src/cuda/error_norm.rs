//! The adaptive solver's error norm (`crate::error_norm`) as one launch of
//! `kernels/error_norm.cu`: a block of 256 threads per sample.

use super::launch::{check_batch, suffix, Dim3, KernelArg, Launcher};
use crate::error::Result;
use crate::error_norm::{ErrorNorm, LANES};

pub fn launch(l: &dyn Launcher, e: &ErrorNorm) -> Result<()> {
    e.validate()?;
    let batch = e.batch();
    check_batch(batch)?;
    let t = suffix(e.hi.dtype, "x")?;
    l.launch(
        &format!("rdiff_error_norm_{t}"),
        Dim3::x(batch as u32),
        Dim3::x(LANES as u32),
        0,
        &[
            KernelArg::Ptr(e.hi.ptr),
            KernelArg::Ptr(e.lo.ptr),
            KernelArg::Ptr(e.prev.ptr),
            KernelArg::I64((e.hi.numel / batch) as i64),
            KernelArg::F64(e.atol),
            KernelArg::F64(e.rtol),
            KernelArg::Ptr(e.out.ptr),
        ],
    )
}
