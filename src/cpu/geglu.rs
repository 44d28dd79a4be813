//! GEGLU, the transformer feed-forward's gate, on the internal `[c][n]` layout: the projection
//! is `[2·inner][n]`, its first `inner` rows the values and the rest the gates (diffusers'
//! `hidden_states.chunk(2, dim=-1)`), and `out[i][j] = x[i][j] · GELU(x[inner + i][j])`
//! with the exact (erf) GELU.

use rayon::prelude::*;

use super::vecmath::gelu_f32;
use crate::simd_dispatch;

#[inline(always)]
fn gate_kernel(value: &[f32], gate: &[f32], out: &mut [f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
        *o = v * gelu_f32(g);
    }
}

simd_dispatch!(fn gate_row(value: &[f32], gate: &[f32], out: &mut [f32]) => gate_kernel);

/// `out` (`[inner][n]`) from `x` (`[2·inner][n]`).
pub fn geglu(x: &[f32], inner: usize, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), 2 * inner * n, "GEGLU input size");
    assert_eq!(out.len(), inner * n, "GEGLU output size");
    let (values, gates) = x.split_at(inner * n);
    // Chunks of a few thousand elements: enough per task, enough tasks for every thread.
    const CHUNK: usize = 4096;
    out.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .zip(gates.par_chunks(CHUNK))
        .for_each(|((o, v), g)| gate_row(v, g, o));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_values_with_gelu() {
        let (inner, n) = (3, 5);
        let x: Vec<f32> = (0..2 * inner * n).map(|i| i as f32 * 0.37 - 4.0).collect();
        let mut out = vec![0.0; inner * n];
        geglu(&x, inner, n, &mut out);
        for i in 0..inner * n {
            assert_eq!(out[i], x[i] * gelu_f32(x[inner * n + i]));
        }
    }
}
