//! Caller-owned tensors as the Python layer describes them: `(data_ptr, numel, dtype, device)`.
//!
//! `python/rdiff/_tensor.py` builds the tuple from a numpy array or a torch tensor after
//! checking that it is contiguous, and keeps the object alive for the whole call. Here we check
//! what can be checked (null, alignment, dtype, device, length) before making a slice.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::cpu::dtype::{DType, Elem};
use crate::cuda::ops::Buf;

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

#[derive(Clone, Copy, Debug)]
pub struct TensorRef {
    pub ptr: usize,
    pub numel: usize,
    pub dtype: DType,
    pub device: Device,
}

impl<'a, 'py> FromPyObject<'a, 'py> for TensorRef {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let (ptr, numel, dtype, device, index): (usize, usize, String, String, i32) =
            ob.extract()?;
        let dtype = DType::parse(&dtype).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "unsupported dtype {dtype}; expected float32, float16, bfloat16 or float64"
            ))
        })?;
        let device = match device.as_str() {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(index),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unsupported device {other:?}; expected cpu or cuda"
                )))
            }
        };
        if numel > 0 && ptr == 0 {
            return Err(PyValueError::new_err("tensor has a null data pointer"));
        }
        if ptr % dtype.size() != 0 {
            return Err(PyValueError::new_err(format!(
                "tensor data pointer {ptr:#x} is not aligned for {}",
                dtype.name()
            )));
        }
        // A slice may span at most isize::MAX bytes and must not wrap the address space.
        let fits = numel
            .checked_mul(dtype.size())
            .filter(|&bytes| bytes <= isize::MAX as usize)
            .and_then(|bytes| ptr.checked_add(bytes));
        if fits.is_none() {
            return Err(PyValueError::new_err(format!(
                "tensor of {numel} {} elements at {ptr:#x} does not fit in memory",
                dtype.name()
            )));
        }
        Ok(Self {
            ptr,
            numel,
            dtype,
            device,
        })
    }
}

impl TensorRef {
    /// Checks the element count against what the operation needs; `what` names the argument.
    pub fn expect_len(&self, what: &str, numel: usize) -> PyResult<()> {
        if self.numel != numel {
            return Err(PyValueError::new_err(format!(
                "{what}: expected {numel} elements, got {}",
                self.numel
            )));
        }
        Ok(())
    }

    /// The tensor as a kernel buffer: a device address, or a host one under the emulator.
    pub fn buf(self) -> Buf {
        Buf {
            ptr: self.ptr as u64,
            dtype: self.dtype,
        }
    }

    /// `expect_len` for a length given as a product of caller-supplied factors (batch, row
    /// stride, ...): a product past `usize` is refused instead of wrapping round to a small
    /// number that a short buffer could match.
    pub fn expect_len_of(&self, what: &str, factors: &[usize]) -> PyResult<()> {
        let numel = factors
            .iter()
            .try_fold(1usize, |acc, &f| acc.checked_mul(f))
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "{what}: a layout of {factors:?} elements does not fit in memory"
                ))
            })?;
        self.expect_len(what, numel)
    }

    pub fn expect_dtype(&self, what: &str, dtype: DType) -> PyResult<()> {
        if self.dtype != dtype {
            return Err(PyTypeError::new_err(format!(
                "{what}: expected dtype {}, got {}",
                dtype.name(),
                self.dtype.name()
            )));
        }
        Ok(())
    }

    /// A shared slice over the tensor's memory.
    ///
    /// # Safety
    /// The tensor must be a live, contiguous CPU buffer of `numel` elements of type `T` that
    /// nobody writes during the borrow; the Python layer guarantees this for the call.
    pub unsafe fn slice<'a, T: Elem>(&self) -> &'a [T] {
        // Checked in release builds too: a wrong element type would read past the buffer.
        assert_eq!(T::DTYPE, self.dtype, "TensorRef::slice: element type");
        assert_eq!(self.device, Device::Cpu, "TensorRef::slice: a CUDA buffer");
        if self.numel == 0 {
            return &[];
        }
        // SAFETY: non-null, aligned for T and at most isize::MAX bytes without wrapping
        // (checked in `extract`), T is the tensor's element type and the buffer is on the host
        // (asserted above); that `numel` elements are live, contiguous and not written during
        // the borrow is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr as *const T, self.numel) }
    }

    /// An exclusive slice over the tensor's memory.
    ///
    /// # Safety
    /// As for `slice`, and the buffer must not alias any other buffer of the call (the Python
    /// layer allocates outputs fresh).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<'a, T: Elem>(&self) -> &'a mut [T] {
        assert_eq!(T::DTYPE, self.dtype, "TensorRef::slice_mut: element type");
        assert_eq!(
            self.device,
            Device::Cpu,
            "TensorRef::slice_mut: a CUDA buffer"
        );
        if self.numel == 0 {
            return &mut [];
        }
        // SAFETY: as in `slice`; that nothing else reads or writes the buffer during the
        // borrow is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut T, self.numel) }
    }
}

/// The error for a step whose tensors are not all on one device.
pub fn mixed_devices() -> PyErr {
    PyValueError::new_err(
        "step: every tensor must be on the same device (one CPU or one CUDA device)",
    )
}
