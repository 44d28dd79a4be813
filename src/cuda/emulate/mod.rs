//! The emulated launcher: `kernels/*.cu` compiled as C++ for the host (`build.rs`, with
//! `kernels/host_shim.h`) and run on the CPU, so the CUDA code path (argument marshalling, grid
//! shapes, reductions, f16/bf16 conversion) is exercised on machines with no GPU.
//!
//! Blocks run one after another. The threads of a block are host threads (`thread::scope`)
//! that stay alive for the whole launch: between two blocks they meet at a barrier while
//! shared memory is poisoned, then each enters the next block (`rdiff_emu_enter` sets its
//! threadIdx/blockIdx/...) and runs the kernel; `__syncthreads` and warp shuffles are
//! barriers inside the C++ runtime (`host.cpp`).
//!
//! `scripts/sanitize_kernels.sh` runs this module's and `cuda::unet`'s tests with the kernels
//! built under gcc's AddressSanitizer + UBSan and ThreadSanitizer (`RDIFF_SANITIZE`, build.rs).
//! For ThreadSanitizer, which does not see this launcher's Rust barriers, the runtime also
//! meets at a pthread barrier on entering and leaving each block (`rdiff_emu_enter`,
//! `rdiff_emu_leave`), and the threads are joined one by one.

#[cfg(not(rdiff_no_emulation))]
use std::ffi::c_char;
use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Condvar, Mutex, PoisonError};

use super::launch::{Dim3, KernelArg, Launcher};
use crate::error::{RdiffError, Result};

type HostFn = unsafe extern "C" fn(*mut *mut c_void);

#[cfg(not(rdiff_no_emulation))]
extern "C" {
    fn rdiff_emu_lookup(name: *const c_char) -> Option<HostFn>;
    fn rdiff_emu_kernel_count() -> usize;
    fn rdiff_emu_kernel_name(i: usize) -> *const c_char;
    fn rdiff_emu_block_new(threads: u32, dynamic_shared: usize) -> *mut c_void;
    fn rdiff_emu_block_free(block: *mut c_void);
    fn rdiff_emu_block_poison(block: *mut c_void);
    fn rdiff_emu_block_overflowed(block: *mut c_void) -> i32;
    fn rdiff_emu_enter(
        block: *mut c_void,
        grid: *const u32,
        dims: *const u32,
        block_idx: *const u32,
        tid: u32,
    );
    fn rdiff_emu_leave();
}

/// Stand-ins when the host build of the kernels could not be compiled (no C++ compiler): the
/// registry is empty, so every launch fails with "no kernel" before anything else is called.
#[cfg(rdiff_no_emulation)]
#[allow(clippy::missing_safety_doc)]
mod absent {
    use super::HostFn;
    use std::ffi::{c_char, c_void};

    pub unsafe fn rdiff_emu_lookup(_name: *const c_char) -> Option<HostFn> {
        None
    }
    pub unsafe fn rdiff_emu_kernel_count() -> usize {
        0
    }
    pub unsafe fn rdiff_emu_kernel_name(_i: usize) -> *const c_char {
        std::ptr::null()
    }
    pub unsafe fn rdiff_emu_block_new(_threads: u32, _dynamic_shared: usize) -> *mut c_void {
        std::ptr::null_mut()
    }
    pub unsafe fn rdiff_emu_block_free(_block: *mut c_void) {}
    pub unsafe fn rdiff_emu_block_poison(_block: *mut c_void) {}
    pub unsafe fn rdiff_emu_block_overflowed(_block: *mut c_void) -> i32 {
        0
    }
    pub unsafe fn rdiff_emu_enter(
        _block: *mut c_void,
        _grid: *const u32,
        _dims: *const u32,
        _block_idx: *const u32,
        _tid: u32,
    ) {
    }
    pub unsafe fn rdiff_emu_leave() {}
}
#[cfg(rdiff_no_emulation)]
use absent::*;

/// The kernels the host build registered (every `RDIFF_HOST_EXPORT`).
pub fn registered_kernels() -> Vec<String> {
    // SAFETY: the registry is filled by static constructors before any Rust code runs and
    // never changes afterwards; names are NUL-terminated strings it owns.
    unsafe {
        (0..rdiff_emu_kernel_count())
            .map(|i| {
                CStr::from_ptr(rdiff_emu_kernel_name(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// Launches the emulated launcher has run, process-wide: tests read it before and after a
/// call to prove the call ran kernels (and not the CPU loop).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// The number of kernel launches the emulated launcher has run so far.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Runs kernels on the host. `max_blocks` caps the grids `ops` picks (small by default, so
/// that the grid-stride loops are exercised).
pub struct EmulatedLauncher {
    pub max_blocks: u32,
}

impl Default for EmulatedLauncher {
    fn default() -> Self {
        Self { max_blocks: 3 }
    }
}

/// What the threads of a launch share; raw pointers are only dereferenced by the kernel.
struct Shared {
    block: *mut c_void,
    params: Vec<*mut c_void>,
}
// SAFETY: the block object synchronises itself (barriers); the params point at argument values
// that outlive the scope and are only read.
unsafe impl Send for Shared {}
// SAFETY: as for Send: shared reads of the params, the block synchronises itself.
unsafe impl Sync for Shared {}

/// Opened once a launch's threads have all started (true), or when one could not (false): the
/// started ones then return instead of waiting at the block barrier for it forever.
#[derive(Default)]
struct Gate {
    go: Mutex<Option<bool>>,
    opened: Condvar,
}

impl Gate {
    fn open(&self, go: bool) {
        *self.go.lock().unwrap_or_else(PoisonError::into_inner) = Some(go);
        self.opened.notify_all();
    }

    fn wait(&self) -> bool {
        let mut go = self.go.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(go) = *go {
                return go;
            }
            go = self.opened.wait(go).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct BlockGuard(*mut c_void);
impl Drop for BlockGuard {
    fn drop(&mut self) {
        // SAFETY: created by rdiff_emu_block_new, freed once after every thread has joined.
        unsafe { rdiff_emu_block_free(self.0) }
    }
}

impl Launcher for EmulatedLauncher {
    fn launch(
        &self,
        kernel: &str,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[KernelArg],
    ) -> Result<()> {
        let cname = CString::new(kernel)
            .map_err(|_| RdiffError::Value(format!("bad kernel name {kernel:?}")))?;
        // SAFETY: a lookup in the registry by NUL-terminated name.
        let f = unsafe { rdiff_emu_lookup(cname.as_ptr()) }.ok_or_else(|| {
            RdiffError::Cuda(format!("the emulated launcher has no kernel {kernel:?}"))
        })?;
        let threads = block.count();
        if threads == 0 || threads > 1024 || grid.count() == 0 {
            return Err(RdiffError::Cuda(format!(
                "{kernel}: invalid launch shape grid {grid:?} block {block:?}"
            )));
        }
        if grid.y > 65535 || grid.z > 65535 {
            return Err(RdiffError::Cuda(format!(
                "{kernel}: grid {grid:?} exceeds CUDA's 65535 limit in y or z"
            )));
        }
        let threads = threads as u32;
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: freed by the guard after the scope has joined every thread.
        let blk = BlockGuard(unsafe { rdiff_emu_block_new(threads, shared_bytes as usize) });
        let shared = Shared {
            block: blk.0,
            params: args.iter().map(KernelArg::as_param).collect(),
        };
        let between = Barrier::new(threads as usize);
        let gate = Gate::default();
        let gdim = [grid.x, grid.y, grid.z];
        let bdim = [block.x, block.y, block.z];
        std::thread::scope(|s| -> Result<()> {
            let mut handles = Vec::with_capacity(threads as usize);
            for tid in 0..threads {
                let (shared, between, gate) = (&shared, &between, &gate);
                let spawned = std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        if !gate.wait() {
                            return;
                        }
                        for bz in 0..gdim[2] {
                            for by in 0..gdim[1] {
                                for bx in 0..gdim[0] {
                                    if between.wait().is_leader() {
                                        // SAFETY: every thread is parked at the barrier.
                                        unsafe { rdiff_emu_block_poison(shared.block) };
                                    }
                                    between.wait();
                                    let bidx = [bx, by, bz];
                                    // SAFETY: the block object lives until after the scope;
                                    // params point at values of the kernel's parameter types
                                    // (the caller's contract, as for cuLaunchKernel).
                                    unsafe {
                                        rdiff_emu_enter(
                                            shared.block,
                                            gdim.as_ptr(),
                                            bdim.as_ptr(),
                                            bidx.as_ptr(),
                                            tid,
                                        );
                                        f(shared.params.as_ptr() as *mut *mut c_void);
                                        rdiff_emu_leave();
                                    }
                                }
                            }
                        }
                    });
                match spawned {
                    Ok(handle) => handles.push(handle),
                    Err(e) => {
                        gate.open(false);
                        return Err(RdiffError::Cuda(format!("could not start a thread: {e}")));
                    }
                }
            }
            gate.open(true);
            // Joined one by one (pthread_join), not by the scope's own wait, so that a
            // ThreadSanitizer build sees the kernel's writes ordered before what follows.
            for handle in handles {
                handle.join().map_err(|_| {
                    RdiffError::Cuda(format!("{kernel}: an emulated thread panicked"))
                })?;
            }
            Ok(())
        })?;
        // SAFETY: all threads have joined.
        if unsafe { rdiff_emu_block_overflowed(blk.0) } != 0 {
            return Err(RdiffError::Cuda(format!(
                "{kernel}: static shared memory above 48 KiB"
            )));
        }
        Ok(())
    }

    fn max_blocks(&self) -> u32 {
        self.max_blocks
    }
}

#[cfg(test)]
mod tests;
