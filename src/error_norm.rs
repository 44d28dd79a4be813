//! The adaptive DPM-Solver's error norm (`rdiff.sample(method="adaptive")`): per sample,
//! √(mean(((hi − lo) / max(atol, rtol·max(|lo|, |prev|)))²)) in f64, written to the caller's
//! `batch` f64 values. `cpu::error_norm` and `kernels/error_norm.cu` sum in the same order.

use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::value_err;

/// Partial sums per sample (the kernel's block size).
pub const LANES: usize = 256;

#[derive(Clone, Debug)]
pub struct ErrorNorm {
    pub hi: Tensor,
    pub lo: Tensor,
    pub prev: Tensor,
    pub atol: f64,
    pub rtol: f64,
    pub out: Tensor,
}

impl ErrorNorm {
    pub fn batch(&self) -> usize {
        self.hi.batch()
    }

    pub fn tensors(&self) -> [&Tensor; 4] {
        [&self.hi, &self.lo, &self.prev, &self.out]
    }

    pub fn validate(&self) -> Result<()> {
        let (batch, n) = (self.batch(), self.hi.numel);
        if batch == 0 || n % batch != 0 {
            return value_err!("x: {n} elements do not split into a batch of {batch}");
        }
        for (t, what) in [(&self.lo, "x_lower"), (&self.prev, "x_prev")] {
            t.expect_numel(what, n)?;
            t.expect_dtype(what, self.hi.dtype)?;
        }
        self.out.expect_dtype("out", DType::F64)?;
        if self.out.numel < batch {
            return value_err!("out: {} values for a batch of {batch}", self.out.numel);
        }
        if self.tensors()[..3].iter().any(|t| t.overlaps(&self.out)) {
            return value_err!("out: overlaps an input");
        }
        Ok(())
    }
}
