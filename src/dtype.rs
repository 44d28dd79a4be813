//! The element types rdiff reads and writes, their bulk conversion to and from the arithmetic
//! type, and that arithmetic type itself.
//!
//! Loops work on short chunks: each input chunk is widened to a scratch array of the arithmetic
//! type [`Acc`] with a bulk conversion (SIMD in `half` for f16/bf16), the arithmetic runs there,
//! and results are narrowed back in bulk. The arithmetic is f32, or f64 when every buffer of
//! a pass is f64 (so float64 callers get float64 answers); one code path serves every dtype.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// The dtypes of the tensors rdiff accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
}

impl DType {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(Self::F32),
            "float16" => Some(Self::F16),
            "bfloat16" => Some(Self::BF16),
            "float64" => Some(Self::F64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::F64 => "float64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 => 8,
        }
    }
}

/// An element type with bulk conversions to and from f32 (`src` and `dst` of equal length).
pub trait Elem: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn load(src: &[Self], dst: &mut [f32]);
    fn store(src: &[f32], dst: &mut [Self]);
    /// The slice itself when the type is f32, so loops can skip the scratch copy.
    fn as_f32(_s: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_s: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    fn load(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl Elem for f64 {
    const DTYPE: DType = DType::F64;
    fn load(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s as f32;
        }
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s as f64;
        }
    }
}

impl Elem for f16 {
    const DTYPE: DType = DType::F16;
    fn load(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

// bf16 is the top half of an f32, so both directions are integer bit operations that the
// compiler vectorises; `half`'s slice conversion does them one element at a time.
impl Elem for bf16 {
    const DTYPE: DType = DType::BF16;
    fn load(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            let bits = s.to_bits();
            // Round to nearest, ties to even; NaN stays a (quiet) NaN. Both values are
            // computed and one selected, so the loop vectorises.
            let even = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
            let quiet_nan = (bits >> 16) | 0x40;
            let rounded = if s.is_nan() { quiet_nan } else { even };
            *d = bf16::from_bits(rounded as u16);
        }
    }
}

/// The arithmetic type of a pass: f32, or f64 for all-f64 passes on the CPU.
pub trait Acc:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + 'static
{
    const DTYPE: DType;
    fn of(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    /// self·a + b with one rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn total_cmp(&self, other: &Self) -> std::cmp::Ordering;
}

macro_rules! acc_impl {
    ($t:ty, $d:expr) => {
        impl Acc for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn of(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            fn total_cmp(&self, other: &Self) -> std::cmp::Ordering {
                <$t>::total_cmp(self, other)
            }
        }
    };
}
acc_impl!(f32, DType::F32);
acc_impl!(f64, DType::F64);

/// An element read and written in arithmetic type `A` (f32 for every dtype; f64 for f64).
pub trait Load<A: Acc>: Copy + Send + Sync + 'static {
    fn widen(src: &[Self], dst: &mut [A]);
    fn narrow(src: &[A], dst: &mut [Self]);
    /// The slice itself when it already is of type `A` (no scratch copy needed).
    fn as_acc(_s: &[Self]) -> Option<&[A]> {
        None
    }
    fn as_acc_mut(_s: &mut [Self]) -> Option<&mut [A]> {
        None
    }
}

impl<E: Elem> Load<f32> for E {
    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        E::load(src, dst)
    }
    #[inline(always)]
    fn narrow(src: &[f32], dst: &mut [Self]) {
        E::store(src, dst)
    }
    fn as_acc(s: &[Self]) -> Option<&[f32]> {
        E::as_f32(s)
    }
    fn as_acc_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        E::as_f32_mut(s)
    }
}

impl Load<f64> for f64 {
    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f64]) {
        dst.copy_from_slice(src)
    }
    #[inline(always)]
    fn narrow(src: &[f64], dst: &mut [Self]) {
        dst.copy_from_slice(src)
    }
    fn as_acc(s: &[Self]) -> Option<&[f64]> {
        Some(s)
    }
    fn as_acc_mut(s: &mut [Self]) -> Option<&mut [f64]> {
        Some(s)
    }
}

/// Calls `$body` with the type alias `$t` bound to the Rust type of a runtime `DType`.
#[macro_export]
macro_rules! with_elem {
    ($dtype:expr, $t:ident, $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $t = half::f16;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $t = f64;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        let xs: Vec<f32> = (0..4096)
            .map(|k| {
                f32::from_bits(0x3f80_0000u32.wrapping_add(k * 0x1_0007))
                    * if k % 2 == 0 { 1.0 } else { -3.7 }
            })
            .chain([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 1e-40])
            .collect();
        let mut ours = vec![bf16::ZERO; xs.len()];
        bf16::store(&xs, &mut ours);
        for (x, o) in xs.iter().zip(&ours) {
            assert_eq!(o.to_bits(), bf16::from_f32(*x).to_bits(), "{x}");
        }
        let mut nan = [bf16::ZERO];
        bf16::store(&[f32::NAN], &mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn round_trips() {
        let xs = [0.0f32, 1.0, -2.5, 65504.0, 1e-3];
        for_each(&xs);
        fn for_each(xs: &[f32]) {
            let mut h = vec![f16::ZERO; xs.len()];
            f16::store(xs, &mut h);
            let mut back = vec![0.0; xs.len()];
            f16::load(&h, &mut back);
            for (a, b) in xs.iter().zip(&back) {
                assert!((a - b).abs() <= a.abs() * 1e-3);
            }
            let mut b16 = vec![bf16::ZERO; xs.len()];
            bf16::store(xs, &mut b16);
            bf16::load(&b16, &mut back);
            for (a, b) in xs.iter().zip(&back) {
                assert!((a - b).abs() <= a.abs() * 1e-2);
            }
        }
    }
}
