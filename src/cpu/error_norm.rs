//! The adaptive solver's error norm on the CPU: for each sample,
//! √(mean(((hi − lo) / max(atol, rtol·max(|lo|, |prev|)))²)) in f64. The sum runs in the
//! order `kernels/error_norm.cu` sums (256 strided partial sums, then a fixed tree), so the
//! emulated launcher and a GPU give the same bits as this loop.

use rayon::prelude::*;

use crate::error::Result;
use crate::error_norm::{ErrorNorm, LANES};
use crate::with_elem;

/// Writes each sample's norm into `out`.
pub fn run(e: &ErrorNorm) -> Result<()> {
    e.validate()?;
    let batch = e.batch();
    let ps = e.hi.numel / batch.max(1);
    // SAFETY: validated lengths and dtypes; the caller keeps the buffers alive for the call
    // and `out` is a separate allocation of its own.
    let out = unsafe { &mut e.out.slice_mut::<f64>()[..batch] };
    with_elem!(e.hi.dtype, T, {
        // SAFETY: as above.
        let (h, l, p) = unsafe { (e.hi.slice::<T>(), e.lo.slice::<T>(), e.prev.slice::<T>()) };
        out.par_iter_mut().enumerate().for_each(|(b, o)| {
            let r = b * ps..(b + 1) * ps;
            *o = norm(&h[r.clone()], &l[r.clone()], &p[r], e.atol, e.rtol);
        });
    });
    Ok(())
}

/// One sample's norm, summed as the kernel sums.
fn norm<T: ToF64>(h: &[T], l: &[T], p: &[T], atol: f64, rtol: f64) -> f64 {
    let mut part = [0f64; LANES];
    for (t, acc) in part.iter_mut().enumerate() {
        let mut i = t;
        while i < h.len() {
            let (hv, lv, pv) = (h[i].to_f64(), l[i].to_f64(), p[i].to_f64());
            let delta = atol.max(rtol * lv.abs().max(pv.abs()));
            let v = (hv - lv) / delta;
            *acc += v * v;
            i += LANES;
        }
    }
    let mut s = LANES / 2;
    while s > 0 {
        for t in 0..s {
            part[t] += part[t + s];
        }
        s /= 2;
    }
    (part[0] / h.len().max(1) as f64).sqrt()
}

/// An element as f64 (exact for every dtype rdiff takes).
pub trait ToF64: Copy {
    fn to_f64(self) -> f64;
}
impl ToF64 for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl ToF64 for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}
impl ToF64 for half::f16 {
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}
impl ToF64 for half::bf16 {
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_sample_rms() {
        let hi = [1.0f64, 1.0, 0.0, 0.0];
        let lo = [0.0f64; 4];
        assert!((norm(&hi[..2], &lo[..2], &lo[..2], 0.5, 0.0) - 2.0).abs() < 1e-12);
        assert_eq!(norm(&hi[2..], &lo[2..], &lo[2..], 0.5, 0.0), 0.0);
    }
}
