//! What the UNet needs of a device beyond kernel launches: memory (alloc, free, upload) and a
//! GEMM. The real launcher hands the GEMM to cuBLAS (`crate::cuda::cublas`) in its column-major
//! form (`column_major`), or runs rdiff's GEMM kernel (`kernels/gemm.cu`) where cuBLAS is
//! missing or the layout has no cuBLAS form. The emulated one runs the same column-major form
//! on the CPU with the `gemm` crate, so the tests cover the mapping the device relies on (the
//! kernel itself, emulated thread by thread, is far too slow for a whole UNet; the tests run
//! it on small shapes through `kernel_gemm`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::cuda::column_major::{f32_math_on_half_operands, operand, ColumnMajorGemm};
use crate::cuda::emulate::EmulatedLauncher;
use crate::cuda::launch::{Dim3, KernelArg, Launcher};
use crate::error::{RdiffError, Result};
use crate::unet::weights::ComputeDtype;

/// `C[z][i][j] = beta·C[z][i][j] + alpha·Σ_k A[z](i,k)·B[z](k,j)` over `batch` values of z,
/// with element strides: A(i,k) at `a + z·a_bs + i·a_rs + k·a_cs` (in A's elements: f32, or
/// 16-bit with `half_operands`), B likewise, C (f32) row-major with row stride `c_rs`.
/// `beta == 0` does not read C.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub a_rs: usize,
    pub a_cs: usize,
    pub a_bs: usize,
    pub b: u64,
    pub b_rs: usize,
    pub b_cs: usize,
    pub b_bs: usize,
    pub c: u64,
    pub c_rs: usize,
    pub c_bs: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
    /// Operands rounded to bf16 or f16, products summed in f32: tensor-core math
    /// (`compute_dtype="bfloat16"` or `"float16"`); else plain f32.
    pub compute: ComputeDtype,
    /// A and B hold `compute`'s 16-bit type (a bf16 or f16 model's weight matrices and the
    /// operands made for them), not f32 that the math rounds as it reads it.
    pub half_operands: bool,
}

/// A launcher with device memory and a GEMM.
pub trait UnetDevice: Launcher {
    fn gemm(&self, g: &Gemm) -> Result<()>;
    /// `len` f32 of device memory.
    fn alloc(&self, len: usize) -> Result<u64>;
    fn free(&self, ptr: u64);
    /// Copies `src` (bytes: see [`bytes`]) to `dst` (stream-ordered on a real device).
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Waits until the work queued on the stream (copies included) is done.
    fn synchronize(&self) -> Result<()>;
    /// Whether host addresses are device addresses (the emulator's default: weights are
    /// used in place, never uploaded).
    fn host_visible(&self) -> bool;
    /// Whether this is the emulator (kernels run on the CPU, a block's threads as host
    /// threads): large attention problems then avoid the fused kernel's barriers.
    fn emulated(&self) -> bool {
        false
    }
    /// Whether `gemm` runs on a vendor library (cuBLAS): large attention problems in f32 and
    /// TF32 math then take the two-GEMM path rather than the fused f32 kernel.
    fn library_gemm(&self) -> bool {
        false
    }
    /// Threads per block of the UNet's elementwise and GroupNorm kernels: 256 (their
    /// `__launch_bounds__`) on a GPU. The kernels take any multiple of 32 up to 256.
    fn block_threads(&self) -> u32 {
        256
    }
}

const TILE: usize = 64;

/// Plain values without padding, whose bytes may be uploaded as they lie.
pub trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for half::f16 {}
impl Plain for half::bf16 {}

/// The bytes of `v`, for [`UnetDevice::upload`].
pub fn bytes<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: f32, f16 and bf16 have no padding and every byte is initialised; u8 has
    // alignment 1 and the length covers exactly the slice's memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// `g` in cuBLAS's column-major terms: the row-major C (m×n) is a column-major Cᵀ (n×m) =
/// Bᵀ·Aᵀ. None where an operand has no unit stride or a size exceeds cuBLAS's 32-bit ints.
pub fn column_major(g: &Gemm) -> Option<ColumnMajorGemm> {
    let (trans_a, lda) = operand(g.n, g.k, g.b_cs, g.b_rs)?; // Bᵀ(j, k) = B(k, j)
    let (trans_b, ldb) = operand(g.k, g.m, g.a_cs, g.a_rs)?; // Aᵀ(k, i) = A(i, k)
    let (trans_c, ldc) = operand(g.n, g.m, 1, g.c_rs)?;
    let int = |v: usize| i32::try_from(v).ok();
    let long = |v: usize| i64::try_from(v).ok();
    if trans_c {
        return None;
    }
    Some(ColumnMajorGemm {
        trans_a,
        trans_b,
        m: int(g.n)?,
        n: int(g.m)?,
        k: int(g.k)?,
        a: g.b,
        lda,
        stride_a: long(g.b_bs)?,
        b: g.a,
        ldb,
        stride_b: long(g.a_bs)?,
        c: g.c,
        ldc,
        stride_c: long(g.c_bs)?,
        batch: int(g.batch)?,
        alpha: g.alpha,
        beta: g.beta,
        compute: g.compute,
        half_operands: g.half_operands,
    })
}

/// The GEMM as `rdiff_gemm_f32` (or, for half operands, `rdiff_gemm_bf16` / `_f16`)
/// launches (64×64 tiles, 256 threads).
pub fn gemm_kernel(l: &dyn Launcher, g: &Gemm) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let (gy, gz) = (g.m.div_ceil(TILE), g.batch);
    if gy > 65535 || gz > 65535 {
        return Err(RdiffError::Cuda(format!(
            "gemm: {} rows × {} batches exceed the grid's y/z limits",
            g.m, g.batch
        )));
    }
    let i = |v: usize| KernelArg::I64(v as i64);
    let (kernel, rounding) = match (g.half_operands, g.compute) {
        (false, c) => ("rdiff_gemm_f32", rounding(c)),
        (true, ComputeDtype::Bf16) => ("rdiff_gemm_bf16", 0),
        (true, ComputeDtype::F16) => ("rdiff_gemm_f16", 0),
        (true, ComputeDtype::F32 | ComputeDtype::Tf32) => return Err(f32_math_on_half_operands()),
    };
    l.launch(
        kernel,
        Dim3::new(g.n.div_ceil(TILE) as u32, gy as u32, gz as u32),
        Dim3::x(256),
        0,
        &[
            i(g.m),
            i(g.n),
            i(g.k),
            KernelArg::Ptr(g.a),
            i(g.a_rs),
            i(g.a_cs),
            i(g.a_bs),
            KernelArg::Ptr(g.b),
            i(g.b_rs),
            i(g.b_cs),
            i(g.b_bs),
            KernelArg::Ptr(g.c),
            i(g.c_rs),
            i(g.c_bs),
            KernelArg::F32(g.alpha),
            KernelArg::F32(g.beta),
            i(rounding),
        ],
    )
}

/// A GEMM on host memory: each operand as (address, row stride, column stride, batch stride)
/// in its elements (A and B 16-bit with `half_operands`).
struct Strided {
    m: usize,
    n: usize,
    k: usize,
    a: (u64, usize, usize, usize),
    b: (u64, usize, usize, usize),
    c: (u64, usize, usize, usize),
    batch: usize,
    alpha: f32,
    beta: f32,
    compute: ComputeDtype,
    half_operands: bool,
}

/// `rows × cols` elements at `p` with strides (`rs`, `cs`) as `compute`'s tensor cores see
/// them, as a dense row-major f32 copy: f32 values rounded (`ComputeDtype::round_operand`), or
/// with `half`, 16-bit values of `compute`'s type widened.
///
/// # Safety
/// `p` reaches every element the strides name (host memory).
unsafe fn operand_copy(
    p: u64,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
    compute: ComputeDtype,
    half: bool,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            let at = i * rs + j * cs;
            // SAFETY: within the operand (the caller's contract).
            out.push(unsafe {
                if half {
                    compute.widen_bits(*(p as *const u16).add(at))
                } else {
                    compute.round_operand(*(p as *const f32).add(at))
                }
            });
        }
    }
    out
}

/// How `rdiff_gemm_f32` rounds its operands as it loads them (its `rounding` argument).
fn rounding(compute: ComputeDtype) -> usize {
    match compute {
        ComputeDtype::F32 => 0,
        ComputeDtype::Bf16 => 1,
        ComputeDtype::F16 => 2,
        ComputeDtype::Tf32 => 3,
    }
}

/// `C = beta·C + alpha·A·B` per batch with the `gemm` crate (`beta == 0` does not read C); for
/// bf16 or f16 math, on f32 copies of the operands as that math sees them.
fn cpu_gemm(g: &Strided) {
    let s = |v: usize| v as isize;
    let (c_rs, c_cs) = (g.c.1, g.c.2);
    let size = if g.half_operands { 2 } else { 4 };
    for z in 0..g.batch {
        // SAFETY: the addresses are host addresses (emulation) of buffers that the caller
        // sized for these shapes and strides; C does not overlap A or B.
        unsafe {
            let (a_at, b_at) = (
                g.a.0 + (size * z * g.a.3) as u64,
                g.b.0 + (size * z * g.b.3) as u64,
            );
            let mut a = a_at as *const f32;
            let mut b = b_at as *const f32;
            let (mut a_strides, mut b_strides) = ((g.a.1, g.a.2), (g.b.1, g.b.2));
            let copies;
            if g.compute != ComputeDtype::F32 || g.half_operands {
                copies = (
                    operand_copy(a_at, (g.m, g.k), a_strides, g.compute, g.half_operands),
                    operand_copy(b_at, (g.k, g.n), b_strides, g.compute, g.half_operands),
                );
                (a, b) = (copies.0.as_ptr(), copies.1.as_ptr());
                (a_strides, b_strides) = ((g.k, 1), (g.n, 1));
            }
            let c = (g.c.0 as *mut f32).add(z * g.c.3);
            if g.k == 0 {
                for i in 0..g.m {
                    for j in 0..g.n {
                        let p = c.add(i * c_rs + j * c_cs);
                        *p = if g.beta == 0.0 { 0.0 } else { g.beta * *p };
                    }
                }
                continue;
            }
            gemm::gemm(
                g.m,
                g.n,
                g.k,
                c,
                s(c_cs),
                s(c_rs),
                g.beta != 0.0,
                a,
                s(a_strides.1),
                s(a_strides.0),
                b,
                s(b_strides.1),
                s(b_strides.0),
                g.beta,
                g.alpha,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
}

/// The emulated launcher with host memory and a CPU GEMM.
#[derive(Default)]
pub struct EmulatedDevice {
    pub launcher: EmulatedLauncher,
    /// Run the GEMM kernel itself through the emulator instead of the CPU GEMM (tests).
    pub kernel_gemm: bool,
    /// Threads per block for the non-GEMM kernels (0: 256, as on a GPU). Whole-model tests
    /// use 32: every emulated barrier and warp shuffle then wakes 32 host threads, not 256.
    pub threads: u32,
    /// Weights are copied into allocations of their own, as on a GPU, instead of read where
    /// the host keeps them (`host_visible` false): a model may then drop its host copies.
    pub separate_memory: bool,
    allocs: Mutex<HashMap<u64, Vec<f32>>>,
    /// Launches by kernel name, so tests can tell which path an op took.
    launched: Mutex<HashMap<String, usize>>,
}

impl EmulatedDevice {
    /// At most `max_blocks` blocks per grid-stride launch, `threads` per block (0: 256),
    /// the CPU GEMM standing in for the GEMM kernel unless `kernel_gemm`.
    pub fn new(max_blocks: u32, threads: u32, kernel_gemm: bool) -> Self {
        Self {
            launcher: EmulatedLauncher {
                max_blocks: max_blocks.max(1),
            },
            kernel_gemm,
            threads,
            separate_memory: false,
            allocs: Mutex::default(),
            launched: Mutex::default(),
        }
    }

    /// How many times `kernel` has been launched on this device.
    pub fn launches_of(&self, kernel: &str) -> usize {
        let launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        launched.get(kernel).copied().unwrap_or(0)
    }
}

impl Launcher for EmulatedDevice {
    fn launch(
        &self,
        kernel: &str,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[KernelArg],
    ) -> Result<()> {
        let mut launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        match launched.get_mut(kernel) {
            Some(n) => *n += 1,
            None => {
                launched.insert(kernel.to_string(), 1);
            }
        }
        drop(launched);
        self.launcher
            .launch(kernel, grid, block, shared_bytes, args)
    }

    fn max_blocks(&self) -> u32 {
        self.launcher.max_blocks()
    }
}

impl UnetDevice for EmulatedDevice {
    fn gemm(&self, g: &Gemm) -> Result<()> {
        if self.kernel_gemm {
            return gemm_kernel(self, g);
        }
        if g.half_operands && !g.compute.is_half() {
            return Err(f32_math_on_half_operands());
        }
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        // cuBLAS's call as the real device makes it, else the kernel's (row-major) form
        match column_major(g) {
            Some(cm) => {
                let op = |t: bool, ld: i32| {
                    if t {
                        (ld as usize, 1)
                    } else {
                        (1, ld as usize)
                    }
                };
                let (a_rs, a_cs) = op(cm.trans_a, cm.lda);
                let (b_rs, b_cs) = op(cm.trans_b, cm.ldb);
                cpu_gemm(&Strided {
                    m: cm.m as usize,
                    n: cm.n as usize,
                    k: cm.k as usize,
                    a: (cm.a, a_rs, a_cs, cm.stride_a as usize),
                    b: (cm.b, b_rs, b_cs, cm.stride_b as usize),
                    c: (cm.c, 1, cm.ldc as usize, cm.stride_c as usize),
                    batch: cm.batch as usize,
                    alpha: cm.alpha,
                    beta: cm.beta,
                    compute: cm.compute,
                    half_operands: cm.half_operands,
                });
            }
            None => cpu_gemm(&Strided {
                m: g.m,
                n: g.n,
                k: g.k,
                a: (g.a, g.a_rs, g.a_cs, g.a_bs),
                b: (g.b, g.b_rs, g.b_cs, g.b_bs),
                c: (g.c, g.c_rs, 1, g.c_bs),
                batch: g.batch,
                alpha: g.alpha,
                beta: g.beta,
                compute: g.compute,
                half_operands: g.half_operands,
            }),
        }
        Ok(())
    }

    fn alloc(&self, len: usize) -> Result<u64> {
        let v = vec![f32::NAN; len.max(1)];
        let p = v.as_ptr() as u64;
        self.allocs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p, v);
        Ok(p)
    }

    fn free(&self, ptr: u64) {
        self.allocs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ptr);
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: `dst` is an allocation of ours at least `src.len()` bytes long (the caller's
        // contract, as for a device copy); host memory in emulation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn host_visible(&self) -> bool {
        !self.separate_memory
    }

    fn emulated(&self) -> bool {
        true
    }

    fn block_threads(&self) -> u32 {
        if self.threads == 0 {
            256
        } else {
            self.threads.clamp(32, 256) / 32 * 32
        }
    }
}

#[cfg(feature = "cuda")]
mod real {
    use cudarc::driver::result as cu;

    use super::{column_major, gemm_kernel, Gemm, UnetDevice};
    use crate::cuda::context::StreamLauncher;
    use crate::cuda::cublas;
    use crate::error::{RdiffError, Result};

    fn err(what: &str, e: cu::DriverError) -> RdiffError {
        RdiffError::Cuda(format!("{what}: {e:?}"))
    }

    impl UnetDevice for StreamLauncher {
        fn gemm(&self, g: &Gemm) -> Result<()> {
            if g.m == 0 || g.n == 0 || g.batch == 0 {
                return Ok(());
            }
            if let Some(cm) = column_major(g) {
                if cublas::gemm(&self.device, self.stream, &cm)? {
                    return Ok(());
                }
            }
            gemm_kernel(self, g)
        }

        fn alloc(&self, len: usize) -> Result<u64> {
            self.device.make_current()?;
            // SAFETY: the device's primary context is current; freed by `free`.
            unsafe { cu::malloc_sync(len.max(1) * 4) }.map_err(|e| err("cuMemAlloc", e))
        }

        fn free(&self, ptr: u64) {
            if self.device.make_current().is_ok() {
                // SAFETY: `ptr` came from `alloc` and is freed once (the arena's contract).
                let _ = unsafe { cu::free_sync(ptr) };
            }
        }

        fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
            self.device.make_current()?;
            // SAFETY: `dst` holds at least `src.len()` bytes (allocated by `alloc` for it);
            // a copy from pageable memory is staged before the call returns, so `src` may
            // be dropped afterwards.
            unsafe { cu::memcpy_htod_async(dst, src, self.stream as _) }
                .map_err(|e| err("cuMemcpyHtoDAsync", e))
        }

        fn synchronize(&self) -> Result<()> {
            self.device.make_current()?;
            // SAFETY: the stream is the caller's, on this device's primary context.
            unsafe { cu::stream::synchronize(self.stream as _) }
                .map_err(|e| err("cuStreamSynchronize", e))
        }

        fn host_visible(&self) -> bool {
            false
        }

        fn library_gemm(&self) -> bool {
            cublas::usable()
        }
    }
}
