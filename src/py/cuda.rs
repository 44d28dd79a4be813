//! CUDA bindings for tests and tools: NVRTC compiles (`_cuda_compile`, `_cuda_kernels`) and
//! the emulated launcher on CPU buffers (`_emulated_*`), which runs the very kernel sources
//! and the launch code (`cuda::ops`) the GPU path uses.

use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::dpm_solver::{cuda_buffers, validate_step};
use super::tensor::{Device, TensorRef};
use crate::cuda::emulate::{registered_kernels, EmulatedLauncher};
use crate::cuda::kernels::SOURCES;
use crate::cuda::ops::{self, Thresholding};
use crate::schedule::dpm_solver::StepCoefficients;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_compile, m)?)?;
    m.add_function(wrap_pyfunction!(emulated_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(emulated_dpm_step, m)?)?;
    m.add_function(wrap_pyfunction!(emulated_threshold, m)?)?;
    m.add_function(wrap_pyfunction!(emulated_add_noise, m)?)?;
    m.add_function(wrap_pyfunction!(emulated_gamma, m)?)?;
    m.add_function(wrap_pyfunction!(set_emulated_backend, m)?)?;
    Ok(())
}

/// 0: CPU tensors run the CPU loops; n > 0: the scheduler steps that have a kernel run it on
/// the emulated launcher with at most n blocks (a private switch for tests, see
/// `rdiff._cuda_testing.emulated_backend`).
static EMULATED_BACKEND: AtomicU32 = AtomicU32::new(0);

/// `Some(max_blocks)` while the emulated backend is switched on.
pub(crate) fn emulated_backend() -> Option<u32> {
    match EMULATED_BACKEND.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// Routes CPU tensors of the scheduler steps that have a kernel (the multistep DPM-Solver
/// step, the Analytic-DPM step) through the emulated launcher with at most `max_blocks`
/// blocks, or back to the CPU loops with None. Returns the previous setting. Process-wide.
#[pyfunction(name = "_set_emulated_backend")]
#[pyo3(signature = (max_blocks=None))]
fn set_emulated_backend(max_blocks: Option<u32>) -> PyResult<Option<u32>> {
    if max_blocks == Some(0) {
        return Err(PyValueError::new_err("max_blocks: must be ≥ 1 or None"));
    }
    let prev = EMULATED_BACKEND.swap(max_blocks.unwrap_or(0), Ordering::Relaxed);
    Ok((prev != 0).then_some(prev))
}

/// The multistep step on the emulated launcher (for the switch above): thresholding bounds go
/// to a host scratch array, as the real launcher's go to its device scratch.
pub(crate) fn run_emulated_dpm_step(
    py: Python<'_>,
    max_blocks: u32,
    bufs: &ops::DpmStepBuffers,
    co: &StepCoefficients,
    thresholding: Option<(f64, f64)>,
) -> PyResult<()> {
    let mut scratch = vec![0f32; bufs.batch];
    let thr = thresholding.map(|(ratio, max_value)| Thresholding {
        ratio,
        max_value,
        bounds: scratch.as_mut_ptr() as u64,
    });
    py.detach(|| ops::dpm_step(&launcher(max_blocks), bufs, co, thr))?;
    Ok(())
}

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

fn host(ts: &[Option<TensorRef>]) -> PyResult<()> {
    if ts.iter().flatten().any(|t| t.device != Device::Cpu) {
        return Err(PyValueError::new_err(
            "the emulated launcher runs on CPU buffers only",
        ));
    }
    Ok(())
}

fn launcher(max_blocks: u32) -> EmulatedLauncher {
    EmulatedLauncher {
        max_blocks: max_blocks.max(1),
    }
}

/// `_MultistepCore.step` through the CUDA kernels on the emulated launcher: the same buffers
/// (CPU), the step's coefficients (p, q, r, w, a, w0, w1, w2, c) as `coefficients()` returns
/// them, and `thresholding=(ratio, sample_max_value)` or None. `max_blocks` caps the grid so
/// that the kernels' grid-stride loops go round.
#[pyfunction(name = "_emulated_dpm_step")]
#[pyo3(signature = (order, coefficients, mo, x, m1, m2, noise, hist, prev, batch, mo_stride,
    thresholding=None, max_blocks=3))]
#[allow(clippy::too_many_arguments)]
fn emulated_dpm_step(
    py: Python<'_>,
    order: usize,
    coefficients: [f64; 9],
    mo: TensorRef,
    x: TensorRef,
    m1: Option<TensorRef>,
    m2: Option<TensorRef>,
    noise: Option<TensorRef>,
    hist: TensorRef,
    prev: TensorRef,
    batch: usize,
    mo_stride: usize,
    thresholding: Option<(f64, f64)>,
    max_blocks: u32,
) -> PyResult<()> {
    let [p, q, r, w, a, w0, w1, w2, c] = coefficients;
    let co = StepCoefficients {
        p,
        q,
        r,
        w,
        a,
        w0,
        w1,
        w2,
        c,
    };
    if !(1..=3).contains(&order) {
        return Err(PyValueError::new_err(format!(
            "order: 1, 2 or 3, got {order}"
        )));
    }
    let stochastic = noise.is_some() || c != 0.0;
    let v = validate_step(
        order, stochastic, mo, x, m1, m2, noise, hist, prev, batch, mo_stride,
    )?;
    host(&[
        Some(mo),
        Some(x),
        v.m1,
        v.m2,
        v.noise,
        Some(hist),
        Some(prev),
    ])?;
    let bufs = cuda_buffers(mo, mo_stride, x, None, &v, hist, prev, batch)?;
    let mut scratch = vec![0f32; batch];
    let thr = thresholding.map(|(ratio, max_value)| Thresholding {
        ratio,
        max_value,
        bounds: scratch.as_mut_ptr() as u64,
    });
    py.detach(|| ops::dpm_step(&launcher(max_blocks), &bufs, &co, thr))?;
    Ok(())
}

/// The per-sample thresholding bounds s_b = clamp(quantile(|p·x + q·mo|, ratio), 1, max) from
/// the radix-select kernel.
#[pyfunction(name = "_emulated_threshold")]
#[pyo3(signature = (mo, x, batch, mo_stride, p, q, ratio, max_value))]
#[allow(clippy::too_many_arguments)]
fn emulated_threshold(
    py: Python<'_>,
    mo: TensorRef,
    x: TensorRef,
    batch: usize,
    mo_stride: usize,
    p: f64,
    q: f64,
    ratio: f64,
    max_value: f64,
) -> PyResult<Vec<f32>> {
    host(&[Some(mo), Some(x)])?;
    if batch == 0 || x.numel % batch != 0 {
        return Err(PyValueError::new_err(
            "sample: does not split into the batch",
        ));
    }
    let per_sample = x.numel / batch;
    if mo_stride < per_sample {
        return Err(PyValueError::new_err("mo_stride: below the sample size"));
    }
    mo.expect_len_of("model_output", &[batch, mo_stride])?;
    let mut out = vec![0f32; batch];
    let ptr = out.as_mut_ptr() as u64;
    py.detach(|| {
        ops::threshold_bounds(
            &launcher(3),
            mo.buf(),
            mo_stride,
            x.buf(),
            batch,
            per_sample,
            p,
            q,
            ratio,
            max_value,
            ptr,
        )
    })?;
    Ok(out)
}

/// out = α_b·x0 + σ_b·ε (one α, σ per sample).
#[pyfunction(name = "_emulated_add_noise")]
#[pyo3(signature = (x0, eps, alpha, sigma, out, max_blocks=3))]
fn emulated_add_noise(
    py: Python<'_>,
    x0: TensorRef,
    eps: TensorRef,
    alpha: Vec<f32>,
    sigma: Vec<f32>,
    out: TensorRef,
    max_blocks: u32,
) -> PyResult<()> {
    host(&[Some(x0), Some(eps), Some(out)])?;
    let batch = alpha.len();
    if batch == 0 || sigma.len() != batch || x0.numel % batch != 0 {
        return Err(PyValueError::new_err(
            "alpha, sigma: one value per sample of x0",
        ));
    }
    eps.expect_len("noise", x0.numel)?;
    out.expect_len("out", x0.numel)?;
    let per_sample = x0.numel / batch;
    let (a, s) = (alpha.as_ptr() as u64, sigma.as_ptr() as u64);
    py.detach(|| {
        ops::add_noise(
            &launcher(max_blocks),
            x0.buf(),
            eps.buf(),
            a,
            s,
            out.buf(),
            batch,
            per_sample,
        )
    })?;
    Ok(())
}

/// Γ per sample: Σ ε² / d over each of the `batch` samples.
#[pyfunction(name = "_emulated_gamma")]
fn emulated_gamma(py: Python<'_>, eps: TensorRef, batch: usize) -> PyResult<Vec<f32>> {
    host(&[Some(eps)])?;
    // numel 0 would let any batch through, and `out` is sized by the batch.
    if batch == 0 || eps.numel == 0 || eps.numel % batch != 0 {
        return Err(PyValueError::new_err("eps: does not split into the batch"));
    }
    let mut out = vec![0f32; batch];
    let ptr = out.as_mut_ptr() as u64;
    py.detach(|| ops::gamma(&launcher(3), eps.buf(), batch, eps.numel / batch, ptr))?;
    Ok(out)
}
