//! The real launcher: the device's primary context (the one PyTorch's runtime uses, so the
//! caller's device pointers are valid in it), the kernels' CUBIN for the device's exact
//! architecture loaded once per device, and launches on the caller's stream with no
//! synchronisation and no allocation per step (so a step can be captured in a CUDA graph).
//! rdiff owns no device memory: scratch (the thresholding bounds) is a caller's tensor, so two
//! streams never share one and a capture never sees a cuMemAlloc.
//!
//! Not exercised by the test suite (the build machines have no GPU): everything up to the
//! driver calls is shared with the emulated launcher through `Launcher` and `ops`.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result as cu, sys};

use super::compile;
use super::kernels;
use super::launch::{Dim3, KernelArg, Launcher};
use crate::error::{RdiffError, Result};

fn driver_err(what: &str) -> impl Fn(cu::DriverError) -> RdiffError + '_ {
    move |e| {
        let name = e
            .error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        RdiffError::Cuda(format!("{what}: {:?} {name}", e.0))
    }
}

/// Per-device state, created on first use and kept for the life of the process.
pub struct Device {
    pub ordinal: i32,
    ctx: sys::CUcontext,
    /// `sm_XY` of the device.
    pub arch: String,
    pub sm_count: u32,
    functions: Mutex<HashMap<String, usize>>,
    modules: Mutex<HashMap<&'static str, usize>>,
}

// SAFETY: the context is a process-wide driver handle, usable from any thread once made
// current; the caches are behind mutexes (CUfunction/CUmodule kept as usize).
unsafe impl Send for Device {}
// SAFETY: as for Send: the handles are thread-agnostic and the mutable caches are mutexes.
unsafe impl Sync for Device {}

/// Batches above this are split by the caller (grid.y limit).
pub const MAX_BATCH: usize = 65535;

type Devices = Mutex<HashMap<i32, Arc<Device>>>;

/// The state of CUDA device `ordinal`, initialising the driver and the primary context on
/// first use. `CudaUnavailable` when there is no usable driver/GPU/NVRTC.
pub fn device(ordinal: i32) -> Result<Arc<Device>> {
    static DEVICES: OnceLock<Devices> = OnceLock::new();
    let devices = DEVICES.get_or_init(Default::default);
    let mut map = devices.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let info = super::availability().map_err(RdiffError::CudaUnavailable)?;
    if ordinal < 0 || ordinal >= info.devices {
        return Err(RdiffError::Value(format!(
            "CUDA device {ordinal} does not exist ({} found)",
            info.devices
        )));
    }
    let dev = cu::device::get(ordinal).map_err(driver_err("cuDeviceGet"))?;
    // SAFETY: `dev` came from cuDeviceGet; the retained primary context is never released
    // (it lives as long as the process, as PyTorch's does).
    let ctx =
        unsafe { cu::primary_ctx::retain(dev) }.map_err(driver_err("cuDevicePrimaryCtxRetain"))?;
    // SAFETY: a live context.
    unsafe { cu::ctx::set_current(ctx) }.map_err(driver_err("cuCtxSetCurrent"))?;
    let attr = |a| {
        // SAFETY: `dev` is a valid device.
        unsafe { cu::device::get_attribute(dev, a) }.map_err(driver_err("cuDeviceGetAttribute"))
    };
    use sys::CUdevice_attribute::*;
    let major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
    if major < 8 {
        return Err(RdiffError::CudaUnavailable(format!(
            "CUDA device {ordinal} has compute capability {major}.{minor}; rdiff's kernels \
             need 8.0 (Ampere) or newer"
        )));
    }
    let d = Arc::new(Device {
        ordinal,
        ctx,
        arch: format!("sm_{major}{minor}"),
        sm_count,
        functions: Mutex::new(HashMap::new()),
        modules: Mutex::new(HashMap::new()),
    });
    map.insert(ordinal, d.clone());
    Ok(d)
}

/// The calling thread's current context, made current again when this is dropped. rdiff makes
/// its device's primary context current for its work; the CUDA runtime takes the current
/// context for the current device (PyTorch's `torch.cuda.current_device()`), so a call on
/// `cuda:1` from a thread on device 0 must not leave device 1 current.
pub struct RestoreContext(Option<sys::CUcontext>);

impl RestoreContext {
    pub fn save() -> Result<Self> {
        cu::ctx::get_current()
            .map(RestoreContext)
            .map_err(driver_err("cuCtxGetCurrent"))
    }
}

impl Drop for RestoreContext {
    fn drop(&mut self) {
        let ctx = self.0.unwrap_or(std::ptr::null_mut());
        // SAFETY: the context that was current on this thread before (contexts rdiff sees are
        // primary contexts, retained while the process lives), or none.
        let _ = unsafe { cu::ctx::set_current(ctx) };
    }
}

impl Device {
    pub(crate) fn make_current(&self) -> Result<()> {
        // SAFETY: the retained primary context stays alive for the process.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(driver_err("cuCtxSetCurrent"))
    }

    /// The module holding `source`: the CUBIN for this exact architecture, or, when NVRTC does
    /// not know the architecture or the driver rejects the CUBIN, PTX for the newest shipped
    /// architecture, which the driver compiles for the device.
    fn module(&self, source: &'static kernels::KernelSource) -> Result<sys::CUmodule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&m) = modules.get(source.name) {
            return Ok(m as sys::CUmodule);
        }
        let native = compile::compile(source.name, &self.arch).and_then(|c| {
            // SAFETY: a complete CUBIN image produced by NVRTC; the driver copies it.
            unsafe { cu::module::load_data(c.cubin.as_ptr() as *const c_void) }
                .map_err(driver_err("cuModuleLoadData (CUBIN)"))
        });
        let module = match native {
            Ok(m) => m,
            Err(first) => {
                let newest = compile::SHIPPED_ARCHS[compile::SHIPPED_ARCHS.len() - 1];
                let c = compile::compile(source.name, newest)?;
                let mut ptx = c.ptx.clone();
                if ptx.last() != Some(&0) {
                    ptx.push(0);
                }
                // SAFETY: NUL-terminated PTX text; the driver copies it.
                unsafe { cu::module::load_data(ptx.as_ptr() as *const c_void) }.map_err(|e| {
                    RdiffError::Cuda(format!(
                        "{}.cu: loading the CUBIN for {} failed ({first}); PTX fallback: {}",
                        source.name,
                        self.arch,
                        driver_err("cuModuleLoadData (PTX)")(e)
                    ))
                })?
            }
        };
        modules.insert(source.name, module as usize);
        Ok(module)
    }

    fn function(&self, entry: &str) -> Result<sys::CUfunction> {
        if let Some(&f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(entry)
        {
            return Ok(f as sys::CUfunction);
        }
        let source = kernels::source_of_entry(entry)
            .ok_or_else(|| RdiffError::Cuda(format!("no kernel source defines {entry:?}")))?;
        let module = self.module(source)?;
        let name = CString::new(entry).map_err(|_| RdiffError::Value("bad kernel name".into()))?;
        // SAFETY: a loaded module that is never unloaded.
        let f = unsafe { cu::module::get_function(module, name) }
            .map_err(driver_err("cuModuleGetFunction"))?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.to_string(), f as usize);
        Ok(f)
    }
}

/// Launches on one stream of one device: the caller's (`torch.cuda.current_stream().
/// cuda_stream`; 0 is the legacy default stream, PyTorch's default).
pub struct StreamLauncher {
    pub device: Arc<Device>,
    pub stream: usize,
}

impl Launcher for StreamLauncher {
    fn launch(
        &self,
        kernel: &str,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[KernelArg],
    ) -> Result<()> {
        self.device.make_current()?;
        let f = self.device.function(kernel)?;
        let mut params: Vec<*mut c_void> = args.iter().map(KernelArg::as_param).collect();
        // SAFETY: `f` belongs to a live module; `params` point at values of the kernel's
        // parameter types (built by `ops`, which matches the kernel signatures) that outlive
        // this call (cuLaunchKernel copies them before returning); device pointers are the
        // caller's live tensors, kept alive by the Python layer until the stream has run.
        unsafe {
            cu::launch_kernel(
                f,
                (grid.x, grid.y, grid.z),
                (block.x, block.y, block.z),
                shared_bytes,
                self.stream as sys::CUstream,
                &mut params,
            )
        }
        .map_err(driver_err(kernel))
    }

    fn max_blocks(&self) -> u32 {
        // 2048 resident threads per SM on sm_80..sm_90 = 8 blocks of 256.
        self.device.sm_count * 8
    }
}
