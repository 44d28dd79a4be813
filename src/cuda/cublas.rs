//! cuBLAS for the CUDA UNet's GEMMs, loaded at run time through cudarc (the `nvidia-cublas`
//! wheel's copy or PyTorch's, found by `python/rdiff/_cuda_libs.py` and loaded on first need
//! by `libraries.rs`, or the system's).
//!
//! One handle per device, on the caller's stream (with a workspace of rdiff's own while the
//! stream captures a CUDA graph). A float32 model's GEMMs are plain f32
//! (`cublasSgemmStridedBatched`, no TF32), so results agree with the f32 kernel to rounding; a
//! `compute_dtype="bfloat16"` or `"float16"` model's are `cublasGemmStridedBatchedEx` with f32
//! sums on the tensor cores: on operands stored in bf16 or f16 (its weight matrices and the
//! columns made for them; `CUBLAS_COMPUTE_32F`, C in f32), or on f32 operands (attention's)
//! with `CUBLAS_COMPUTE_32F_FAST_16BF` or `_FAST_16F`, cuBLAS rounding them; a
//! `"tfloat32"` model's likewise with `CUBLAS_COMPUTE_32F_FAST_TF32`. Where the library
//! is missing, its handle cannot be created, `RDIFF_NO_CUBLAS` is set, or a GEMM's layout has
//! no cuBLAS form, `gemm` answers `Ok(false)` and the caller runs rdiff's own GEMM kernel.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::cublas::sys;

use super::column_major::{f32_math_on_half_operands, ColumnMajorGemm};
use super::context::Device;
use crate::error::{RdiffError, Result};
use crate::unet::weights::ComputeDtype;

fn switched_off() -> bool {
    std::env::var_os("RDIFF_NO_CUBLAS").is_some_and(|v| !v.is_empty())
}

fn present() -> bool {
    // (looked up once: the lookup tries a score of library names, and `usable` runs per GEMM)
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        super::libraries::load();
        // SAFETY: only tries to dlopen the library by name.
        unsafe { sys::is_culib_present() }
    })
}

/// Whether cuBLAS may be used: the library present and not switched off (the per-GEMM test).
pub fn usable() -> bool {
    !switched_off() && present()
}

/// `usable()` and no device's handle failed, or why not (for `rdiff.backends()`).
pub fn status() -> std::result::Result<(), String> {
    if switched_off() {
        return Err("switched off by RDIFF_NO_CUBLAS".into());
    }
    if !present() {
        return Err("no cuBLAS library found (pip install nvidia-cublas, or torch)".into());
    }
    let map = handles().lock().unwrap_or_else(|e| e.into_inner());
    let mut failed: Vec<_> = map
        .iter()
        .filter_map(|(d, h)| Some((d, h.as_ref().err()?)))
        .collect();
    failed.sort();
    match failed.first() {
        Some((d, why)) => Err(format!("on device {d}, {why}")),
        None => Ok(()),
    }
}

/// A handle per device ordinal, or why it could not be created (kept: the device's GEMMs
/// then run rdiff's own kernel for the process, and `status` says so).
type Handles = Mutex<HashMap<i32, std::result::Result<Handle, String>>>;

/// A cuBLAS handle and the workspace it is given while capturing (device pointer), both kept
/// for the process.
#[derive(Clone, Copy)]
struct Handle {
    handle: usize,
    workspace: u64,
}

/// Bytes of the workspace a handle is given while its stream captures: NVIDIA's suggestion for
/// Hopper (4 MiB suffices before it). Outside a capture cuBLAS uses its default workspace
/// (`cublasSetStream` puts the handle back on it, so uncaptured calls run as they did); inside
/// one it would allocate a workspace for the graph (a memory node outside rdiff's arena and
/// PyTorch's pool; pytorch#83461). Two graphs captured with this one and replayed at once on
/// two streams would share it.
const WORKSPACE_BYTES: usize = 32 << 20;

/// A handle for the current context's device with its workspace, or why cuBLAS cannot give
/// one.
fn create() -> std::result::Result<Handle, String> {
    let mut h: sys::cublasHandle_t = std::ptr::null_mut();
    // SAFETY: `h` is valid for writes; the device's primary context is current.
    let ok = unsafe { sys::cublasCreate_v2(&mut h) };
    if ok != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(format!("cublasCreate failed ({ok:?})"));
    }
    // SAFETY: the primary context is current; the allocation is never freed (as the handle).
    match unsafe { cudarc::driver::result::malloc_sync(WORKSPACE_BYTES) } {
        Ok(workspace) => Ok(Handle {
            handle: h as usize,
            workspace,
        }),
        Err(e) => {
            // SAFETY: the handle just created, used by nothing else.
            unsafe { sys::cublasDestroy_v2(h) };
            Err(format!(
                "its 32 MiB capture workspace could not be allocated ({e:?})"
            ))
        }
    }
}

/// Whether `stream` is being captured into a CUDA graph (or cannot be asked: the legacy
/// stream while another stream captures).
fn capturing(stream: usize) -> bool {
    use cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: the caller's live stream on the current device.
    let status = unsafe { cudarc::driver::result::stream::is_capturing(stream as _) };
    status.ok() != Some(CU_STREAM_CAPTURE_STATUS_NONE)
}

fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(Default::default)
}

fn check(status: sys::cublasStatus_t, what: &str) -> Result<()> {
    if status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(RdiffError::Cuda(format!("{what}: {status:?}")))
    }
}

/// Runs `g` on `stream` of `device` with cuBLAS: `Ok(false)` when cuBLAS is unavailable (the
/// caller falls back to its own kernel), an error when cuBLAS refuses the call.
pub fn gemm(device: &Device, stream: usize, g: &ColumnMajorGemm) -> Result<bool> {
    if !usable() {
        return Ok(false);
    }
    // The map's lock also serialises the handle's use: a handle is not to be shared between
    // threads at once, and set-stream + call must stay together.
    let mut map = handles().lock().unwrap_or_else(|e| e.into_inner());
    device.make_current()?;
    let handle = match map.get(&device.ordinal) {
        Some(h) => h.clone(),
        // Creating a handle allocates, which a capture forbids: rdiff's own kernel this time
        // (a warm-up call before capturing creates it).
        None if capturing(stream) => return Ok(false),
        None => map.entry(device.ordinal).or_insert_with(create).clone(),
    };
    let Ok(Handle { handle, workspace }) = handle else {
        return Ok(false);
    };
    let h = handle as sys::cublasHandle_t;
    let op = |t: bool| {
        if t {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    // SAFETY: a live handle; the stream is the caller's live stream on this device.
    let set = unsafe { sys::cublasSetStream_v2(h, stream as sys::cudaStream_t) };
    check(set, "cublasSetStream")?;
    if capturing(stream) {
        // SAFETY: the handle's own WORKSPACE_BYTES allocation (256-byte aligned, as
        // cuMemAlloc's are).
        let set = unsafe {
            sys::cublasSetWorkspace_v2(h, workspace as *mut std::ffi::c_void, WORKSPACE_BYTES)
        };
        check(set, "cublasSetWorkspace")?;
    }
    use sys::cublasComputeType_t as math;
    use sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F};
    let ex = match (g.compute, g.half_operands) {
        (ComputeDtype::F32, false) => None,
        (ComputeDtype::Bf16, false) => Some((CUDA_R_32F, math::CUBLAS_COMPUTE_32F_FAST_16BF)),
        (ComputeDtype::F16, false) => Some((CUDA_R_32F, math::CUBLAS_COMPUTE_32F_FAST_16F)),
        (ComputeDtype::Bf16, true) => Some((CUDA_R_16BF, math::CUBLAS_COMPUTE_32F)),
        (ComputeDtype::F16, true) => Some((CUDA_R_16F, math::CUBLAS_COMPUTE_32F)),
        (ComputeDtype::Tf32, false) => Some((CUDA_R_32F, math::CUBLAS_COMPUTE_32F_FAST_TF32)),
        (ComputeDtype::F32 | ComputeDtype::Tf32, true) => return Err(f32_math_on_half_operands()),
    };
    if let Some((operand_type, compute)) = ex {
        // SAFETY: as for the f32 call below (A and B hold `operand_type` elements); alpha and
        // beta are f32, as the 32F compute types ask.
        let done = unsafe {
            sys::cublasGemmStridedBatchedEx(
                h,
                op(g.trans_a),
                op(g.trans_b),
                g.m,
                g.n,
                g.k,
                (&g.alpha as *const f32).cast(),
                g.a as *const std::ffi::c_void,
                operand_type,
                g.lda,
                g.stride_a,
                g.b as *const std::ffi::c_void,
                operand_type,
                g.ldb,
                g.stride_b,
                (&g.beta as *const f32).cast(),
                g.c as *mut std::ffi::c_void,
                CUDA_R_32F,
                g.ldc,
                g.stride_c,
                g.batch,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT, // CUBLAS_GEMM_DEFAULT
            )
        };
        check(done, "cublasGemmStridedBatchedEx")?;
        return Ok(true);
    }
    // SAFETY: the pointers are device allocations (the UNet's arena and weights) holding every
    // element the strides and sizes reach (the Gemm's contract); alpha and beta are host
    // values that outlive the call (cuBLAS's default host pointer mode).
    let done = unsafe {
        sys::cublasSgemmStridedBatched(
            h,
            op(g.trans_a),
            op(g.trans_b),
            g.m,
            g.n,
            g.k,
            &g.alpha,
            g.a as *const f32,
            g.lda,
            g.stride_a,
            g.b as *const f32,
            g.ldb,
            g.stride_b,
            &g.beta,
            g.c as *mut f32,
            g.ldc,
            g.stride_c,
            g.batch,
        )
    };
    check(done, "cublasSgemmStridedBatched")?;
    Ok(true)
}
