//! The Python side of `RdiffError`: each variant maps to one precise exception class.

use pyo3::create_exception;
use pyo3::exceptions::{PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::RdiffError;

create_exception!(
    _rdiff,
    RdiffError_,
    PyRuntimeError,
    "Base class of rdiff's backend errors."
);
create_exception!(
    _rdiff,
    CudaUnavailableError,
    RdiffError_,
    "The CUDA backend cannot run here: no driver, no GPU or no NVRTC library."
);
create_exception!(
    _rdiff,
    CudaError,
    RdiffError_,
    "A CUDA call (compile, load or launch) failed."
);
create_exception!(
    _rdiff,
    ConcurrentUseError,
    RdiffError_,
    "A stateful object (a scheduler) was used from two threads at once; give each thread its own."
);
create_exception!(
    _rdiff,
    WeightsError,
    PyOSError,
    "A weights, config or statistics file is missing, truncated or malformed."
);

impl From<RdiffError> for PyErr {
    fn from(e: RdiffError) -> PyErr {
        match e {
            RdiffError::Value(m) => PyValueError::new_err(m),
            RdiffError::Type(m) => PyTypeError::new_err(m),
            RdiffError::CudaUnavailable(m) => CudaUnavailableError::new_err(m),
            RdiffError::Cuda(m) => CudaError::new_err(m),
            RdiffError::Io(m) => WeightsError::new_err(m),
            RdiffError::ConcurrentUse(m) => ConcurrentUseError::new_err(m),
            RdiffError::Memory(m) => PyMemoryError::new_err(m),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RdiffError", py.get_type::<RdiffError_>())?;
    m.add(
        "CudaUnavailableError",
        py.get_type::<CudaUnavailableError>(),
    )?;
    m.add("CudaError", py.get_type::<CudaError>())?;
    m.add("ConcurrentUseError", py.get_type::<ConcurrentUseError>())?;
    m.add("WeightsError", py.get_type::<WeightsError>())?;
    Ok(())
}
