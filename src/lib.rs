//! rdiff: fast diffusion sampling. This file is the `#[pymodule]` and nothing else.

pub mod cpu;
pub mod cuda;
pub mod error;
pub mod py;
pub mod random;
pub mod schedule;
pub mod testing;
pub mod unet;

use pyo3::prelude::*;

#[pymodule]
fn _rdiff(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::errors::register(m)?;
    m.add_function(wrap_pyfunction!(py::backends::backends, m)?)?;
    m.add_class::<py::schedule::PyNoiseSchedule>()?;
    m.add_class::<py::dpm_solver::MultistepCore>()?;
    m.add_class::<py::dpm_singlestep::SinglestepCore>()?;
    m.add_function(wrap_pyfunction!(
        py::dpm_singlestep::singlestep_order_list,
        m
    )?)?;
    py::testing::register(m)?;
    py::cuda::register(m)?;
    py::analytic::register(m)?;
    m.add_function(wrap_pyfunction!(py::spacing::diffusers_schedule, m)?)?;
    py::ddim::register(m)?;
    py::sampling::register(m)?;
    py::random::register(m)?;
    m.add_class::<py::unet::PyUNet2D>()?;
    m.add_class::<py::unet_cuda::PyCudaUNet2D>()?;
    Ok(())
}
