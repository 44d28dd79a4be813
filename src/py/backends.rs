//! `rdiff.backends()`: which backends work here, and why not.

use pyo3::prelude::*;
use pyo3::types::PyDict;

#[pyfunction]
pub fn backends(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    let cpu = PyDict::new(py);
    cpu.set_item("available", true)?;
    cpu.set_item("threads", rayon::current_num_threads())?;
    out.set_item("cpu", cpu)?;
    let cuda = PyDict::new(py);
    match crate::cuda::availability() {
        Ok(info) => {
            cuda.set_item("available", true)?;
            cuda.set_item("devices", info.devices)?;
            cuda.set_item("nvrtc_version", info.nvrtc_version)?;
        }
        Err(reason) => {
            cuda.set_item("available", false)?;
            cuda.set_item("reason", reason)?;
        }
    }
    out.set_item("cuda", cuda)?;
    Ok(out)
}
