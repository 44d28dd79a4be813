//! The CUDA tooling rdiff's tests and tools use: NVRTC compiles (`_cuda_compile`,
//! `_cuda_kernels`), the host build's registry (`_emulated_kernels`), the emulated-target
//! switch and its launch counter (`rdiff._cuda_testing`); and the CUDA libraries found in the
//! Python environment (`_register_cuda_libraries`, `_load_cuda_libraries`), loaded on first
//! need.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::cuda::emulate::{launches, registered_kernels};
use crate::cuda::kernels::SOURCES;
use crate::target::set_emulation;

/// The kernel sources rdiff ships (names for `_cuda_compile`).
#[pyfunction(name = "_cuda_kernels")]
fn cuda_kernels() -> Vec<&'static str> {
    SOURCES.iter().map(|s| s.name).collect()
}

/// NVRTC compile of one kernel source for `arch` ("sm_90"): a dict with the CUBIN and PTX
/// bytes, NVRTC's log (ptxas' -v report), the options, and per entry point the registers,
/// spill stores/loads, stack and static shared bytes. Needs NVRTC only (no driver, no GPU).
#[pyfunction(name = "_cuda_compile")]
fn cuda_compile<'py>(py: Python<'py>, kernel: &str, arch: &str) -> PyResult<Bound<'py, PyDict>> {
    #[cfg(feature = "cuda")]
    {
        let c = py.detach(|| crate::cuda::compile::compile(kernel, arch))?;
        let out = PyDict::new(py);
        out.set_item("kernel", c.kernel)?;
        out.set_item("arch", &c.arch)?;
        out.set_item("cubin", PyBytes::new(py, &c.cubin))?;
        out.set_item("ptx", PyBytes::new(py, &c.ptx))?;
        out.set_item("log", &c.log)?;
        out.set_item("options", crate::cuda::compile::options(&c.arch))?;
        let res = PyDict::new(py);
        for (entry, r) in &c.resources {
            let d = PyDict::new(py);
            d.set_item("registers", r.registers)?;
            d.set_item("spill_stores", r.spill_stores)?;
            d.set_item("spill_loads", r.spill_loads)?;
            d.set_item("stack_bytes", r.stack_bytes)?;
            d.set_item("shared_bytes", r.shared_bytes)?;
            res.set_item(entry, d)?;
        }
        out.set_item("resources", res)?;
        Ok(out)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (py, kernel, arch, PyBytes::new, PyDict::new);
        Err(crate::error::RdiffError::CudaUnavailable(
            "rdiff was built without the `cuda` feature".into(),
        )
        .into())
    }
}

/// The entry points the host build of the kernels registered.
#[pyfunction(name = "_emulated_kernels")]
fn emulated_kernels() -> Vec<String> {
    registered_kernels()
}

/// The kernel launches the emulated launcher has run in this process.
#[pyfunction(name = "_emulated_launches")]
fn emulated_launches() -> u64 {
    launches()
}

/// Routes CPU tensors through the CUDA kernels on the emulated launcher with at most
/// `max_blocks` blocks per grid-stride launch, or back to the CPU loops with None. Returns
/// the previous setting. Process-wide; for tests (`rdiff._cuda_testing.emulated_backend`).
#[pyfunction(name = "_set_emulated_backend")]
#[pyo3(signature = (max_blocks=None))]
fn set_emulated_backend(max_blocks: Option<u32>) -> PyResult<Option<u32>> {
    Ok(set_emulation(max_blocks)?)
}

/// Records the CUDA libraries found in the environment: groups of candidate paths in loading
/// order, the first of each group that loads winning. Nothing is loaded until rdiff first
/// needs CUDA (`python/rdiff/_cuda_libs.py`).
#[pyfunction(name = "_register_cuda_libraries")]
fn register_cuda_libraries(groups: Vec<Vec<std::path::PathBuf>>) {
    #[cfg(feature = "cuda")]
    crate::cuda::libraries::register(groups);
    #[cfg(not(feature = "cuda"))]
    let _ = groups;
}

/// Loads the registered libraries now (once per process) and returns the paths loaded.
#[pyfunction(name = "_load_cuda_libraries")]
fn load_cuda_libraries() -> Vec<std::path::PathBuf> {
    #[cfg(feature = "cuda")]
    return crate::cuda::libraries::load().to_vec();
    #[cfg(not(feature = "cuda"))]
    Vec::new()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(register_cuda_libraries, m)?)?;
    m.add_function(wrap_pyfunction!(load_cuda_libraries, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_compile, m)?)?;
    m.add_function(wrap_pyfunction!(emulated_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(emulated_launches, m)?)?;
    m.add_function(wrap_pyfunction!(set_emulated_backend, m)?)?;
    Ok(())
}
