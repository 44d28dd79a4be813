//! `rdiff.backends()`: which backends work here, and why not.

use pyo3::prelude::*;
use pyo3::types::PyDict;

#[pyfunction]
pub fn backends(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    let cpu = PyDict::new(py);
    cpu.set_item("available", true)?;
    cpu.set_item("threads", rayon::current_num_threads())?;
    cpu.set_item("simd", crate::cpu::peak::simd_level())?;
    // The kernel of `compute_dtype="bfloat16"`'s products: "amx" or "portable".
    cpu.set_item("bf16_kernel", crate::cpu::bf16::kernel_name())?;
    out.set_item("cpu", cpu)?;
    let cuda = PyDict::new(py);
    match crate::cuda::availability() {
        Ok(info) => {
            cuda.set_item("available", true)?;
            cuda.set_item("devices", info.devices)?;
            cuda.set_item("nvrtc_version", info.nvrtc_version)?;
            cuda.set_item("gemm", info.gemm)?;
        }
        Err(reason) => {
            cuda.set_item("available", false)?;
            cuda.set_item("reason", reason)?;
        }
    }
    out.set_item("cuda", cuda)?;
    Ok(out)
}

/// The CPU's measured float32 FMA peak in GFLOP/s on all of rayon's threads (the benchmarks'
/// yardstick), taking about `seconds`.
#[pyfunction]
#[pyo3(signature = (seconds=0.5))]
pub fn fma_peak_gflops(py: Python<'_>, seconds: f64) -> PyResult<f64> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 60.0) {
        return Err(PyErr::from(crate::error::RdiffError::Value(format!(
            "seconds: must lie in (0, 60], got {seconds}"
        ))));
    }
    Ok(py.detach(|| crate::cpu::peak::fma_peak_gflops(seconds)))
}
