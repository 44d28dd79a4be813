//! rdiff: fast diffusion sampling. This file is the `#[pymodule]` and nothing else; the map of
//! the crate is `docs/architecture.md`.

pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod error_norm;
pub mod lincomb;
pub mod py;
pub mod random;
pub mod schedule;
pub mod step;
pub mod target;
pub mod tensor;
pub mod testing;
pub mod unet;

use pyo3::prelude::*;

#[pymodule]
fn _rdiff(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::errors::register(m)?;
    m.add_function(wrap_pyfunction!(py::backends::backends, m)?)?;
    m.add_function(wrap_pyfunction!(py::backends::fma_peak_gflops, m)?)?;
    m.add_class::<py::schedule::PyNoiseSchedule>()?;
    m.add_function(wrap_pyfunction!(py::spacing::diffusers_schedule, m)?)?;
    m.add_function(wrap_pyfunction!(py::spacing::sigma_to_t_py, m)?)?;
    m.add_function(wrap_pyfunction!(py::spacing::diffusers_karras_py, m)?)?;
    m.add_class::<py::dpm_multistep::PyDpmMultistep>()?;
    m.add_class::<py::dpm_singlestep::PyDpmSinglestep>()?;
    m.add_class::<py::unipc::PyUniPc>()?;
    m.add_class::<py::dpm_solver_v3::PyDpmSolverV3>()?;
    m.add_function(wrap_pyfunction!(
        py::dpm_singlestep::singlestep_order_list,
        m
    )?)?;
    m.add_class::<py::ddim::PyDdim>()?;
    m.add_class::<py::euler::PyEuler>()?;
    m.add_class::<py::lms::PyLms>()?;
    m.add_function(wrap_pyfunction!(py::euler::euler_schedule, m)?)?;
    m.add_function(wrap_pyfunction!(py::euler::euler_schedule_from_sigmas, m)?)?;
    m.add_function(wrap_pyfunction!(py::euler::flow_match_training_sigmas, m)?)?;
    m.add_function(wrap_pyfunction!(py::euler::flow_match_schedule, m)?)?;
    m.add_function(wrap_pyfunction!(py::ddim::ddim_timesteps, m)?)?;
    m.add_class::<py::analytic_dpm::PyAnalyticDpm>()?;
    m.add_function(wrap_pyfunction!(py::analytic::gamma_batch_sums, m)?)?;
    m.add_function(wrap_pyfunction!(py::analytic::optimal_trajectory_py, m)?)?;
    m.add_function(wrap_pyfunction!(py::analytic::trajectory_cost_py, m)?)?;
    m.add_function(wrap_pyfunction!(py::lincomb::lincomb, m)?)?;
    m.add_function(wrap_pyfunction!(py::lincomb::error_norm, m)?)?;
    py::sampling::register(m)?;
    m.add_function(wrap_pyfunction!(py::random::philox_normal_fill, m)?)?;
    m.add_function(wrap_pyfunction!(py::random::torch_normal_fill, m)?)?;
    py::testing::register(m)?;
    py::cuda::register(m)?;
    m.add_class::<py::unet::PyUNet2D>()?;
    m.add_function(wrap_pyfunction!(py::unet::unet_attention, m)?)?;
    Ok(())
}
