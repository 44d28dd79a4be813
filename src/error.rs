//! One error enum for the whole crate, mapped to precise Python exceptions in `py::errors`.

use thiserror::Error;

/// Everything that can go wrong below the Python layer.
#[derive(Debug, Error)]
pub enum RdiffError {
    /// A bad argument value: maps to `ValueError`.
    #[error("{0}")]
    Value(String),
    /// A bad argument type or dtype: maps to `TypeError`.
    #[error("{0}")]
    Type(String),
    /// The CUDA backend cannot run here (no driver, no NVRTC): `rdiff.CudaUnavailableError`.
    #[error("{0}")]
    CudaUnavailable(String),
    /// A CUDA call failed at run time: `rdiff.CudaError`.
    #[error("{0}")]
    Cuda(String),
    /// A file could not be read or is malformed: `rdiff.WeightsError` / `OSError`.
    #[error("{0}")]
    Io(String),
    /// A stateful object used from two threads at once: `rdiff.ConcurrentUseError`.
    #[error("{0}")]
    ConcurrentUse(String),
    /// Host memory for an activation could not be had: `MemoryError`.
    #[error("{0}")]
    Memory(String),
}

pub type Result<T> = std::result::Result<T, RdiffError>;

/// `Err(RdiffError::Value(..))` with a formatted message, for argument checks.
#[macro_export]
macro_rules! value_err {
    ($($arg:tt)*) => { Err($crate::error::RdiffError::Value(format!($($arg)*))) };
}

/// `Err(RdiffError::Type(..))` with a formatted message.
#[macro_export]
macro_rules! type_err {
    ($($arg:tt)*) => { Err($crate::error::RdiffError::Type(format!($($arg)*))) };
}
