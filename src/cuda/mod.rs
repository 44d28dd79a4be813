//! The CUDA backend: driver and NVRTC loaded at run time through cudarc.
//!
//! cudarc's dynamic loader panics when a library is absent, so every entry point first asks
//! `is_culib_present()` and turns absence into a reason string.

/// What a working CUDA setup reports.
pub struct CudaInfo {
    pub devices: i32,
    pub nvrtc_version: (i32, i32),
    /// What runs the UNet's GEMMs: "cublas", or rdiff's own kernel and why.
    pub gemm: String,
}

/// `Ok` when the driver, a GPU and NVRTC are all usable; otherwise the reason why not.
#[cfg(feature = "cuda")]
pub fn availability() -> Result<CudaInfo, String> {
    use cudarc::{driver, nvrtc};
    libraries::load();
    // SAFETY: only tries to dlopen the library by name; nothing is called through it.
    if !unsafe { nvrtc::sys::is_culib_present() } {
        return Err("no NVRTC library found (pip install nvidia-cuda-nvrtc, or torch)".into());
    }
    // NVRTC's version query needs no driver.
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are valid for writes.
    unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("NVRTC failed to report its version: {e:?}"))?;
    let nvrtc_version = (major, minor);
    // SAFETY: as above, a dlopen by name only.
    if !unsafe { driver::sys::is_culib_present() } {
        return Err(
            "no CUDA driver library (libcuda.so) found: is an NVIDIA driver installed?".into(),
        );
    }
    driver::result::init().map_err(|e| format!("the CUDA driver failed to initialise: {e:?}"))?;
    let devices = driver::result::device::get_count()
        .map_err(|e| format!("the CUDA driver could not count devices: {e:?}"))?;
    if devices == 0 {
        return Err("the CUDA driver reports no GPU".into());
    }
    let gemm = match cublas::status() {
        Ok(()) => "cublas".to_string(),
        Err(why) => format!("rdiff_gemm_f32 ({why})"),
    };
    Ok(CudaInfo {
        devices,
        nvrtc_version,
        gemm,
    })
}

/// `availability()`, remembered once it has succeeded (the per-step check on the hot path:
/// no dlopen or driver query per step, and nothing a CUDA-graph capture forbids).
pub fn available_cached() -> Result<(), String> {
    static OK: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if OK.get().is_some() {
        return Ok(());
    }
    availability()?;
    let _ = OK.set(());
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn availability() -> Result<CudaInfo, String> {
    Err("rdiff was built without the `cuda` feature".into())
}

pub mod column_major;
#[cfg(feature = "cuda")]
pub mod compile;
#[cfg(feature = "cuda")]
pub mod context;
#[cfg(feature = "cuda")]
pub mod cublas;
pub mod emulate;
pub mod error_norm;
pub mod kernels;
pub mod launch;
#[cfg(feature = "cuda")]
pub mod libraries;
pub mod lincomb;
pub mod unet;
