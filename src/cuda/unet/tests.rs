//! Each UNet kernel through the emulated launcher against its CPU counterpart
//! (`unet::backend::CpuBackend`, `unet::embeddings`), on odd sizes and misaligned pointers.

use half::{bf16, f16};

use super::backend::{DevBuf, DeviceArena, DeviceBackend, DeviceWeights};
use super::device::{column_major, EmulatedDevice, Gemm, UnetDevice};
use crate::cpu::arena::{Arena, Buf};
use crate::cpu::layer_norm::LayerNormParams;
use crate::cpu::norm::GroupNormParams;
use crate::cpu::unet::CpuBackend;
use crate::cuda::launch::{Dim3, KernelArg, Launcher};
use crate::dtype::Elem;
use crate::unet::backend::{Backend, Epilogue, Tokens};
use crate::unet::embeddings::{fourier, sinusoidal};
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::{ComputeDtype, Weight};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Host memory shifted by one f32 from a 16-byte boundary: a misaligned device buffer.
struct Misaligned {
    store: Vec<f32>,
    off: usize,
    len: usize,
    ptr: u64,
}

impl Misaligned {
    fn new(v: &[f32]) -> Self {
        let mut store = vec![f32::NAN; v.len() + 4];
        let base = store.as_ptr() as usize;
        let off = (0..4).find(|o| (base + 4 * o) % 16 == 4).unwrap();
        store[off..off + v.len()].copy_from_slice(v);
        let ptr = store[off..].as_mut_ptr() as u64;
        Self {
            store,
            off,
            len: v.len(),
            ptr,
        }
    }
    fn ptr(&self) -> u64 {
        self.ptr
    }
    fn buf(&self) -> DevBuf {
        DevBuf::raw(self.ptr, self.len)
    }
    fn get(&self) -> &[f32] {
        &self.store[self.off..self.off + self.len]
    }
}

fn cpu_buf(arena: &mut Arena, v: &[f32]) -> Buf {
    let mut b = arena.take(v.len());
    b.copy_from_slice(v);
    b
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: got {g}, want {w} (scale {scale})"
        );
    }
}

/// In f64, with each operand first rounded as `g.compute`'s math rounds it.
fn naive_gemm(g: &Gemm, a: &[f32], b: &[f32], c0: &[f32]) -> Vec<f32> {
    let operand = |v: f32| g.compute.round_operand(v) as f64;
    let mut c = c0.to_vec();
    for z in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                let mut acc = 0.0f64;
                for k in 0..g.k {
                    acc += operand(a[z * g.a_bs + i * g.a_rs + k * g.a_cs])
                        * operand(b[z * g.b_bs + k * g.b_rs + j * g.b_cs]);
                }
                let p = z * g.c_bs + i * g.c_rs + j;
                let prev = if g.beta == 0.0 {
                    0.0
                } else {
                    g.beta as f64 * c0[p] as f64
                };
                c[p] = (prev + g.alpha as f64 * acc) as f32;
            }
        }
    }
    c
}

/// `v` as 16-bit values of `compute`'s type, one element off a 4-byte boundary: a GEMM's
/// half-precision operand, misaligned. (The store, and the pointer into it.)
fn half_operand(v: &[f32], compute: ComputeDtype) -> (Vec<u16>, u64) {
    let mut store = vec![0u16; v.len() + 2];
    let off = if (store.as_ptr() as usize).is_multiple_of(4) {
        1
    } else {
        0
    };
    for (d, &x) in store[off..].iter_mut().zip(v) {
        *d = match compute {
            ComputeDtype::F16 => f16::from_f32(x).to_bits(),
            _ => bf16::from_f32(x).to_bits(),
        };
    }
    let p = store[off..].as_ptr() as u64;
    (store, p)
}

/// The GEMM kernel (emulated) and the CPU stand-in against a naive product: odd shapes,
/// both operand layouts, batches, beta = 0 over NaN, misaligned operands; in f32, bf16, f16 and
/// tf32 math (operands rounded to that type: the naive product rounds them the same way, and an
/// operand left unrounded, or rounded to the other type, would miss it by far more than the
/// tolerance), on f32 operands and, for bf16 and f16, on operands stored in that type
/// (`rdiff_gemm_bf16` / `_f16`; a half-precision model's weights and columns).
#[test]
fn gemm_kernel_and_cpu_stand_in_match_naive() {
    let maths = [
        (ComputeDtype::F32, false),
        (ComputeDtype::Bf16, false),
        (ComputeDtype::F16, false),
        (ComputeDtype::Tf32, false),
        (ComputeDtype::Bf16, true),
        (ComputeDtype::F16, true),
    ];
    for (kernel_gemm, (compute, half_operands)) in [true, false]
        .into_iter()
        .flat_map(|k| maths.map(|c| (k, c)))
    {
        let dev = EmulatedDevice::new(4, 0, kernel_gemm);
        for (m, n, k, ta, tb, batch, beta) in [
            (70, 45, 19, false, false, 1, 0.3f32),
            (5, 67, 33, true, true, 2, 0.0),
            (64, 1, 7, false, true, 3, 1.0),
            (1, 9, 4, false, true, 1, 0.0),
            (6, 5, 1, true, false, 2, 0.5),
            (3, 8, 6, true, false, 1, 0.0),
        ] {
            let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
            let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
            let mut g = Gemm {
                m,
                n,
                k,
                a: 0,
                a_rs,
                a_cs,
                a_bs: m * k,
                b: 0,
                b_rs,
                b_cs,
                b_bs: k * n,
                c: 0,
                c_rs: n + 3,
                c_bs: m * (n + 3),
                batch,
                alpha: 0.7,
                beta,
                compute,
                half_operands,
            };
            let a = Misaligned::new(&values(batch * m * k, 1));
            let b = Misaligned::new(&values(batch * k * n, 2));
            let (_a16, a16) = half_operand(a.get(), compute);
            let (_b16, b16) = half_operand(b.get(), compute);
            let mut c0 = values(batch * m * (n + 3), 3);
            if beta == 0.0 {
                c0.iter_mut().for_each(|v| *v = f32::NAN);
            }
            let c = Misaligned::new(&c0);
            (g.a, g.b, g.c) = if half_operands {
                (a16, b16, c.ptr())
            } else {
                (a.ptr(), b.ptr(), c.ptr())
            };
            dev.gemm(&g).unwrap();
            if half_operands {
                let f32_math = Gemm {
                    compute: ComputeDtype::F32,
                    ..g
                };
                let e = dev.gemm(&f32_math).unwrap_err().to_string();
                assert!(e.contains("16-bit operands need bf16 or f16"), "{e}");
            }
            let want = naive_gemm(&g, a.get(), b.get(), &c0);
            // Padding columns of C stay as they were (NaN included).
            for (i, (x, y)) in c.get().iter().zip(&want).enumerate() {
                if (i % g.c_bs) % (n + 3) >= n {
                    assert!(x.to_bits() == c0[i].to_bits(), "padding written at {i}");
                } else {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{kernel_gemm} {i}: {x} {y}"
                    );
                }
            }
        }
    }
}

/// cuBLAS's column-major form of the UNet's GEMMs: which layouts have one, and that the CPU
/// stand-in running that form (as the real device hands it to cuBLAS) gives the naive product,
/// also for operands without a unit stride (no cuBLAS form: the kernel's path).
#[test]
fn column_major_form_matches_naive() {
    let base = Gemm {
        m: 5,
        n: 7,
        k: 3,
        a: 0,
        a_rs: 3,
        a_cs: 1,
        a_bs: 15,
        b: 0,
        b_rs: 7,
        b_cs: 1,
        b_bs: 21,
        c: 0,
        c_rs: 7,
        c_bs: 35,
        batch: 1,
        alpha: 1.0,
        beta: 0.0,
        compute: ComputeDtype::F32,
        half_operands: false,
    };
    let cm = column_major(&base).unwrap();
    // Cᵀ = Bᵀ·Aᵀ: B row-major is a column-major Bᵀ (no transpose), likewise A.
    assert_eq!(
        (cm.m, cm.n, cm.k, cm.trans_a, cm.trans_b),
        (7, 5, 3, false, false)
    );
    assert_eq!((cm.lda, cm.ldb, cm.ldc), (7, 3, 7));
    let t = column_major(&Gemm {
        a_rs: 1,
        a_cs: 5,
        b_rs: 1,
        b_cs: 3,
        ..base
    })
    .unwrap();
    assert_eq!((t.trans_a, t.trans_b, t.lda, t.ldb), (true, true, 3, 5));
    let strided = Gemm {
        a_rs: 6,
        a_cs: 2,
        a_bs: 30,
        ..base
    };
    assert!(column_major(&strided).is_none());
    assert!(
        column_major(&Gemm { c_rs: 6, ..base }).is_none(),
        "ldc below the rows"
    );
    let dev = EmulatedDevice::new(4, 0, false);
    let a = Misaligned::new(&values(30, 4));
    let b = Misaligned::new(&values(21, 5));
    let c = Misaligned::new(&values(35, 6));
    let g = Gemm {
        a: a.ptr(),
        b: b.ptr(),
        c: c.ptr(),
        ..strided
    };
    dev.gemm(&g).unwrap();
    let want = naive_gemm(&g, a.get(), b.get(), &values(35, 6));
    for (x, y) in c.get().iter().zip(&want) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} {y}");
    }
}

struct Both {
    dev: EmulatedDevice,
    arena: DeviceArena,
    weights: DeviceWeights,
    cpu: Arena,
}

impl Both {
    fn new(kernel_gemm: bool) -> Self {
        Self {
            dev: EmulatedDevice::new(3, 0, kernel_gemm),
            arena: DeviceArena::default(),
            weights: DeviceWeights::default(),
            cpu: Arena::default(),
        }
    }
}

/// Every convolution geometry the UNet uses, with every epilogue term, two input segments.
#[test]
fn conv2d_matches_cpu() {
    let dims = Dims { b: 2, h: 6, w: 5 };
    let (c1, c2, cout) = (3, 2, 5);
    let cin = c1 + c2;
    let x1 = values(c1 * dims.n(), 4);
    let x2 = values(c2 * dims.n(), 5);
    let bias = values(cout, 6);
    let bias2 = values(cout, 7);
    let temb = values(dims.b * cout, 8);
    let geoms = [
        Geometry::SAME3,
        Geometry::POINT,
        Geometry {
            k: 3,
            stride: 2,
            pad: [0, 0, 1, 1],
            upsample: false,
        },
        Geometry {
            k: 3,
            stride: 2,
            pad: [1; 4],
            upsample: false,
        },
        Geometry {
            upsample: true,
            ..Geometry::SAME3
        },
    ];
    for (gi, g) in geoms.into_iter().enumerate() {
        let od = g.out_dims(dims);
        // Every other geometry with an f16 checkpoint's weight (widened before the product).
        let w = values(cout * cin * g.k * g.k, 9 + gi as u64);
        let w = if gi % 2 == 1 {
            Weight::F16(w.iter().map(|&v| f16::from_f32(v)).collect())
        } else {
            Weight::F32(w)
        };
        let resid = values(cout * od.n(), 20);
        let start = values(cout * od.n(), 21);
        let maths = [ComputeDtype::F32, ComputeDtype::Bf16, ComputeDtype::F16];
        for (keep, compute) in [false, true]
            .into_iter()
            .flat_map(|k| maths.map(|c| (k, c)))
        {
            let mut t = Both::new(gi % 2 == 0);
            // CPU: in f32 on the operands a bf16 or f16 model's GEMM sees (rounded once)
            let round =
                |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| compute.round_operand(x)).collect() };
            let (x1r, x2r) = (round(&x1), round(&x2));
            let wr = Weight::F32(round(&w.to_f32()));
            let mut cpu = CpuBackend {
                arena: &mut t.cpu,
                bf16: false,
            };
            let (a, b) = (cpu_buf(cpu.arena, &x1r), cpu_buf(cpu.arena, &x2r));
            let (tb, r0) = (cpu_buf(cpu.arena, &temb), cpu_buf(cpu.arena, &resid));
            let mut out = cpu_buf(cpu.arena, &start);
            let same = od == dims;
            let rs = [(&r0, cout)];
            let e = Epilogue {
                bias: Some(&bias[..]),
                bias2: Some(&bias2[..]),
                temb: Some(&tb),
                residual: if same { Some(&rs[..]) } else { None },
                keep,
                scale: 0.7,
            };
            cpu.conv2d(&[(&a, c1), (&b, c2)], dims, &wr, cout, g, e, &mut out)
                .unwrap();
            // Device, misaligned buffers
            let mut dev = DeviceBackend {
                dev: &t.dev,
                arena: &mut t.arena,
                weights: &mut t.weights,
                compute,
            };
            let (da, db) = (Misaligned::new(&x1), Misaligned::new(&x2));
            let (dt, dr) = (Misaligned::new(&temb), Misaligned::new(&resid));
            let dout = Misaligned::new(&start);
            let (ba, bb, bt, br) = (da.buf(), db.buf(), dt.buf(), dr.buf());
            let drs = [(&br, cout)];
            let e = Epilogue {
                bias: Some(&bias[..]),
                bias2: Some(&bias2[..]),
                temb: Some(&bt),
                residual: if same { Some(&drs[..]) } else { None },
                keep,
                scale: 0.7,
            };
            dev.conv2d(
                &[(&ba, c1), (&bb, c2)],
                dims,
                &w,
                cout,
                g,
                e,
                &mut dout.buf(),
            )
            .unwrap();
            let what = format!("conv {g:?} keep={keep} {compute:?}");
            close(dout.get(), &out, 1e-5, &what);
            // the matrix stored in the math's type: 2 bytes an element, else 4 (the two
            // biases 4, read unless `keep`)
            let size = if compute == ComputeDtype::F32 { 4 } else { 2 };
            let biases = if keep { 0 } else { 4 * 2 * cout };
            assert_eq!(t.weights.bytes, size * w.len() + biases, "{what}");
        }
    }
}

/// GroupNorm with groups straddling two segments, scale/shift, with and without SiLU.
#[test]
fn group_norm_matches_cpu() {
    let dims = Dims { b: 3, h: 5, w: 7 };
    let (c1, c2) = (2, 4);
    let c = c1 + c2;
    let x1: Vec<f32> = values(c1 * dims.n(), 30)
        .iter()
        .map(|v| v * 3.0 + 5.0)
        .collect();
    let x2 = values(c2 * dims.n(), 31);
    let gamma = values(c, 32);
    let beta = values(c, 33);
    let ss = values(dims.b * 2 * c, 34);
    let p = GroupNormParams {
        groups: 2,
        eps: 1e-5,
        gamma: &gamma,
        beta: &beta,
    };
    for (silu, with_ss) in [(false, false), (true, true), (true, false)] {
        let mut t = Both::new(false);
        let mut cpu = CpuBackend {
            arena: &mut t.cpu,
            bf16: false,
        };
        let (a, b, s) = (
            cpu_buf(cpu.arena, &x1),
            cpu_buf(cpu.arena, &x2),
            cpu_buf(cpu.arena, &ss),
        );
        let mut out = cpu.arena.take(c * dims.n());
        let sref = if with_ss { Some(&s) } else { None };
        cpu.group_norm(&[(&a, c1), (&b, c2)], dims, p, sref, silu, &mut out)
            .unwrap();
        let mut dev = DeviceBackend {
            dev: &t.dev,
            arena: &mut t.arena,
            weights: &mut t.weights,
            compute: ComputeDtype::F32,
        };
        let (da, db, ds) = (
            Misaligned::new(&x1),
            Misaligned::new(&x2),
            Misaligned::new(&ss),
        );
        let dout = Misaligned::new(&vec![0.0; c * dims.n()]);
        let (ba, bb, bs) = (da.buf(), db.buf(), ds.buf());
        let dref = if with_ss { Some(&bs) } else { None };
        dev.group_norm(
            &[(&ba, c1), (&bb, c2)],
            dims,
            p,
            dref,
            silu,
            &mut dout.buf(),
        )
        .unwrap();
        close(dout.get(), &out, 2e-5, "group_norm");
    }
}

/// `be`'s attention of `q` against keys and values stacked in `kv` (k at row 0, v at row
/// `heads · dh`), as the transformers pass them.
fn attend<B: Backend>(
    be: &mut B,
    q: &B::Buf,
    kv: &B::Buf,
    (b, heads, dh, tq, tk): (usize, usize, usize, usize, usize),
    out: &mut B::Buf,
) {
    let tok = |buf, row, t| Tokens { buf, row, t };
    let (k, v) = (tok(kv, 0, tk), tok(kv, heads * dh, tk));
    be.attention(tok(q, 0, tq), k, v, b, heads, dh, out)
        .unwrap();
}

/// The device's attention (`compute` math) and the CPU's f32 attention on the same operands,
/// stacked as the transformers pass them: q from one buffer, k and v from another at rows 0
/// and `heads · dh`. Returns both outputs and the device's launches of `kernel`.
fn attention_pair(
    shape: (usize, usize, usize, usize, usize),
    compute: ComputeDtype,
    kernel_gemm: bool,
    kernel: &str,
) -> (Vec<f32>, Vec<f32>, usize) {
    let (b, heads, dh, tq, tk) = shape;
    let inner = heads * dh;
    let q = values(inner * b * tq, 40);
    let kv = values(2 * inner * b * tk, 41);
    let mut t = Both::new(kernel_gemm);
    let mut cpu = CpuBackend {
        arena: &mut t.cpu,
        bf16: false,
    };
    let (cq, ckv) = (cpu_buf(cpu.arena, &q), cpu_buf(cpu.arena, &kv));
    let mut out = cpu.arena.take(inner * b * tq);
    attend(&mut cpu, &cq, &ckv, shape, &mut out);
    let mut dev = DeviceBackend {
        dev: &t.dev,
        arena: &mut t.arena,
        weights: &mut t.weights,
        compute,
    };
    let (dq, dkv) = (Misaligned::new(&q), Misaligned::new(&kv));
    let dout = Misaligned::new(&vec![0.0; inner * b * tq]);
    attend(&mut dev, &dq.buf(), &dkv.buf(), shape, &mut dout.buf());
    (dout.get().to_vec(), out.to_vec(), t.dev.launches_of(kernel))
}

/// Attention (the fused f32 kernel, or two GEMMs around the column softmax) against the CPU's
/// blocked attention: self-attention from one stacked buffer, and cross-attention with fewer
/// key tokens.
#[test]
fn attention_matches_cpu() {
    for (shape, fused) in [
        ((2, 3, 4, 15, 15), true),
        ((2, 3, 4, 15, 7), true),
        // Several key tiles, a ragged last one, a head wider than one pass of lanes.
        ((1, 2, 40, 21, 37), true),
        // Past the fused kernel's widest head: the GEMM path.
        ((1, 1, 264, 9, 5), false),
        // Past the emulated fused kernel's size, heads wider than the 3xTF32 kernel's: the
        // GEMM path, one head at a time (the scores' cap is a few KiB in unit tests).
        ((2, 3, 72, 40, 33), false),
        // Past the emulated tensor-core kernels' size: the GEMM path.
        ((1, 2, 8, 160, 150), false),
    ] {
        for kernel_gemm in [true, false] {
            let kernel = "rdiff_unet_flash_attention_f32";
            let (got, want, n) = attention_pair(shape, ComputeDtype::F32, kernel_gemm, kernel);
            close(&got, &want, 1e-5, "attention");
            assert_eq!(n, usize::from(fused), "{shape:?}");
        }
    }
}

/// Float32 math past the fused f32 kernel's (emulated) size, heads up to 64 wide: the
/// tensor-core kernel with every operand split into two TF32 parts (3xTF32), whose error is
/// f32's order (TF32 alone: 3e-4 on these shapes), against the CPU's f32 attention. Heads
/// padded to 8 dims, ragged query blocks and key tiles, cross-attention.
#[test]
fn attention_in_f32_on_tensor_cores_matches_cpu() {
    for shape in [
        (2, 3, 8, 40, 33),
        (1, 2, 40, 70, 77),
        (2, 1, 64, 64, 64),
        (1, 1, 61, 33, 97),
    ] {
        let kernel = "rdiff_unet_attention_mma_3xtf32_d64";
        let (got, want, n) = attention_pair(shape, ComputeDtype::F32, false, kernel);
        assert_eq!(n, 1, "{shape:?}");
        let err = rel_l2(&got, &want);
        assert!(err <= 2e-6, "{shape:?}: rel {err:.2e}");
        close(&got, &want, 1e-5, kernel);
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| ((g - w) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// bf16, f16 and TF32 math: the tensor-core kernels (their fragments exchanged by the emulated
/// warp, `rd_mma_16816`'s and `rd_mma_1688_tf32`'s host branches) against the CPU's f32
/// attention. Heads padded to 16 (8) dims, the widest head, ragged query blocks and key
/// tiles, cross-attention with 3 keys. The error is the operands' rounding: bf16's about 8×
/// f16's and TF32's (both 10 mantissa bits), all far above f32's; a misplaced fragment element
/// would be O(1).
#[test]
fn attention_on_tensor_cores_matches_cpu() {
    let shapes = [
        (2, 3, 8, 15, 7),
        (1, 2, 40, 70, 70),
        (2, 1, 64, 64, 64),
        (1, 1, 128, 17, 65),
        (1, 2, 72, 5, 3),
        (1, 2, 160, 20, 7),
    ];
    for (compute, name, lo, hi) in [
        (
            ComputeDtype::Bf16,
            "rdiff_unet_attention_mma_bf16",
            1e-3,
            6e-3,
        ),
        (
            ComputeDtype::F16,
            "rdiff_unet_attention_mma_f16",
            1e-4,
            8e-4,
        ),
        (
            ComputeDtype::Tf32,
            "rdiff_unet_attention_mma_tf32",
            1e-4,
            8e-4,
        ),
    ] {
        for shape in shapes {
            let width = [64, 128, 160].into_iter().find(|&w| shape.2 <= w).unwrap();
            let kernel = format!("{name}_d{width}");
            let (got, want, n) = attention_pair(shape, compute, false, &kernel);
            assert_eq!(n, 1, "{kernel} {shape:?}");
            let err = rel_l2(&got, &want);
            assert!(lo <= err && err <= hi, "{kernel} {shape:?}: rel {err:.2e}");
            close(&got, &want, 40.0 * hi as f32, &kernel);
        }
    }
    // Past the widest head, bf16 math takes the f32 paths (here the fused f32 kernel).
    let shape = (1, 1, 168, 9, 5);
    let flash = "rdiff_unet_flash_attention_f32";
    let (got, want, n) = attention_pair(shape, ComputeDtype::Bf16, false, flash);
    assert_eq!(n, 1);
    assert!(rel_l2(&got, &want) <= 1e-6);
}

/// The transformers' LayerNorm over channels and GEGLU against the CPU's.
#[test]
fn layer_norm_and_geglu_match_cpu() {
    let (c, n) = (20, 77);
    let x = values(c * n, 60);
    let gamma = values(c, 61);
    let beta = values(c, 62);
    let p = LayerNormParams {
        gamma: &gamma,
        beta: &beta,
        eps: 1e-5,
    };
    let mut t = Both::new(false);
    let mut cpu = CpuBackend {
        arena: &mut t.cpu,
        bf16: false,
    };
    let xb = cpu_buf(cpu.arena, &x);
    let mut ln = cpu.arena.take(c * n);
    cpu.layer_norm(&xb, n, p, &mut ln).unwrap();
    let mut gg = cpu.arena.take(c / 2 * n);
    cpu.geglu(&xb, c / 2, n, &mut gg).unwrap();
    let mut dev = DeviceBackend {
        dev: &t.dev,
        arena: &mut t.arena,
        weights: &mut t.weights,
        compute: ComputeDtype::F32,
    };
    let dx = Misaligned::new(&x);
    let dln = Misaligned::new(&vec![0.0; c * n]);
    let dgg = Misaligned::new(&vec![0.0; c / 2 * n]);
    dev.layer_norm(&dx.buf(), n, p, &mut dln.buf()).unwrap();
    dev.geglu(&dx.buf(), c / 2, n, &mut dgg.buf()).unwrap();
    close(dln.get(), &ln, 2e-5, "layer_norm");
    // The kernel's erff and the CPU's erfc fit differ by a few ulps.
    close(dgg.get(), &gg, 1e-5, "geglu");
}

#[test]
fn resampling_linear_and_copy_match_cpu() {
    let (c, dims) = (3, Dims { b: 2, h: 6, w: 10 });
    let x = values(c * dims.n(), 50);
    let xw = values(dims.b * 7, 51);
    let w = values(5 * 7, 52);
    let w = Weight::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect());
    let bias = values(5, 53);
    let mut t = Both::new(false);
    let mut cpu = CpuBackend {
        arena: &mut t.cpu,
        bf16: false,
    };
    let xb = cpu_buf(cpu.arena, &x);
    let mut up = cpu.arena.take(4 * x.len());
    let mut pool = cpu.arena.take(x.len() / 4);
    cpu.upsample2x(&xb, c, dims, &mut up).unwrap();
    cpu.avg_pool2x(&xb, c, dims, &mut pool).unwrap();
    let xl = cpu_buf(cpu.arena, &xw);
    let mut lin = cpu.arena.take(dims.b * 5);
    cpu.linear(&xl, dims.b, &w, &bias, &mut lin).unwrap();
    let mut dev = DeviceBackend {
        dev: &t.dev,
        arena: &mut t.arena,
        weights: &mut t.weights,
        compute: ComputeDtype::F32,
    };
    let dx = Misaligned::new(&x);
    let dup = Misaligned::new(&vec![0.0; 4 * x.len()]);
    let dpool = Misaligned::new(&vec![0.0; x.len() / 4]);
    dev.upsample2x(&dx.buf(), c, dims, &mut dup.buf()).unwrap();
    dev.avg_pool2x(&dx.buf(), c, dims, &mut dpool.buf())
        .unwrap();
    assert_eq!(dup.get(), &up[..]);
    assert_eq!(dpool.get(), &pool[..]);
    let dxl = Misaligned::new(&xw);
    let dlin = Misaligned::new(&vec![0.0; dims.b * 5]);
    dev.linear(&dxl.buf(), dims.b, &w, &bias, &mut dlin.buf())
        .unwrap();
    close(dlin.get(), &lin, 1e-6, "linear");
    let dcopy = Misaligned::new(&vec![0.0; x.len()]);
    dev.copy(&dx.buf(), &mut dcopy.buf()).unwrap();
    assert_eq!(dcopy.get(), &x[..]);
    // A bf16 or f16 model's linear layer: the f32 product of both operands rounded once.
    for compute in [ComputeDtype::Bf16, ComputeDtype::F16] {
        let round =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| compute.round_operand(x)).collect() };
        let mut cpu = CpuBackend {
            arena: &mut t.cpu,
            bf16: false,
        };
        let xl = cpu_buf(cpu.arena, &round(&xw));
        let mut lin = cpu.arena.take(dims.b * 5);
        let wr = Weight::F32(round(&w.to_f32()));
        cpu.linear(&xl, dims.b, &wr, &bias, &mut lin).unwrap();
        let mut dev = DeviceBackend {
            dev: &t.dev,
            arena: &mut t.arena,
            weights: &mut t.weights,
            compute,
        };
        dev.linear(&dxl.buf(), dims.b, &w, &bias, &mut dlin.buf())
            .unwrap();
        close(dlin.get(), &lin, 1e-6, &format!("linear {compute:?}"));
    }
}

fn launch_time_proj(
    dev: &EmulatedDevice,
    ts: &[f32],
    dim: usize,
    fw: Option<&[f32]>,
    flip: bool,
    shift: f64,
) -> Vec<f32> {
    let dts = Misaligned::new(ts);
    let out = Misaligned::new(&vec![f32::NAN; ts.len() * dim]);
    let dfw = fw.map(Misaligned::new);
    let i = |v: usize| KernelArg::I64(v as i64);
    dev.launch(
        "rdiff_unet_time_proj_f32",
        Dim3::x(2),
        Dim3::x(256),
        0,
        &[
            KernelArg::Ptr(dts.ptr()),
            i(ts.len()),
            i(dim),
            i(fw.is_some() as usize),
            i(flip as usize),
            KernelArg::F32(-(10000f64.ln()) as f32),
            KernelArg::F32(((dim / 2) as f64 - shift) as f32),
            KernelArg::Ptr(dfw.as_ref().map_or(0, |f| f.ptr())),
            KernelArg::Ptr(out.ptr()),
        ],
    )
    .unwrap();
    out.get().to_vec()
}

/// The timestep projections against `unet::embeddings` (odd dims, both flips, shifts).
#[test]
fn time_projection_matches_cpu() {
    let dev = EmulatedDevice::new(2, 0, false);
    let ts = [0.0f32, 1.0, 421.0, 999.0, 37.5];
    for (dim, flip, shift) in [(32, false, 1.0), (33, true, 0.0), (128, true, 1.0)] {
        let got = launch_time_proj(&dev, &ts, dim, None, flip, shift);
        close(&got, &sinusoidal(&ts, dim, flip, shift), 2e-6, "sinusoidal");
    }
    let sig = [0.01f32, 0.5, 1.7, 40.0, 80.0];
    let w: Vec<f32> = values(16, 60).iter().map(|v| v * 8.0).collect();
    let got = launch_time_proj(&dev, &sig, 32, Some(&w), false, 0.0);
    close(&got, &fourier(&sig, &w), 2e-6, "fourier");
}

fn layout_round_trip<T: Elem + Default>() {
    let dev = EmulatedDevice::new(3, 0, false);
    let (b, c, hw) = (3, 5, 7);
    let x = values(b * c * hw, 70);
    let mut xs = vec![T::default(); x.len() + 1];
    T::store(&x, &mut xs[1..]); // odd element offset: misaligned for every vector width
    let mut xf = vec![0.0f32; x.len()];
    T::load(&xs[1..], &mut xf);
    let internal = Misaligned::new(&vec![0.0; x.len()]);
    let name = crate::cuda::kernels::dtype_suffix(T::DTYPE).unwrap();
    let i = |v: usize| KernelArg::I64(v as i64);
    dev.launch(
        &format!("rdiff_unet_nchw_in_{name}"),
        Dim3::x(2),
        Dim3::x(256),
        0,
        &[
            KernelArg::Ptr(xs[1..].as_ptr() as u64),
            i(b),
            i(c),
            i(hw),
            KernelArg::Ptr(internal.ptr()),
            i(1),
        ],
    )
    .unwrap();
    for bi in 0..b {
        for ci in 0..c {
            for p in 0..hw {
                let want = 2.0 * xf[(bi * c + ci) * hw + p] - 1.0;
                assert_eq!(internal.get()[(ci * b + bi) * hw + p], want);
            }
        }
    }
    let div = Misaligned::new(&[0.5, 3.0, 7.0]);
    let mut out = vec![T::default(); x.len() + 1];
    dev.launch(
        &format!("rdiff_unet_nchw_out_{name}"),
        Dim3::x(2),
        Dim3::x(256),
        0,
        &[
            KernelArg::Ptr(internal.ptr()),
            i(b),
            i(c),
            i(hw),
            KernelArg::Ptr(div.ptr()),
            KernelArg::Ptr(out[1..].as_mut_ptr() as u64),
        ],
    )
    .unwrap();
    let mut want = vec![0.0f32; x.len()];
    for bi in 0..b {
        for ci in 0..c {
            for p in 0..hw {
                want[(bi * c + ci) * hw + p] =
                    internal.get()[(ci * b + bi) * hw + p] / div.get()[bi];
            }
        }
    }
    let mut want_t = vec![T::default(); x.len()];
    T::store(&want, &mut want_t);
    let (mut got, mut exp) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    T::load(&out[1..], &mut got);
    T::load(&want_t, &mut exp);
    assert_eq!(got, exp, "{name}");
}

#[test]
fn layout_kernels_convert_every_dtype_at_odd_offsets() {
    layout_round_trip::<f32>();
    layout_round_trip::<f16>();
    layout_round_trip::<bf16>();
}
