//! A GEMM in cuBLAS's column-major terms, and how a strided operand maps onto them: shared
//! by the cuBLAS call (`cublas`) and the emulated launcher's CPU stand-in for it, so the test
//! suite covers the mapping that the real device relies on.

use crate::error::RdiffError;
use crate::unet::weights::ComputeDtype;

/// A strided-batched SGEMM in cuBLAS's column-major terms:
/// `C[z] = alpha·op(A[z])·op(B[z]) + beta·C[z]`, C `m×n` with leading dimension `ldc`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColumnMajorGemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub a: u64,
    pub lda: i32,
    pub stride_a: i64,
    pub b: u64,
    pub ldb: i32,
    pub stride_b: i64,
    pub c: u64,
    pub ldc: i32,
    pub stride_c: i64,
    pub batch: i32,
    pub alpha: f32,
    pub beta: f32,
    /// The math: f32, or bf16 or f16 tensor-core math (operands rounded, sums in f32).
    pub compute: ComputeDtype,
    /// A and B stored in `compute`'s 16-bit type (C stays f32).
    pub half_operands: bool,
}

/// 16-bit operands name their type by the math (bf16 or f16); f32 and tf32 math have none.
pub fn f32_math_on_half_operands() -> RdiffError {
    RdiffError::Cuda("gemm: 16-bit operands need bf16 or f16 math".into())
}

/// How cuBLAS reads a logical `rows×cols` matrix whose element (r, c) is at `r·rs + c·cs`:
/// `(transposed, leading dimension)`, or None when neither stride is 1 (no cuBLAS form).
pub fn operand(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<(bool, i32)> {
    // Stored column-major (rows×cols): unit row stride, columns `cs` apart. A single column's
    // leading dimension is free (cuBLAS only asks that it cover the rows).
    if rs == 1 || rows == 1 {
        let ld = if cols == 1 { rows.max(1) } else { cs };
        if ld >= rows.max(1) {
            return i32::try_from(ld).ok().map(|ld| (false, ld));
        }
    }
    // Stored row-major: the transpose of a column-major cols×rows matrix.
    if cs == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { rs };
        if ld >= cols.max(1) {
            return i32::try_from(ld).ok().map(|ld| (true, ld));
        }
    }
    None
}
