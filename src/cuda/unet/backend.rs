//! [`DeviceBackend`]: the UNet graph's ops (`unet::backend::Backend`) as kernel launches and
//! GEMMs on a [`UnetDevice`], activations in a reusable [`DeviceArena`], weights uploaded once
//! ([`DeviceWeights`]; used in place when the device reads host memory, as in emulation).

use std::collections::HashMap;

use super::device::{bytes, Gemm, UnetDevice};
use crate::cpu::layer_norm::LayerNormParams;
use crate::cpu::norm::GroupNormParams;
use crate::cuda::kernels::dtype_suffix;
use crate::cuda::launch::{Dim3, KernelArg};
use crate::error::{RdiffError, Result};
use crate::tensor::Tensor;
use crate::unet::arch::TimeEmbeddingType;
use crate::unet::backend::{Act, Backend, Epilogue, Segs, Tokens};
use crate::unet::embeddings::{Conditioning, TimeEmbedding, Timesteps};
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::{ComputeDtype, Weight};

/// `rdiff_unet_flash_attention_f32`'s threads per query and widest head (RD_ATTN_LANES,
/// RD_ATTN_LANES · RD_ATTN_PER in kernels/unet_attention.cu).
const FLASH_LANES: usize = 16;
const FLASH_MAX_DH: usize = 256;
/// The largest queries × keys the emulated launcher runs through the fused f32 kernel.
const FLASH_EMULATED_MAX: usize = 1024;
/// From this many queries × keys, a device takes float32 math's 3xTF32 kernel (heads up to 64
/// wide) and, if its GEMMs run on cuBLAS, the two-GEMM path for heads that no tensor-core
/// kernel takes (the fused f32 kernel is SIMT with a barrier per 16 keys: on the H200 it left
/// SD 1.5's 4,096-token attention the bulk of a 272 ms call that cuBLAS's GEMMs had made 30 ms).
const LIBRARY_ATTENTION_MIN: usize = 64 * 64;
/// `rdiff_unet_attention_mma_*`'s queries and threads per block (RD_MMA_Q, RD_MMA_WARPS · 32)
/// and the widest heads of its `_d64`, `_d128` and `_d160` entry points (SD 1.5's heads are
/// 40, 80 and 160 wide, SD 2.x's and SDXL's 64).
const MMA_QUERIES: usize = 64;
const MMA_THREADS: u32 = 128;
const MMA_WIDTHS: [usize; 3] = [64, 128, 160];
/// Its entry points, by math (bf16, f16, TF32, f32) and width (as MMA_WIDTHS). Float32 math's
/// is 3xTF32 (each operand split into two TF32 parts: f32's accuracy), its queries' two parts
/// in registers up to 64-wide heads, and only where the fused f32 kernel is not taken.
const MMA_KERNELS: [[Option<&str>; 3]; 4] = [
    [
        Some("rdiff_unet_attention_mma_bf16_d64"),
        Some("rdiff_unet_attention_mma_bf16_d128"),
        Some("rdiff_unet_attention_mma_bf16_d160"),
    ],
    [
        Some("rdiff_unet_attention_mma_f16_d64"),
        Some("rdiff_unet_attention_mma_f16_d128"),
        Some("rdiff_unet_attention_mma_f16_d160"),
    ],
    [
        Some("rdiff_unet_attention_mma_tf32_d64"),
        Some("rdiff_unet_attention_mma_tf32_d128"),
        Some("rdiff_unet_attention_mma_tf32_d160"),
    ],
    [Some("rdiff_unet_attention_mma_3xtf32_d64"), None, None],
];
/// The largest queries × keys the emulated launcher runs through the tensor-core kernel
/// (each of its products is two warp barriers between host threads there).
const MMA_EMULATED_MAX: usize = 150 * 150;
/// The most f32 the two-GEMM path's scores hold at once (512 MiB; a few KiB in unit tests,
/// so that they cover the chunking): heads go in chunks beyond it.
const SCORES_MAX: usize = if cfg!(test) { 2048 } else { 1 << 27 };

/// The most f32 one im2col tile holds (64 MiB); wider convolutions go in column tiles.
const COLS_CAP: usize = 1 << 24;

/// An f32 buffer in device memory: `len` used of `cap` allocated.
#[derive(Debug)]
pub struct DevBuf {
    pub ptr: u64,
    pub len: usize,
    cap: usize,
}

impl DevBuf {
    /// A view of memory owned elsewhere (a caller's tensor; tests' misaligned host buffers).
    pub fn raw(ptr: u64, len: usize) -> Self {
        Self { ptr, len, cap: len }
    }

    /// The address of element `i`.
    fn at(&self, i: usize) -> u64 {
        self.ptr + 4 * i as u64
    }
}

/// Free device buffers, handed out best-fit; after one call of a given shape, later calls
/// allocate nothing.
#[derive(Default)]
pub struct DeviceArena {
    free: Vec<(u64, usize)>,
    all: Vec<u64>,
    allocated: usize,
    /// Allocations made and host values copied into its buffers, since load (what a call
    /// captured in a CUDA graph may not do; `DeviceState::traffic`).
    pub(super) allocations: usize,
    pub(super) uploads: usize,
}

impl DeviceArena {
    fn take(&mut self, dev: &dyn UnetDevice, len: usize) -> Result<DevBuf> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, f)| f.1 >= len)
            .min_by_key(|(_, f)| f.1)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let (ptr, cap) = self.free.swap_remove(i);
            return Ok(DevBuf { ptr, len, cap });
        }
        let ptr = dev.alloc(len)?;
        self.all.push(ptr);
        self.allocated += 4 * len.max(1);
        self.allocations += 1;
        Ok(DevBuf { ptr, len, cap: len })
    }

    fn give(&mut self, b: DevBuf) {
        self.free.push((b.ptr, b.cap));
    }

    /// Bytes allocated so far.
    pub fn allocated_bytes(&self) -> usize {
        self.allocated
    }

    /// Frees everything (the buffers must be idle).
    pub fn release(&mut self, dev: &dyn UnetDevice) {
        for p in self.all.drain(..) {
            dev.free(p);
        }
        self.free.clear();
        self.allocated = 0;
    }
}

/// Device copies of the model's weights, keyed by the host slice and the type stored (the
/// model's weights never move or change once loaded).
#[derive(Default)]
pub struct DeviceWeights {
    map: HashMap<(usize, usize, ComputeDtype), u64>,
    /// On a host-visible device (the emulator), the copies that stand in for device ones: a
    /// checkpoint's f16/bf16 matrix widened to f32, or a matrix in a bf16 or f16 model's type.
    host: HashMap<(usize, usize, ComputeDtype), Weight>,
    /// Weights uploaded (each an allocation and a copy).
    pub(super) uploads: usize,
    /// Bytes of the device copies (on a host-visible device, those its copies stand for).
    pub bytes: usize,
}

/// The bytes of a matrix as `Weight::stored_as` makes it (never tiles: those are the CPU's).
fn stored_bytes(w: &Weight) -> &[u8] {
    match w {
        Weight::F32(v) => bytes(v),
        Weight::F16(v) => bytes(v),
        Weight::Bf16(v) => bytes(v),
        Weight::Bf16Tiles(_) | Weight::Uploaded { .. } => {
            unreachable!("a device copy is made from host values, never in the CPU's tile layout")
        }
    }
}

impl DeviceWeights {
    /// How a `compute` model keeps its matrices on the device: in its 16-bit type for a bf16
    /// or f16 model, else f32.
    pub fn stored_for(compute: ComputeDtype) -> ComputeDtype {
        if compute.is_half() {
            compute
        } else {
            ComputeDtype::F32
        }
    }

    fn get(&mut self, dev: &dyn UnetDevice, host: &[f32]) -> Result<u64> {
        let key = (host.as_ptr() as usize, host.len(), ComputeDtype::F32);
        if let Some(&p) = self.map.get(&key) {
            return Ok(p);
        }
        let p = if dev.host_visible() {
            host.as_ptr() as u64
        } else {
            self.upload(dev, bytes(host))?
        };
        self.bytes += 4 * host.len();
        self.map.insert(key, p);
        Ok(p)
    }

    fn upload(&mut self, dev: &dyn UnetDevice, data: &[u8]) -> Result<u64> {
        let p = dev.alloc(data.len().div_ceil(4))?;
        dev.upload(p, data)?;
        self.uploads += 1;
        Ok(p)
    }

    /// A weight matrix's device copy, stored as `stored`: f32 (a checkpoint's f16/bf16
    /// matrix widened once, on the host, before its upload) or, for a bf16 or f16 model,
    /// that type (rounded to nearest even once, as its GEMMs would round it: half the memory
    /// and half the GEMMs' weight traffic).
    pub(super) fn matrix(
        &mut self,
        dev: &dyn UnetDevice,
        w: &Weight,
        stored: ComputeDtype,
    ) -> Result<u64> {
        if let (Some(host), ComputeDtype::F32) = (w.as_f32(), stored) {
            return self.get(dev, host);
        }
        let key = (w.addr(), w.len(), stored);
        if let Some(&p) = self.map.get(&key) {
            return Ok(p);
        }
        if w.is_uploaded() {
            return Err(RdiffError::Cuda(
                "a weight matrix was dropped from the host before its upload".into(),
            ));
        }
        let copy = w.stored_as(stored);
        let data = stored_bytes(&copy);
        self.bytes += data.len();
        let p = if dev.host_visible() {
            let p = data.as_ptr() as u64;
            self.host.insert(key, copy);
            p
        } else {
            self.upload(dev, data)?
        };
        self.map.insert(key, p);
        Ok(p)
    }

    pub fn release(&mut self, dev: &dyn UnetDevice) {
        if !dev.host_visible() {
            for (_, p) in self.map.drain() {
                dev.free(p);
            }
        }
        self.map.clear();
        self.host.clear();
        self.bytes = 0;
    }
}

/// The ops on one device for one call.
pub struct DeviceBackend<'a> {
    pub dev: &'a dyn UnetDevice,
    pub arena: &'a mut DeviceArena,
    pub weights: &'a mut DeviceWeights,
    /// Every GEMM's math (`compute_dtype`): f32, or bf16 or f16 on the tensor cores.
    pub compute: ComputeDtype,
}

fn i(v: usize) -> KernelArg<'static> {
    KernelArg::I64(v as i64)
}

fn ptr(b: Option<&DevBuf>) -> KernelArg<'static> {
    KernelArg::Ptr(b.map_or(0, |b| b.ptr))
}

fn two_segs<'b>(
    x: Segs<'b, DevBuf>,
    what: &str,
) -> Result<(&'b DevBuf, usize, Option<&'b DevBuf>)> {
    match x {
        [(a, ca)] => Ok((a, *ca, None)),
        [(a, ca), (b, _)] => Ok((a, *ca, Some(b))),
        _ => Err(RdiffError::Cuda(format!(
            "{what}: the CUDA kernels take one or two channel segments, got {}",
            x.len()
        ))),
    }
}

impl DeviceBackend<'_> {
    /// Blocks for a grid-stride kernel over `total` elements.
    fn grid(&self, total: usize) -> Dim3 {
        let want = total.div_ceil(self.dev.block_threads() as usize).max(1);
        Dim3::x(want.min(self.dev.max_blocks().max(1) as usize) as u32)
    }

    fn elementwise(&self, kernel: &str, total: usize, args: &[KernelArg]) -> Result<()> {
        let block = Dim3::x(self.dev.block_threads());
        self.dev.launch(kernel, self.grid(total), block, 0, args)
    }

    fn w(&mut self, host: &[f32]) -> Result<KernelArg<'static>> {
        Ok(KernelArg::Ptr(self.weights.get(self.dev, host)?))
    }

    /// A weight matrix as its GEMMs read it: f32, or a bf16 or f16 model's 16-bit type.
    fn wptr(&mut self, w: &Weight) -> Result<u64> {
        self.weights
            .matrix(self.dev, w, DeviceWeights::stored_for(self.compute))
    }

    /// Whether the GEMMs' operands are 16-bit (a bf16 or f16 model's).
    fn half(&self) -> bool {
        self.compute.is_half()
    }

    /// A fresh arena buffer (the caller gives it back) holding the `c` rows of `n` values of
    /// the one- or two-segment activation `x`, rounded to the model's 16-bit type: the GEMM
    /// operand of a bf16 or f16 model's 1×1 convolution or linear layer.
    fn narrow(&mut self, x: Segs<'_, DevBuf>, c: usize, n: usize) -> Result<DevBuf> {
        let (x0, c0, x1) = two_segs(x, "narrow")?;
        let out = self.arena.take(self.dev, (c * n).div_ceil(2))?;
        let kernel = format!("rdiff_unet_narrow_{}", self.compute.suffix());
        self.elementwise(
            &kernel,
            c * n,
            &[
                KernelArg::Ptr(x0.ptr),
                i(c0),
                ptr(x1),
                i(c),
                i(n),
                KernelArg::Ptr(out.ptr),
            ],
        )?;
        Ok(out)
    }

    /// `out[r][j] = act(x[r][j] + bias[j] + add[r mod add_rows][j])`; `add` is (address,
    /// add_rows).
    #[allow(clippy::too_many_arguments)]
    fn rows(
        &mut self,
        x: Option<u64>,
        rows: usize,
        cols: usize,
        bias: Option<&[f32]>,
        add: Option<(u64, usize)>,
        silu: bool,
        out: u64,
    ) -> Result<()> {
        let bias = match bias {
            Some(b) => self.w(b)?,
            None => KernelArg::Ptr(0),
        };
        self.elementwise(
            "rdiff_unet_rows_f32",
            rows * cols,
            &[
                KernelArg::Ptr(x.unwrap_or(0)),
                i(rows),
                i(cols),
                bias,
                KernelArg::Ptr(add.map_or(0, |a| a.0)),
                i(add.map_or(1, |a| a.1.max(1))),
                i(silu as usize),
                KernelArg::Ptr(out),
            ],
        )
    }

    fn upload_new(&mut self, host: &[f32]) -> Result<DevBuf> {
        let b = self.arena.take(self.dev, host.len())?;
        self.dev.upload(b.ptr, bytes(host))?;
        self.arena.uploads += 1;
        Ok(b)
    }

    /// Uploads `host` into a fresh arena buffer (the caller gives it back).
    pub fn upload(&mut self, host: &[f32]) -> Result<DevBuf> {
        self.upload_new(host)
    }

    /// One f32 timestep per sample in a fresh arena buffer (the caller gives it back), from
    /// the caller's f32 device tensor `t` of one value per sample or one for all; a kernel
    /// copies it, so nothing is read on the host.
    pub fn per_sample_timesteps(&mut self, t: &Tensor, b: usize) -> Result<DevBuf> {
        let out = self.arena.take(self.dev, b)?;
        // with no input: out[r] = t[r mod t.numel]
        self.rows(None, b, 1, None, Some((t.ptr, t.numel)), false, out.ptr)?;
        Ok(out)
    }
}

impl Backend for DeviceBackend<'_> {
    type Buf = DevBuf;

    fn take(&mut self, len: usize) -> Result<DevBuf> {
        self.arena.take(self.dev, len)
    }

    fn give(&mut self, b: DevBuf) {
        self.arena.give(b)
    }

    fn conv2d(
        &mut self,
        x: Segs<'_, DevBuf>,
        dims: Dims,
        w: &Weight,
        cout: usize,
        g: Geometry,
        e: Epilogue<'_, DevBuf>,
        out: &mut DevBuf,
    ) -> Result<()> {
        let cin: usize = x.iter().map(|s| s.1).sum();
        let kk = cin * g.k * g.k;
        let od = g.out_dims(dims);
        let n = od.n();
        if w.len() != cout * kk || out.len != cout * n {
            return Err(RdiffError::Cuda(
                "conv2d: weight or output size mismatch".into(),
            ));
        }
        if !e.keep {
            let (r0, r0_ch, r1) = match e.residual {
                Some(r) => {
                    let (a, ca, b) = two_segs(r, "residual")?;
                    (Some(a), ca, b)
                }
                None => (None, 0, None),
            };
            let bias = match e.bias {
                Some(b) if !b.is_empty() => self.w(b)?,
                _ => KernelArg::Ptr(0),
            };
            let bias2 = match e.bias2 {
                Some(b) => self.w(b)?,
                None => KernelArg::Ptr(0),
            };
            let temb_stride = e.temb.map_or(0, |t| t.len / od.b);
            self.elementwise(
                "rdiff_unet_conv_init_f32",
                cout * n,
                &[
                    KernelArg::Ptr(out.ptr),
                    i(cout),
                    i(n),
                    i(od.hw()),
                    bias,
                    bias2,
                    ptr(e.temb),
                    i(temb_stride),
                    ptr(r0),
                    i(r0_ch),
                    ptr(r1),
                ],
            )?;
        }
        let beta0 = if e.keep { 1.0 } else { e.scale };
        let wp = self.wptr(w)?;
        let (half, compute) = (self.half(), self.compute);
        let direct = g.k == 1 && g.stride == 1 && !g.upsample && g.pad == [0; 4];
        if direct {
            // A bf16 or f16 model's input is rounded first, all its segments into one operand
            // (cuBLAS multiplies two operands of one type); an f32 model's segments are read
            // where they lie, each against its columns of the weights.
            let xh = if half {
                Some(self.narrow(x, cin, n)?)
            } else {
                None
            };
            let one;
            let operands = match &xh {
                Some(b) => {
                    one = [(b, cin)];
                    &one[..]
                }
                None => x,
            };
            let (mut ci0, mut done) = (0, Ok(()));
            for (s, &(seg, sc)) in operands.iter().enumerate() {
                done = self.dev.gemm(&Gemm {
                    m: cout,
                    n,
                    k: sc,
                    a: wp + 4 * ci0 as u64, // (f32 segments only: a 16-bit operand is one)
                    a_rs: kk,
                    a_cs: 1,
                    a_bs: 0,
                    b: seg.ptr,
                    b_rs: n,
                    b_cs: 1,
                    b_bs: 0,
                    c: out.ptr,
                    c_rs: n,
                    c_bs: 0,
                    batch: 1,
                    alpha: e.scale,
                    beta: if s == 0 { beta0 } else { 1.0 },
                    compute,
                    half_operands: half,
                });
                if done.is_err() {
                    break;
                }
                ci0 += sc;
            }
            if let Some(b) = xh {
                self.arena.give(b);
            }
            return done;
        }
        let tn = n.min((COLS_CAP / kk).max(1));
        // a bf16 or f16 model's columns in its 16-bit type, two to an f32 word
        let cols = self
            .arena
            .take(self.dev, if half { (kk * tn).div_ceil(2) } else { kk * tn })?;
        let im2col = format!(
            "rdiff_unet_im2col_{}",
            if half { compute.suffix() } else { "f32" }
        );
        let mut c0 = 0;
        while c0 < n {
            let t = tn.min(n - c0);
            let mut ci0 = 0;
            for &(seg, sc) in x {
                self.elementwise(
                    &im2col,
                    sc * g.k * g.k * t,
                    &[
                        KernelArg::Ptr(seg.ptr),
                        i(sc),
                        i(dims.b),
                        i(dims.h),
                        i(dims.w),
                        i(g.k),
                        i(g.stride),
                        i(g.pad[0]),
                        i(g.pad[1]),
                        i(g.upsample as usize),
                        i(od.h),
                        i(od.w),
                        i(c0),
                        i(t),
                        KernelArg::Ptr(cols.ptr),
                        i(ci0 * g.k * g.k),
                    ],
                )?;
                ci0 += sc;
            }
            self.dev.gemm(&Gemm {
                m: cout,
                n: t,
                k: kk,
                a: wp,
                a_rs: kk,
                a_cs: 1,
                a_bs: 0,
                b: cols.ptr,
                b_rs: t,
                b_cs: 1,
                b_bs: 0,
                c: out.at(c0),
                c_rs: n,
                c_bs: 0,
                batch: 1,
                alpha: e.scale,
                beta: beta0,
                compute,
                half_operands: half,
            })?;
            c0 += t;
        }
        self.arena.give(cols);
        Ok(())
    }

    fn group_norm(
        &mut self,
        x: Segs<'_, DevBuf>,
        dims: Dims,
        p: GroupNormParams<'_>,
        scale_shift: Option<&DevBuf>,
        silu: bool,
        out: &mut DevBuf,
    ) -> Result<()> {
        let c: usize = x.iter().map(|s| s.1).sum();
        let (x0, c0, x1) = two_segs(x, "group_norm")?;
        if p.groups == 0 || !c.is_multiple_of(p.groups) || p.groups > 65535 * 1024 || dims.b > 65535
        {
            return Err(RdiffError::Cuda(
                "group_norm: bad group count or batch".into(),
            ));
        }
        let (gamma, beta) = (self.w(p.gamma)?, self.w(p.beta)?);
        self.dev.launch(
            "rdiff_unet_group_norm_f32",
            Dim3::new(p.groups as u32, dims.b as u32, 1),
            Dim3::x(self.dev.block_threads()),
            0,
            &[
                KernelArg::Ptr(x0.ptr),
                i(c0),
                ptr(x1),
                i(c),
                i(dims.b),
                i(dims.hw()),
                i(p.groups),
                KernelArg::F32(p.eps),
                gamma,
                beta,
                ptr(scale_shift),
                i(silu as usize),
                KernelArg::Ptr(out.ptr),
            ],
        )
    }

    fn linear(
        &mut self,
        x: &DevBuf,
        rows: usize,
        w: &Weight,
        bias: &[f32],
        out: &mut DevBuf,
    ) -> Result<()> {
        let (fin, fout) = (x.len / rows, out.len / rows);
        if w.len() != fin * fout || bias.len() != fout {
            return Err(RdiffError::Cuda("linear: weight size mismatch".into()));
        }
        self.rows(None, rows, fout, Some(bias), None, false, out.ptr)?;
        let wp = self.wptr(w)?;
        let xh = if self.half() {
            Some(self.narrow(&[(x, rows)], rows, fin)?)
        } else {
            None
        };
        let done = self.dev.gemm(&Gemm {
            m: rows,
            n: fout,
            k: fin,
            a: xh.as_ref().map_or(x.ptr, |b| b.ptr),
            a_rs: fin,
            a_cs: 1,
            a_bs: 0,
            b: wp,
            b_rs: 1,
            b_cs: fin,
            b_bs: 0,
            c: out.ptr,
            c_rs: fout,
            c_bs: 0,
            batch: 1,
            alpha: 1.0,
            beta: 1.0,
            compute: self.compute,
            half_operands: xh.is_some(),
        });
        if let Some(b) = xh {
            self.arena.give(b);
        }
        done
    }

    fn attention(
        &mut self,
        q: Tokens<'_, DevBuf>,
        k: Tokens<'_, DevBuf>,
        v: Tokens<'_, DevBuf>,
        b: usize,
        heads: usize,
        dh: usize,
        out: &mut DevBuf,
    ) -> Result<()> {
        let (tq, tk) = (q.t, k.t);
        let (nq, nk) = (b * tq, b * tk);
        let inner = heads * dh;
        if v.t != tk || out.len != inner * nq {
            return Err(RdiffError::Cuda(
                "attention: key/value or output size mismatch".into(),
            ));
        }
        let scale = 1.0 / (dh as f32).sqrt();
        let args = [
            KernelArg::Ptr(q.buf.at(q.row * nq)),
            KernelArg::Ptr(k.buf.at(k.row * nk)),
            KernelArg::Ptr(v.buf.at(v.row * nk)),
            i(heads),
            i(dh),
            i(b),
            i(tq),
            i(tk),
            KernelArg::F32(scale),
            KernelArg::Ptr(out.ptr),
        ];
        // A fused kernel on tensor cores: bf16, f16 and TF32 math for heads up to 160 wide,
        // float32 math for heads up to 64 from LIBRARY_ATTENTION_MIN query × key
        // pairs (emulated: past FLASH_EMULATED_MAX), whatever the GEMMs; at every size on a
        // device (emulated: up to MMA_EMULATED_MAX; grid.y is b · heads, at most 65,535).
        // Otherwise the f32 rules below, their GEMMs in that math.
        let emulated = self.dev.emulated();
        // Small enough for the fused f32 kernel below, wherever the GEMMs run.
        let flash_max = if emulated {
            FLASH_EMULATED_MAX
        } else {
            LIBRARY_ATTENTION_MIN - 1
        };
        let small = tq * tk <= flash_max;
        let math = match self.compute {
            ComputeDtype::Bf16 => Some(0),
            ComputeDtype::F16 => Some(1),
            ComputeDtype::Tf32 => Some(2),
            ComputeDtype::F32 => (!small).then_some(3),
        };
        let width = MMA_WIDTHS.iter().position(|&w| dh <= w);
        if let Some(kernel) = math.zip(width).and_then(|(m, w)| MMA_KERNELS[m][w]) {
            if b * heads <= 65535 && (!emulated || tq * tk <= MMA_EMULATED_MAX) {
                let grid = Dim3::new(tq.div_ceil(MMA_QUERIES) as u32, (b * heads) as u32, 1);
                return self
                    .dev
                    .launch(kernel, grid, Dim3::x(MMA_THREADS), 0, &args);
            }
        }
        // The fused f32 kernel. The emulated launcher runs a block's threads as host threads,
        // so its per-tile barriers make it slow there: emulation uses it on small problems
        // only (which still checks it against the CPU); a device unless its GEMMs are
        // cuBLAS's and the problem is large.
        let fused = small || !(emulated || self.dev.library_gemm());
        // (grid.y is b · heads, at most 65,535; the two GEMMs below loop over both instead)
        if dh <= FLASH_MAX_DH && fused && b * heads <= 65535 {
            // One fused kernel: no score matrix in memory.
            let threads = self.dev.block_threads();
            let per_block = (threads as usize / FLASH_LANES).max(1);
            let grid = Dim3::new(tq.div_ceil(per_block) as u32, (b * heads) as u32, 1);
            return self.dev.launch(
                "rdiff_unet_flash_attention_f32",
                grid,
                Dim3::x(threads),
                0,
                &args,
            );
        }
        // Two GEMMs around a column softmax, the scores of `hc` heads at a time in memory.
        let hc = heads.min((SCORES_MAX / (tq * tk).max(1)).max(1));
        let s = self.arena.take(self.dev, hc * tq * tk)?;
        for bi in 0..b {
            for h0 in (0..heads).step_by(hc) {
                let hn = hc.min(heads - h0);
                let (qr, kr) = (q.row + h0 * dh, k.row + h0 * dh);
                let vr = v.row + h0 * dh;
                // Sᵀ_h[j][i] = scale · Σ_d K_h(d, j) Q_h(d, i), key-major (queries contiguous).
                self.dev.gemm(&Gemm {
                    m: tk,
                    n: tq,
                    k: dh,
                    a: k.buf.at(kr * nk + bi * tk),
                    a_rs: 1,
                    a_cs: nk,
                    a_bs: dh * nk,
                    b: q.buf.at(qr * nq + bi * tq),
                    b_rs: nq,
                    b_cs: 1,
                    b_bs: dh * nq,
                    c: s.ptr,
                    c_rs: tq,
                    c_bs: tq * tk,
                    batch: hn,
                    alpha: scale,
                    beta: 0.0,
                    compute: self.compute,
                    half_operands: false,
                })?;
                self.elementwise(
                    "rdiff_unet_softmax_cols_f32",
                    hn * tq,
                    &[KernelArg::Ptr(s.ptr), i(hn), i(tk), i(tq)],
                )?;
                // O_h(d, i) = Σ_j V_h(d, j) Pᵀ_h[j][i].
                self.dev.gemm(&Gemm {
                    m: dh,
                    n: tq,
                    k: tk,
                    a: v.buf.at(vr * nk + bi * tk),
                    a_rs: nk,
                    a_cs: 1,
                    a_bs: dh * nk,
                    b: s.ptr,
                    b_rs: tq,
                    b_cs: 1,
                    b_bs: tq * tk,
                    c: out.at(h0 * dh * nq + bi * tq),
                    c_rs: nq,
                    c_bs: dh * nq,
                    batch: hn,
                    alpha: 1.0,
                    beta: 0.0,
                    compute: self.compute,
                    half_operands: false,
                })?;
            }
        }
        self.arena.give(s);
        Ok(())
    }

    fn layer_norm(
        &mut self,
        x: &DevBuf,
        n: usize,
        p: LayerNormParams<'_>,
        out: &mut DevBuf,
    ) -> Result<()> {
        let c = p.gamma.len();
        if x.len != c * n || out.len != c * n {
            return Err(RdiffError::Cuda("layer_norm: size mismatch".into()));
        }
        let (g, b) = (self.w(p.gamma)?, self.w(p.beta)?);
        self.elementwise(
            "rdiff_unet_layer_norm_f32",
            n,
            &[
                KernelArg::Ptr(x.ptr),
                i(c),
                i(n),
                KernelArg::F32(p.eps),
                g,
                b,
                KernelArg::Ptr(out.ptr),
            ],
        )
    }

    fn geglu(&mut self, x: &DevBuf, inner: usize, n: usize, out: &mut DevBuf) -> Result<()> {
        if x.len != 2 * inner * n || out.len != inner * n {
            return Err(RdiffError::Cuda("geglu: size mismatch".into()));
        }
        self.elementwise(
            "rdiff_unet_geglu_f32",
            inner * n,
            &[
                KernelArg::Ptr(x.ptr),
                i(inner),
                i(n),
                KernelArg::Ptr(out.ptr),
            ],
        )
    }

    fn upsample2x(&mut self, x: &DevBuf, c: usize, d: Dims, out: &mut DevBuf) -> Result<()> {
        self.elementwise(
            "rdiff_unet_upsample2x_f32",
            4 * c * d.n(),
            &[
                KernelArg::Ptr(x.ptr),
                i(c * d.b),
                i(d.h),
                i(d.w),
                KernelArg::Ptr(out.ptr),
            ],
        )
    }

    fn avg_pool2x(&mut self, x: &DevBuf, c: usize, d: Dims, out: &mut DevBuf) -> Result<()> {
        self.elementwise(
            "rdiff_unet_avgpool2x_f32",
            c * d.b * (d.h / 2) * (d.w / 2),
            &[
                KernelArg::Ptr(x.ptr),
                i(c * d.b),
                i(d.h),
                i(d.w),
                KernelArg::Ptr(out.ptr),
            ],
        )
    }

    fn copy(&mut self, src: &DevBuf, dst: &mut DevBuf) -> Result<()> {
        self.rows(Some(src.ptr), 1, src.len, None, None, false, dst.ptr)
    }

    fn add_nchw(&mut self, x: &Tensor, dst: &mut Act<DevBuf>) -> Result<()> {
        let t = dtype_suffix(x.dtype).ok_or_else(|| {
            RdiffError::Type(format!(
                "control residuals: the CUDA UNet takes float32, float16 or bfloat16, got {}",
                x.dtype.name()
            ))
        })?;
        let (b, hw) = (dst.dims.b, dst.dims.hw());
        assert_eq!(
            x.numel,
            dst.c * b * hw,
            "residual shape checked by the caller"
        );
        self.elementwise(
            &format!("rdiff_unet_nchw_add_{t}"),
            x.numel,
            &[
                KernelArg::Ptr(x.ptr),
                i(b),
                i(dst.c),
                i(hw),
                KernelArg::Ptr(dst.buf.ptr),
            ],
        )
    }

    fn time_embedding(
        &mut self,
        te: &TimeEmbedding,
        ts: Timesteps<'_>,
        cond: &Conditioning<'_>,
    ) -> Result<DevBuf> {
        let b = ts.count();
        // Host-side checks and the small host-side parts first (the class and added
        // embeddings, a learned or conditioned projection): nothing is launched for a bad call.
        let class_rows = te.added_rows(b, cond)?;
        let d0 = te.dim0;
        let host_proj = if te.projects_on_host(cond)? {
            te.host_projection(ts.host()?, cond)?
        } else {
            None
        };
        let proj = match (host_proj, te.kind) {
            (Some(p), _) => self.upload_new(&p)?,
            (None, kind) => {
                // device timesteps are read in place; host ones are uploaded for the call
                let (tsd, uploaded) = match ts {
                    Timesteps::Host(v) => {
                        let u = self.upload_new(v)?;
                        (u.ptr, Some(u))
                    }
                    Timesteps::Device(t) => (t.ptr, None),
                };
                let fourier = kind == TimeEmbeddingType::Fourier;
                let pd = if fourier { 2 * te.fourier_w.len() } else { d0 };
                let proj = self.arena.take(self.dev, b * pd)?;
                let fw = if fourier {
                    self.w(&te.fourier_w)?
                } else {
                    KernelArg::Ptr(0)
                };
                let neg_log = -(10000f64.ln()) as f32;
                let denom = ((d0 / 2) as f64 - te.shift) as f32;
                self.elementwise(
                    "rdiff_unet_time_proj_f32",
                    b * d0,
                    &[
                        KernelArg::Ptr(tsd),
                        i(b),
                        i(pd),
                        i(fourier as usize),
                        i(te.flip as usize),
                        KernelArg::F32(neg_log),
                        KernelArg::F32(denom),
                        fw,
                        KernelArg::Ptr(proj.ptr),
                    ],
                )?;
                if let Some(u) = uploaded {
                    self.arena.give(u);
                }
                proj
            }
        };
        let mlp = &te.mlp;
        let mut h = self.arena.take(self.dev, b * mlp.hidden)?;
        self.linear(&proj, b, &mlp.w1, &mlp.b1, &mut h)?;
        self.rows(Some(h.ptr), b, mlp.hidden, None, None, true, h.ptr)?;
        let mut emb = self.arena.take(self.dev, b * mlp.hidden)?;
        self.linear(&h, b, &mlp.w2, &mlp.b2, &mut emb)?;
        let rows = match &class_rows {
            Some(r) => Some((self.upload_new(r)?, r.len() / mlp.hidden)),
            None => None,
        };
        self.rows(
            Some(emb.ptr),
            b,
            mlp.hidden,
            None,
            rows.as_ref().map(|(r, n)| (r.ptr, *n)),
            true,
            h.ptr,
        )?;
        self.arena.give(proj);
        self.arena.give(emb);
        if let Some((r, _)) = rows {
            self.arena.give(r);
        }
        Ok(h)
    }
}
