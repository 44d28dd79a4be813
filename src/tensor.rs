//! A caller's tensor as the core sees it: an address, a dtype, a device and a shape, checked
//! once when it is made (`py::tensor` makes them from numpy arrays, DLPack capsules and the
//! array interfaces). The memory stays the caller's; a `Tensor` only describes it.

use crate::dtype::DType;
use crate::error::{RdiffError, Result};

/// Where a tensor's memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A contiguous (C-order) tensor of `shape` at `ptr`: a host address for the CPU, a device
/// address for CUDA. `numel` elements from `ptr` are the caller's for the call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub ptr: u64,
    pub dtype: DType,
    pub device: Device,
    pub shape: Vec<usize>,
    pub numel: usize,
}

impl Tensor {
    /// Checks what makes the description safe to read `numel` elements from: a C-contiguous
    /// layout (`strides` in elements; None means contiguous), a non-null pointer aligned for
    /// the dtype, and a byte length that fits the address space without wrapping. `what`
    /// names the argument in the messages.
    pub fn new(
        what: &str,
        ptr: u64,
        dtype: DType,
        device: Device,
        shape: Vec<usize>,
        strides: Option<&[i64]>,
    ) -> Result<Self> {
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| RdiffError::Value(format!("{what}: shape {shape:?} overflows")))?;
        if let Some(st) = strides {
            if !is_contiguous(&shape, st) {
                return Err(RdiffError::Value(format!(
                    "{what}: a non-contiguous tensor (shape {shape:?}, strides {st:?}); \
                     pass a contiguous one"
                )));
            }
        }
        if numel > 0 && ptr == 0 {
            return Err(RdiffError::Value(format!(
                "{what}: tensor has a null data pointer"
            )));
        }
        if !ptr.is_multiple_of(dtype.size() as u64) {
            return Err(RdiffError::Value(format!(
                "{what}: tensor data pointer {ptr:#x} is not aligned for {}",
                dtype.name()
            )));
        }
        // A slice may span at most isize::MAX bytes and must not wrap the address space.
        let fits = numel
            .checked_mul(dtype.size())
            .filter(|&bytes| bytes <= isize::MAX as usize)
            .and_then(|bytes| ptr.checked_add(bytes as u64));
        if fits.is_none() {
            return Err(RdiffError::Value(format!(
                "{what}: tensor of {numel} {} elements at {ptr:#x} does not fit in memory",
                dtype.name()
            )));
        }
        Ok(Self {
            ptr,
            dtype,
            device,
            shape,
            numel,
        })
    }

    /// The leading dimension (1 for a 0-d tensor).
    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    pub fn expect_dtype(&self, what: &str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(RdiffError::Type(format!(
                "{what}: expected dtype {}, got {}",
                dtype.name(),
                self.dtype.name()
            )));
        }
        Ok(())
    }

    pub fn expect_numel(&self, what: &str, numel: usize) -> Result<()> {
        if self.numel != numel {
            return Err(RdiffError::Value(format!(
                "{what}: expected {numel} elements, got {}",
                self.numel
            )));
        }
        Ok(())
    }

    /// Whether the two tensors' bytes overlap.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        let (sa, sb) = (
            (self.numel * self.dtype.size()) as u64,
            (other.numel * other.dtype.size()) as u64,
        );
        self.device == other.device
            && sa > 0
            && sb > 0
            && self.ptr < other.ptr + sb
            && other.ptr < self.ptr + sa
    }

    /// A shared slice over the tensor's memory.
    ///
    /// # Safety
    /// The tensor must be a live CPU buffer of element type `T` that nobody writes during the
    /// borrow; the Python layer keeps it alive for the call.
    pub unsafe fn slice<'a, T: Copy>(&self) -> &'a [T] {
        self.check_host::<T>("slice");
        if self.numel == 0 {
            return &[];
        }
        // SAFETY: non-null, aligned and in range (checked in `new`), on the host with T's size
        // (checked above); liveness and the absence of writers are the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr as *const T, self.numel) }
    }

    /// An exclusive slice over the tensor's memory.
    ///
    /// # Safety
    /// As for `slice`, and nothing else may read or write the buffer during the borrow (the
    /// passes check that outputs overlap no input).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<'a, T: Copy>(&self) -> &'a mut [T] {
        self.check_host::<T>("slice_mut");
        if self.numel == 0 {
            return &mut [];
        }
        // SAFETY: as in `slice`; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut T, self.numel) }
    }

    // Checked in release builds too: a wrong element type would read past the buffer.
    fn check_host<T>(&self, what: &str) {
        assert_eq!(
            std::mem::size_of::<T>(),
            self.dtype.size(),
            "Tensor::{what}: element type"
        );
        assert_eq!(self.device, Device::Cpu, "Tensor::{what}: a CUDA buffer");
    }
}

/// C-contiguity of `shape` with element `strides` (dimensions of size 1 may have any stride).
pub fn is_contiguous(shape: &[usize], strides: &[i64]) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    if shape.contains(&0) {
        return true;
    }
    let mut expect = 1i64;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d as i64);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity_ignores_unit_dimensions() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[2, 1, 3], &[3, 99, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(is_contiguous(&[0, 3], &[7, 7]));
    }

    #[test]
    fn refuses_what_cannot_be_read() {
        let t =
            |ptr, shape: Vec<usize>| Tensor::new("x", ptr, DType::F32, Device::Cpu, shape, None);
        assert!(t(0, vec![0]).is_ok());
        assert!(t(0, vec![3]).is_err());
        assert!(t(2, vec![3]).is_err());
        assert!(t(u64::MAX - 7, vec![4]).is_err());
        assert!(t(16, vec![usize::MAX, 2]).is_err());
    }
}
