//! The fused pass (`crate::lincomb`) as launches on any `Launcher`: with dynamic
//! thresholding, `kernels/threshold.cu` writes the per-sample bounds first (stream-ordered),
//! then `kernels/lincomb.cu` runs the pass. Its arguments travel as one struct by value.

use super::launch::{check_batch, elementwise_grid, suffix, Dim3, KernelArg, Launcher, BLOCK};
use crate::error::Result;
use crate::lincomb::{slot, Clamp, Lincomb, NoiseSource, Sigma, MAX_TERMS};

/// Threads per block of the per-sample reductions (`RD_THR_THREADS`).
pub const REDUCE_BLOCK: u32 = 256;

const CONV: i32 = 1 << 0;
const DIVIDE: i32 = 1 << 1;
const RANGE: i32 = 1 << 2;
const DYNAMIC: i32 = 1 << 3;
const AFFINE: i32 = 1 << 4;
const RECOMPUTE: i32 = 1 << 5;
const FROM_M: i32 = 1 << 6;
const BASE: i32 = 1 << 7;
const NOISE: i32 = 1 << 8;
const PHILOX: i32 = 1 << 9;
const LEARNED: i32 = 1 << 10;
const LEARNED_RANGE: i32 = 1 << 11;
const CHAIN: i32 = 1 << 12;
const ELEM: i32 = 1 << 13;

/// `rd_lincomb_args` of `kernels/lincomb.cu`, field for field (8-byte fields first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct LincombArgs {
    x: u64,
    mo: u64,
    base: u64,
    terms: [u64; MAX_TERMS],
    noise: u64,
    bounds: u64,
    hist: u64,
    out: u64,
    mid: u64,
    coef: u64,
    mo_stride: i64,
    per_sample: i64,
    seed: u64,
    offset: u64,
    p: f32,
    q: f32,
    d: f32,
    lo: f32,
    hi: f32,
    r: f32,
    w: f32,
    wm: f32,
    h1: f32,
    h2: f32,
    h3: f32,
    wg: f32,
    a: f32,
    c: [f32; MAX_TERMS],
    a2: f32,
    wm2: f32,
    c2: [f32; MAX_TERMS],
    sigma: f32,
    min_log: f32,
    max_log: f32,
    flags: i32,
    nterms: i32,
    rows: [i32; slot::COUNT],
    pad: i32,
}

const _: () = assert!(std::mem::size_of::<LincombArgs>() == 312);

impl LincombArgs {
    fn bytes(&self) -> &[u8] {
        // SAFETY: a repr(C) struct of integers and floats with no padding (asserted size:
        // 17 eight-byte fields, then 26 four-byte floats and 18 ints), read as plain bytes.
        unsafe {
            std::slice::from_raw_parts(
                self as *const Self as *const u8,
                std::mem::size_of::<Self>(),
            )
        }
    }
}

/// Launches the pass (after `Lincomb::validate`).
pub fn launch(l: &dyn Launcher, lc: &Lincomb) -> Result<()> {
    lc.validate()?;
    let batch = lc.batch();
    check_batch(batch)?;
    let ps = lc.per_sample();
    if ps == 0 {
        return Ok(());
    }
    let d = suffix(lc.out.dtype, "model_output")?;
    let s = suffix(lc.sample_dtype(), "sample")?;
    let f = |v: f64| v as f32;
    let mut a = LincombArgs {
        out: lc.out.ptr,
        hist: lc.hist.as_ref().map_or(0, |h| h.ptr),
        per_sample: ps as i64,
        h3: 1.0,
        nterms: lc.terms.len() as i32,
        rows: [-1; slot::COUNT],
        ..Default::default()
    };
    if let Some(ew) = &lc.elem {
        a.flags |= ELEM;
        a.coef = ew.coef.ptr;
        for (k, r) in ew.slots().iter().enumerate() {
            a.rows[k] = r.map_or(-1, |r| r as i32);
        }
    }
    if let Some((u, c)) = &lc.base {
        a.base = u.ptr;
        a.a = f(*c);
        a.flags |= BASE;
    }
    for (k, (t, c)) in lc.terms.iter().enumerate() {
        a.terms[k] = t.ptr;
        a.c[k] = f(*c);
    }
    if let Some(ch) = &lc.chain {
        a.flags |= CHAIN;
        (a.mid, a.a2, a.wm2) = (ch.mid.ptr, f(ch.a), f(ch.wm));
        for (k, c) in ch.c.iter().enumerate() {
            a.c2[k] = f(*c);
        }
    }
    if let Some(c) = &lc.conv {
        a.flags |= CONV;
        (a.x, a.mo, a.mo_stride) = (c.x.ptr, c.mo.ptr, c.mo_stride as i64);
        (a.p, a.q, a.d) = (f(c.p), f(c.q), f(c.d));
        if c.d != 1.0 {
            a.flags |= DIVIDE;
        }
        (a.r, a.w, a.wm) = (f(c.r), f(c.w), f(c.weight));
        if !(c.r == 0.0 && c.w == 1.0) {
            a.flags |= AFFINE;
        }
        if let Some(g) = c.recompute {
            a.flags |= RECOMPUTE | if g.from_m { FROM_M } else { 0 };
            (a.h1, a.h2, a.h3, a.wg) = (f(g.h1), f(g.h2), f(g.h3), f(g.weight));
        }
        match &c.clamp {
            Clamp::None => {}
            Clamp::Range { lo, hi } => {
                a.flags |= RANGE;
                (a.lo, a.hi) = (f(*lo), f(*hi));
            }
            Clamp::Dynamic {
                ratio,
                lo,
                hi,
                bounds,
            } => {
                a.flags |= DYNAMIC;
                a.bounds = bounds.ptr;
                l.launch(
                    &format!("rdiff_threshold_{d}_{s}"),
                    Dim3::x(batch as u32),
                    Dim3::x(REDUCE_BLOCK),
                    0,
                    &[
                        KernelArg::Ptr(c.mo.ptr),
                        KernelArg::I64(c.mo_stride as i64),
                        KernelArg::Ptr(c.x.ptr),
                        KernelArg::I64(ps as i64),
                        KernelArg::F32(f(c.p)),
                        KernelArg::F32(f(c.q)),
                        KernelArg::F32(f(c.d)),
                        KernelArg::F32(f(*ratio)),
                        KernelArg::F32(f(*lo)),
                        KernelArg::F32(f(*hi)),
                        KernelArg::Ptr(bounds.ptr),
                    ],
                )?;
            }
        }
    }
    if let Some(nz) = &lc.noise {
        match &nz.source {
            NoiseSource::Buffer(t) => {
                a.noise = t.ptr;
                a.flags |= NOISE;
            }
            NoiseSource::Philox { seed, offset } => {
                (a.seed, a.offset) = (*seed, *offset);
                a.flags |= PHILOX;
            }
        }
        match nz.sigma {
            Sigma::Fixed(v) => a.sigma = f(v),
            Sigma::Learned => a.flags |= LEARNED,
            Sigma::LearnedRange { min_log, max_log } => {
                a.flags |= LEARNED_RANGE;
                (a.min_log, a.max_log) = (f(min_log), f(max_log));
            }
        }
    }
    l.launch(
        &format!("rdiff_lincomb_{d}_{s}"),
        elementwise_grid(l, batch, ps, 4),
        Dim3::x(BLOCK),
        0,
        &[KernelArg::Struct(a.bytes())],
    )
}
