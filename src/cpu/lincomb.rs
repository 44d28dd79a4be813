//! The fused pass of `crate::lincomb` on the CPU: rows split into rayon tasks, each task worked
//! through in short chunks widened to the arithmetic type, combined, and narrowed back. The
//! arithmetic is that of `kernels/lincomb.cu`, operation for operation, so the emulated
//! launcher (and a GPU, which the kernel keeps from contracting into FMAs) gives the same bits.

use rayon::prelude::*;

use super::threshold;
use crate::dtype::{Acc, DType, Elem, Load};
use crate::error::Result;
use crate::lincomb::{slot, Clamp, Lincomb, NoiseSource, Sigma};
use crate::random::philox::fill_normals;

use crate::with_elem;

/// Elements per rayon task; a pass no longer than this runs on the calling thread (a pool
/// round trip costs more than the work).
const TASK: usize = 1 << 15;
/// Elements per scratch chunk inside a task (every stream's chunk stays in L1).
const LANES: usize = 256;

/// Runs the pass (after `Lincomb::validate`).
pub fn run(lc: &Lincomb) -> Result<()> {
    lc.validate()?;
    if lc.out.numel == 0 {
        return Ok(());
    }
    if lc.acc_dtype() == DType::F64 {
        run_typed::<f64, f64, f64>(lc);
    } else {
        with_elem!(lc.out.dtype, D, {
            with_elem!(lc.sample_dtype(), S, run_typed::<f32, D, S>(lc))
        });
    }
    Ok(())
}

/// The pass's scalars in the arithmetic type.
#[derive(Clone, Copy)]
struct Scalars<A> {
    p: A,
    q: A,
    d: A,
    divide: bool,
    lo: A,
    hi: A,
    r: A,
    w: A,
    affine: bool,
    wm: A,
    h1: A,
    h2: A,
    h3: A,
    wg: A,
    from_m: bool,
    a: A,
    sigma: A,
    min_log: A,
    max_log: A,
}

#[derive(Clone, Copy, PartialEq)]
enum ClampKind {
    None,
    Range,
    Dynamic,
}

/// The typed slices of one pass.
struct Slices<'a, A, D, S> {
    x: Option<&'a [S]>,
    mo: Option<&'a [D]>,
    mo_stride: usize,
    base: Option<&'a [S]>,
    terms: Vec<(&'a [D], A)>,
    noise: Option<&'a [f32]>,
    philox: Option<(u64, u64)>,
    sigma: Option<Sigma>,
    clamp: ClampKind,
    bounds: Option<&'a [A]>,
    recompute: bool,
    s: Scalars<A>,
    /// The chained combination's (a, wm, c_i).
    chain: Option<(A, A, Vec<A>)>,
    /// Per-element weights: the coefficient rows and each slot's row.
    elem: Option<(&'a [A], [Option<usize>; slot::COUNT])>,
    per_sample: usize,
}

impl<'a, A: Acc, D, S> Slices<'a, A, D, S> {
    /// The weight of `slot` over elements `e0 .. e0 + n` of a sample, `scalar` × its row
    /// (in `buf`; the row itself when the scalar is 1, which the product would give exactly);
    /// None when the slot has no row (the scalar alone).
    #[inline(always)]
    fn weights<'b>(
        &self,
        slot: usize,
        scalar: A,
        e0: usize,
        n: usize,
        buf: &'b mut [A; LANES],
    ) -> Option<&'b [A]>
    where
        'a: 'b,
    {
        let (coef, rows) = self.elem.as_ref()?;
        let k = rows[slot]?;
        let row: &'a [A] = &coef[k * self.per_sample + e0..k * self.per_sample + e0 + n];
        if scalar == A::of(1.0) {
            return Some(row);
        }
        let b = &mut buf[..n];
        for (w, &c) in b.iter_mut().zip(row) {
            *w = scalar * c;
        }
        Some(b)
    }

    /// The bias row of `slot` over elements `e0 .. e0 + n`, if any.
    #[inline(always)]
    fn bias(&self, slot: usize, e0: usize, n: usize) -> Option<&[A]> {
        let (coef, rows) = self.elem.as_ref()?;
        let k = rows[slot]?;
        Some(&coef[k * self.per_sample + e0..k * self.per_sample + e0 + n])
    }
}

fn run_typed<A, D, S>(lc: &Lincomb)
where
    A: Acc,
    D: Elem + Load<A>,
    S: Elem + Load<A>,
{
    let of = A::of;
    let ps = lc.per_sample();
    let mut s = Scalars {
        p: of(0.0),
        q: of(0.0),
        d: of(1.0),
        divide: false,
        lo: of(0.0),
        hi: of(0.0),
        r: of(0.0),
        w: of(1.0),
        affine: false,
        wm: of(0.0),
        h1: of(0.0),
        h2: of(0.0),
        h3: of(1.0),
        wg: of(0.0),
        from_m: false,
        a: of(0.0),
        sigma: of(0.0),
        min_log: of(0.0),
        max_log: of(0.0),
    };
    let mut clamp = ClampKind::None;
    let mut bounds: Option<&[A]> = None;
    let mut recompute = false;
    // SAFETY (every slice below): `validate` checked lengths, dtypes and that the outputs
    // overlap no input; the Python layer keeps every buffer alive for the call.
    let (x, mo, mo_stride) = match &lc.conv {
        Some(c) => {
            (s.p, s.q, s.d) = (of(c.p), of(c.q), of(c.d));
            s.divide = c.d != 1.0;
            (s.r, s.w, s.wm) = (of(c.r), of(c.w), of(c.weight));
            s.affine = !(c.r == 0.0 && c.w == 1.0);
            if let Some(g) = c.recompute {
                recompute = true;
                (s.h1, s.h2, s.h3, s.wg, s.from_m) =
                    (of(g.h1), of(g.h2), of(g.h3), of(g.weight), g.from_m);
            }
            // SAFETY: see above.
            let (xs, ms) = unsafe { (c.x.slice::<S>(), c.mo.slice::<D>()) };
            match &c.clamp {
                Clamp::None => {}
                Clamp::Range { lo, hi } => {
                    clamp = ClampKind::Range;
                    (s.lo, s.hi) = (of(*lo), of(*hi));
                }
                Clamp::Dynamic {
                    ratio,
                    lo,
                    hi,
                    bounds: scratch,
                } => {
                    clamp = ClampKind::Dynamic;
                    // SAFETY: see above (the scratch is the caller's, of A's dtype).
                    let out = unsafe { scratch.slice_mut::<A>() };
                    let out = &mut out[..lc.batch()];
                    threshold::bounds(
                        xs,
                        ms,
                        c.mo_stride,
                        ps,
                        threshold::Conv {
                            p: c.p,
                            q: c.q,
                            d: c.d,
                        },
                        *ratio,
                        (*lo, *hi),
                        out,
                    );
                    bounds = Some(out);
                }
            }
            (Some(xs), Some(ms), c.mo_stride)
        }
        None => (None, None, 0),
    };
    let base = lc.base.as_ref().map(|(u, a)| {
        s.a = of(*a);
        // SAFETY: see above.
        unsafe { u.slice::<S>() }
    });
    // SAFETY: see above.
    let terms: Vec<(&[D], A)> = lc
        .terms
        .iter()
        .map(|(t, c)| (unsafe { t.slice::<D>() }, of(*c)))
        .collect();
    let (mut noise, mut philox, mut sigma) = (None, None, None);
    if let Some(nz) = &lc.noise {
        sigma = Some(nz.sigma);
        match nz.sigma {
            Sigma::Fixed(v) => s.sigma = of(v),
            Sigma::Learned => {}
            Sigma::LearnedRange { min_log, max_log } => {
                (s.min_log, s.max_log) = (of(min_log), of(max_log));
            }
        }
        match &nz.source {
            // SAFETY: see above.
            NoiseSource::Buffer(t) => noise = Some(unsafe { t.slice::<f32>() }),
            NoiseSource::Philox { seed, offset } => philox = Some((*seed, *offset)),
        }
    }
    let sl = Slices {
        x,
        mo,
        mo_stride,
        base,
        terms,
        noise,
        philox,
        sigma,
        clamp,
        bounds,
        recompute,
        s,
        chain: lc
            .chain
            .as_ref()
            .map(|c| (of(c.a), of(c.wm), c.c.iter().map(|&v| of(v)).collect())),
        // SAFETY: see above (the coefficients have A's dtype, `validate` checked the rows).
        elem: lc
            .elem
            .as_ref()
            .map(|e| (unsafe { e.coef.slice::<A>() }, e.slots())),
        per_sample: ps,
    };
    let span = Span {
        // SAFETY: see above.
        out: unsafe { lc.out.slice_mut::<D>() },
        // SAFETY: see above.
        hist: lc.hist.as_ref().map(|h| unsafe { h.slice_mut::<D>() }),
        // SAFETY: see above (the corrected sample has the sample dtype).
        mid: lc.chain.as_ref().map(|c| unsafe { c.mid.slice_mut::<S>() }),
    };
    if span.out.len() <= TASK {
        for (b, sp) in span.split(ps).into_iter().enumerate() {
            run_span(&sl, b, 0, sp);
        }
        return;
    }
    span.split(ps)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, row)| {
            row.split(TASK)
                .into_par_iter()
                .enumerate()
                .for_each(|(k, sp)| run_span(&sl, b, k * TASK, sp));
        });
}

/// The output rows or chunks one task writes.
struct Span<'a, D, S> {
    out: &'a mut [D],
    hist: Option<&'a mut [D]>,
    mid: Option<&'a mut [S]>,
}

/// `v` in chunks of `size` elements, or `count` Nones.
fn chunks<T>(v: Option<&mut [T]>, size: usize, count: usize) -> Vec<Option<&mut [T]>> {
    match v {
        Some(v) => v.chunks_mut(size).map(Some).collect(),
        None => (0..count).map(|_| None).collect(),
    }
}

impl<'a, D, S> Span<'a, D, S> {
    /// The span in chunks of `size` elements, the outputs in step.
    fn split(self, size: usize) -> Vec<Span<'a, D, S>> {
        let outs: Vec<&'a mut [D]> = self.out.chunks_mut(size).collect();
        let k = outs.len();
        outs.into_iter()
            .zip(chunks(self.hist, size, k))
            .zip(chunks(self.mid, size, k))
            .map(|((out, hist), mid)| Span { out, hist, mid })
            .collect()
    }
}

/// `src` in the arithmetic type: borrowed when it already is, else widened into `buf`.
#[inline(always)]
fn view<'a, A: Acc, T: Load<A>>(src: &'a [T], buf: &'a mut [A; LANES]) -> &'a [A] {
    match T::as_acc(src) {
        Some(s) => s,
        None => {
            let b = &mut buf[..src.len()];
            T::widen(src, b);
            b
        }
    }
}

/// acc += c·v, elementwise (the order every term is added in, on every target).
#[inline(always)]
fn axpy<A: Acc>(acc: &mut [A], c: A, v: &[A]) {
    for (a, &v) in acc.iter_mut().zip(v) {
        *a = *a + c * v;
    }
}

/// acc += w·v, elementwise, with per-element weights w.
#[inline(always)]
fn axpy_v<A: Acc>(acc: &mut [A], w: &[A], v: &[A]) {
    for ((a, &w), &v) in acc.iter_mut().zip(w).zip(v) {
        *a = *a + w * v;
    }
}

/// acc += c·v with the scalar c, or with the per-element weights when there are.
#[inline(always)]
fn axpy_w<A: Acc>(acc: &mut [A], c: A, w: Option<&[A]>, v: &[A]) {
    match w {
        Some(w) => axpy_v(acc, w, v),
        None => axpy(acc, c, v),
    }
}

/// acc += b, elementwise (a bias row).
#[inline(always)]
fn add_bias<A: Acc>(acc: &mut [A], b: Option<&[A]>) {
    if let Some(b) = b {
        for (a, &b) in acc.iter_mut().zip(b) {
            *a = *a + b;
        }
    }
}

/// f32 values (noise) in the arithmetic type.
#[inline(always)]
fn widen<A: Acc>(src: &[f32], dst: &mut [A]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d = A::of(*v as f64);
    }
}

/// Elements `off .. off + out.len()` of sample `b`, compiled for AVX-512 or AVX2 where the CPU
/// has them (the wheel targets baseline x86-64, where these loops get SSE2 only). Rust never
/// contracts `a * b + c` into an FMA, so every instantiation gives the same bits.
fn run_span<A, D, S>(sl: &Slices<'_, A, D, S>, b: usize, off: usize, sp: Span<'_, D, S>)
where
    A: Acc,
    D: Load<A>,
    S: Load<A>,
{
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
        unsafe fn v4<A: Acc, D: Load<A>, S: Load<A>>(
            sl: &Slices<'_, A, D, S>,
            b: usize,
            off: usize,
            sp: Span<'_, D, S>,
        ) {
            run_span_body(sl, b, off, sp)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v3<A: Acc, D: Load<A>, S: Load<A>>(
            sl: &Slices<'_, A, D, S>,
            b: usize,
            off: usize,
            sp: Span<'_, D, S>,
        ) {
            run_span_body(sl, b, off, sp)
        }
        if super::vecmath::has_avx512() {
            // SAFETY: the CPU supports the features v4 was compiled for.
            return unsafe { v4(sl, b, off, sp) };
        }
        if super::vecmath::has_avx2() {
            // SAFETY: as above, for v3.
            return unsafe { v3(sl, b, off, sp) };
        }
    }
    run_span_body(sl, b, off, sp)
}

#[inline(always)]
fn run_span_body<A, D, S>(sl: &Slices<'_, A, D, S>, b: usize, off: usize, sp: Span<'_, D, S>)
where
    A: Acc,
    D: Load<A>,
    S: Load<A>,
{
    let Span {
        out,
        mut hist,
        mut mid,
    } = sp;
    let s = &sl.s;
    let ps = sl.per_sample;
    let (mut xb, mut mb, mut eb, mut accb, mut tmp, mut nb) = (
        [A::default(); LANES],
        [A::default(); LANES],
        [A::default(); LANES],
        [A::default(); LANES],
        [A::default(); LANES],
        [0f32; LANES],
    );
    let mut zb = [A::default(); LANES];
    // per-element weights of the current chunk (two at a time: a term's c and c')
    let (mut wb, mut wb2) = ([A::default(); LANES], [A::default(); LANES]);
    let bound = sl.bounds.map_or(A::of(1.0), |v| v[b]);
    let inv = A::of(1.0) / bound;
    let neg = A::of(0.0) - bound;
    let len = out.len();
    let mut start = 0;
    while start < len {
        let n = LANES.min(len - start);
        let g = b * ps + off + start; // flattened index of the chunk's first element
        let r = g..g + n;
        let e0 = off + start; // the chunk's first element within its sample
        let mut have_m = false;
        if let (Some(x), Some(mo)) = (sl.x, sl.mo) {
            let m0 = b * sl.mo_stride + off + start;
            let xs = view(&x[r.clone()], &mut xb);
            let ms = view(&mo[m0..m0 + n], &mut mb);
            let e = &mut eb[..n];
            for ((e, &x), &m) in e.iter_mut().zip(xs).zip(ms) {
                *e = s.p * x + s.q * m;
            }
            if s.divide {
                e.iter_mut().for_each(|v| *v = *v / s.d);
            }
            match sl.clamp {
                ClampKind::None => {}
                ClampKind::Range => {
                    for v in e.iter_mut() {
                        // torch.clamp's order (max, then min), NaN passing through.
                        *v = if *v < s.lo { s.lo } else { *v };
                        *v = if *v > s.hi { s.hi } else { *v };
                    }
                }
                ClampKind::Dynamic => {
                    for v in e.iter_mut() {
                        let c = if *v > bound {
                            bound
                        } else if *v < neg {
                            neg
                        } else {
                            *v
                        };
                        *v = c * inv;
                    }
                }
            }
            if s.affine {
                match sl.weights(slot::R, s.r, e0, n, &mut wb) {
                    None => {
                        for (e, &x) in e.iter_mut().zip(xs) {
                            *e = s.r * x + s.w * *e;
                        }
                    }
                    Some(rw) => {
                        for ((e, &x), &r) in e.iter_mut().zip(xs).zip(rw) {
                            *e = r * x + s.w * *e;
                        }
                    }
                }
            }
            if let Some(h) = hist.as_deref_mut() {
                // Continue with the stored (rounded) value, as a framework computing m in the
                // history's dtype would (nothing to read back when it is the arithmetic type).
                let hr = &mut h[start..start + n];
                match D::as_acc_mut(hr) {
                    Some(hr) => hr.copy_from_slice(e),
                    None => {
                        D::narrow(e, hr);
                        D::widen(hr, e);
                    }
                }
            }
            have_m = true;
            if sl.recompute {
                let z: &[A] = if s.from_m { e } else { ms };
                for ((t, &x), &z) in tmp[..n].iter_mut().zip(xs).zip(z) {
                    *t = (s.h1 * x + s.h2 * z) / s.h3;
                }
            }
        }
        // Accumulate in the output itself when it is of the arithmetic type.
        let (acc, direct): (&mut [A], bool) = match D::as_acc_mut(&mut out[start..start + n]) {
            Some(o) => (o, true),
            None => (&mut accb[..n], false),
        };
        match sl.base {
            Some(u) => {
                let us = view(&u[r.clone()], &mut xb);
                match sl.weights(slot::A, s.a, e0, n, &mut wb) {
                    None => {
                        for (a, &u) in acc.iter_mut().zip(us) {
                            *a = s.a * u;
                        }
                    }
                    Some(aw) => {
                        for ((a, &u), &w) in acc.iter_mut().zip(us).zip(aw) {
                            *a = w * u;
                        }
                    }
                }
            }
            None => acc.fill(A::of(0.0)),
        }
        if have_m {
            axpy_w(
                acc,
                s.wm,
                sl.weights(slot::WM, s.wm, e0, n, &mut wb),
                &eb[..n],
            );
            if sl.recompute {
                axpy(acc, s.wg, &tmp[..n]);
            }
        }
        // z = wm'·m + Σ c'_i·t_i, the chained combination's sum, in step with the terms.
        let z = &mut zb[..n];
        if let Some((_, wm2, _)) = &sl.chain {
            if have_m {
                match sl.weights(slot::WM2, *wm2, e0, n, &mut wb) {
                    None => {
                        for (z, &e) in z.iter_mut().zip(&eb[..n]) {
                            *z = *wm2 * e;
                        }
                    }
                    Some(ww) => {
                        for ((z, &e), &w) in z.iter_mut().zip(&eb[..n]).zip(ww) {
                            *z = w * e;
                        }
                    }
                }
            } else {
                z.fill(A::of(0.0));
            }
        }
        for (j, (t, c)) in sl.terms.iter().enumerate() {
            let tv = view(&t[r.clone()], &mut mb);
            axpy_w(acc, *c, sl.weights(slot::C + j, *c, e0, n, &mut wb), tv);
            if let Some((_, _, c2)) = &sl.chain {
                axpy_w(
                    z,
                    c2[j],
                    sl.weights(slot::C2 + j, c2[j], e0, n, &mut wb2),
                    tv,
                );
            }
        }
        add_bias(acc, sl.bias(slot::BIAS, e0, n));
        if sl.chain.is_some() {
            add_bias(z, sl.bias(slot::BIAS2, e0, n));
        }
        if let (Some((a2, _, _)), Some(m)) = (&sl.chain, mid.as_deref_mut()) {
            // y → mid in the sample dtype; out continues from the stored (rounded) value.
            let mr = &mut m[start..start + n];
            S::narrow(acc, mr);
            let y = view(mr, &mut xb);
            match sl.weights(slot::A2, *a2, e0, n, &mut wb) {
                None => {
                    for ((a, &y), &z) in acc.iter_mut().zip(y).zip(z.iter()) {
                        *a = *a2 * y + z;
                    }
                }
                Some(aw) => {
                    for (((a, &y), &z), &w) in acc.iter_mut().zip(y).zip(z.iter()).zip(aw) {
                        *a = w * y + z;
                    }
                }
            }
        }
        if let Some(sigma) = sl.sigma {
            let nz = &mut nb[..n];
            match (sl.noise, sl.philox) {
                (Some(buf), _) => nz.copy_from_slice(&buf[r.clone()]),
                (None, Some((seed, offset))) => fill_normals(seed, offset, g as u64, nz),
                (None, None) => unreachable!("noise without a source"),
            }
            let z = &mut tmp[..n];
            widen(nz, z);
            match sigma {
                Sigma::Fixed(_) => axpy(acc, s.sigma, z),
                Sigma::Learned | Sigma::LearnedRange { .. } => {
                    let mo = sl.mo.expect("validated: a learned σ has the model output");
                    let v0 = b * sl.mo_stride + ps + off + start;
                    let vs = view(&mo[v0..v0 + n], &mut mb);
                    let (half, one) = (A::of(0.5), A::of(1.0));
                    let learned = matches!(sigma, Sigma::Learned);
                    for ((a, &v), &z) in acc.iter_mut().zip(vs).zip(z.iter()) {
                        let std = if learned {
                            v.sqrt()
                        } else {
                            let f = (v + one) * half;
                            (half * (f * s.max_log + (one - f) * s.min_log)).exp()
                        };
                        *a = *a + std * z;
                    }
                }
            }
        }
        if !direct {
            D::narrow(&accb[..n], &mut out[start..start + n]);
        }
        start += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lincomb::{Chain, Conversion, Noise, Recompute};
    use crate::tensor::Device;
    use crate::tensor::Tensor;

    /// A tensor over `v` (outputs too: the pass writes through the address, and the tests
    /// read `v` only after it has returned).
    fn t<T>(v: &mut [T], shape: &[usize]) -> Tensor {
        let dt = match std::mem::size_of::<T>() {
            8 => DType::F64,
            _ => DType::F32,
        };
        let ptr = v.as_mut_ptr() as u64;
        Tensor::new("t", ptr, dt, Device::Cpu, shape.to_vec(), None).unwrap()
    }

    fn f(k: usize) -> f64 {
        ((k * 7919) % 1000) as f64 / 500.0 - 1.0
    }

    /// Every stage at once, against the formula in f64, across the serial and parallel paths.
    #[test]
    fn matches_the_formula() {
        for ps in [700usize, TASK + 300] {
            let batch = 3;
            let n = batch * ps;
            let v = |o: usize| -> Vec<f32> { (0..n).map(|k| f(k + o) as f32).collect() };
            let (mut x, mut u, mut t1, mut nz) = (v(0), v(5), v(2), v(4));
            let mut mo: Vec<f32> = (0..2 * n).map(|k| (3.0 * f(k + 1)) as f32).collect();
            let mut bounds = vec![0f32; batch];
            let (mut out, mut hist) = (vec![0f32; n], vec![0f32; n]);
            let shape = [batch, ps];
            let lc = Lincomb {
                elem: None,
                what: "test",
                out: t(&mut out, &shape),
                hist: Some(t(&mut hist, &shape)),
                base: Some((t(&mut u, &shape), 0.9)),
                terms: vec![(t(&mut t1, &shape), -0.1)],
                conv: Some(Conversion {
                    x: t(&mut x, &shape),
                    mo: t(&mut mo, &[batch, 2 * ps]),
                    mo_stride: 2 * ps,
                    p: 1.5,
                    q: -0.5,
                    d: 0.8,
                    clamp: Clamp::Dynamic {
                        ratio: 0.9,
                        lo: 1.0,
                        hi: 2.5,
                        bounds: t(&mut bounds, &[batch]),
                    },
                    r: 0.1,
                    w: 0.9,
                    weight: 0.2,
                    recompute: Some(Recompute {
                        h1: 1.0,
                        h2: -0.6,
                        h3: 0.8,
                        from_m: true,
                        weight: 0.5,
                    }),
                }),
                chain: None,
                noise: Some(Noise {
                    source: NoiseSource::Buffer(t(&mut nz, &shape)),
                    sigma: Sigma::LearnedRange {
                        min_log: -5.0,
                        max_log: -1.0,
                    },
                }),
            };
            run(&lc).unwrap();
            for k in (0..n).step_by(97) {
                let (b, i) = (k / ps, k % ps);
                let sb = bounds[b] as f64;
                assert!((1.0..=2.5).contains(&sb));
                let mo_k = mo[b * 2 * ps + i] as f64;
                let var = mo[b * 2 * ps + ps + i] as f64;
                let e = ((1.5 * x[k] as f64 - 0.5 * mo_k) / 0.8).clamp(-sb, sb) / sb;
                let m = 0.1 * x[k] as f64 + 0.9 * e;
                let g = (x[k] as f64 - 0.6 * m) / 0.8;
                let fr = (var + 1.0) / 2.0;
                let std = (0.5 * (-fr + (1.0 - fr) * -5.0)).exp();
                let want =
                    0.9 * u[k] as f64 + 0.2 * m + 0.5 * g - 0.1 * t1[k] as f64 + std * nz[k] as f64;
                assert!((hist[k] as f64 - m).abs() < 1e-5, "{k}");
                assert!(
                    (out[k] as f64 - want).abs() < 1e-5,
                    "{k}: {} vs {want}",
                    out[k]
                );
            }
        }
    }

    #[test]
    fn f64_buffers_get_f64_arithmetic() {
        let n = 1000;
        let mut a: Vec<f64> = (0..n).map(f).collect();
        let mut b: Vec<f64> = (0..n).map(|k| f(k + 1) / 3.0).collect();
        let mut out = vec![0f64; n];
        let mut lc = Lincomb::new("test", t(&mut out, &[1, n]));
        lc.base = Some((t(&mut a, &[1, n]), 0.1));
        lc.terms.push((t(&mut b, &[1, n]), 1.0 / 3.0));
        run(&lc).unwrap();
        for k in 0..n {
            assert_eq!(out[k], 0.1 * a[k] + 1.0 / 3.0 * b[k]);
        }
    }

    /// The chain: y into the corrected sample, then the second combination from it.
    #[test]
    fn chain_continues_from_the_stored_sample() {
        for ps in [300usize, TASK + 11] {
            let n = 2 * ps;
            let v = |o: usize| -> Vec<f64> { (0..n).map(|k| f(k + o)).collect() };
            let (mut u, mut t1, mut t2) = (v(1), v(2), v(3));
            let (mut out, mut mid) = (vec![0f64; n], vec![0f64; n]);
            let mut lc = Lincomb::new("test", t(&mut out, &[2, ps]));
            lc.base = Some((t(&mut u, &[2, ps]), 0.5));
            lc.terms.push((t(&mut t1, &[2, ps]), 0.25));
            lc.terms.push((t(&mut t2, &[2, ps]), -2.0));
            lc.chain = Some(Chain {
                mid: t(&mut mid, &[2, ps]),
                a: 0.75,
                wm: 0.0,
                c: vec![-1.0, 0.125],
            });
            run(&lc).unwrap();
            for k in 0..n {
                let y = 0.5 * u[k] + 0.25 * t1[k] + -2.0 * t2[k];
                assert_eq!(mid[k], y);
                assert_eq!(out[k], 0.75 * y + (-t1[k] + 0.125 * t2[k]));
            }
            lc.chain.as_mut().unwrap().c.pop();
            assert!(run(&lc).is_err(), "a weight per term");
        }
    }

    /// Element weights: the checks of `validate` (dtype, rows, slot counts, slots the pass
    /// lacks), and a row's product and bias against the formula.
    #[test]
    fn element_weights_are_checked_and_applied() {
        use crate::lincomb::ElementWeights;
        let (batch, ps) = (2, 50);
        let n = batch * ps;
        let (mut u, mut t1) = (
            (0..n).map(f).collect::<Vec<f64>>(),
            (0..n).map(|k| f(k + 3)).collect::<Vec<f64>>(),
        );
        let mut coef: Vec<f64> = (0..3 * ps).map(|k| f(k + 9)).collect();
        let mut coef32 = vec![0f32; 3 * ps];
        let mut out = vec![0f64; n];
        let mut lc = Lincomb::new("test", t(&mut out, &[batch, ps]));
        lc.base = Some((t(&mut u, &[batch, ps]), 0.5));
        lc.terms.push((t(&mut t1, &[batch, ps]), -2.0));
        let ew = ElementWeights {
            coef: t(&mut coef, &[3, ps]),
            r: None,
            a: Some(0),
            wm: None,
            c: vec![Some(1)],
            bias: Some(2),
            chain_a: None,
            chain_wm: None,
            chain_c: vec![],
            chain_bias: None,
        };
        lc.elem = Some(ew.clone());
        run(&lc).unwrap();
        for k in 0..n {
            let e = k % ps;
            let want = (0.5 * coef[e]) * u[k] + (-2.0 * coef[ps + e]) * t1[k] + coef[2 * ps + e];
            assert_eq!(out[k], want, "{k}");
        }
        let bad = |edit: &dyn Fn(&mut Lincomb), msg: &str| {
            let mut l = lc.clone();
            edit(&mut l);
            let err = l.validate().unwrap_err().to_string();
            assert!(err.contains(msg), "{err}");
        };
        let coef32 = t(&mut coef32, &[3, ps]);
        bad(
            &|l| l.elem.as_mut().unwrap().coef = coef32.clone(),
            "float64 expected",
        );
        bad(&|l| l.elem.as_mut().unwrap().bias = Some(3), "row 3");
        bad(&|l| l.elem.as_mut().unwrap().c.push(None), "2 term slots");
        bad(
            &|l| l.elem.as_mut().unwrap().chain_bias = Some(0),
            "without a chain",
        );
        bad(
            &|l| l.elem.as_mut().unwrap().r = Some(0),
            "without a conversion",
        );
        bad(
            &|l| l.elem.as_mut().unwrap().wm = Some(0),
            "without a conversion",
        );
        bad(&|l| l.base = None, "without a base");
    }

    #[test]
    fn philox_noise_is_the_stream() {
        let n = 3 * 333;
        let mut out = vec![0f32; n];
        let mut lc = Lincomb::new("test", t(&mut out, &[3, 333]));
        lc.noise = Some(Noise {
            source: NoiseSource::Philox { seed: 7, offset: 2 },
            sigma: Sigma::Fixed(1.0),
        });
        run(&lc).unwrap();
        let mut want = vec![0f32; n];
        fill_normals(7, 2, 0, &mut want);
        assert_eq!(out, want);
    }
}
