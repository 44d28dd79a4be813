//! Convolutions and linear layers on the UNet's internal layout.
//!
//! Activations are channel-major, `[c][b][h][w]`: the batch folds into the spatial axis, so a
//! convolution is one matrix product `out[cout, b·h·w] = W[cout, cin·k²] × cols[cin·k², b·h·w]`
//! whatever the batch size, a 1×1 convolution multiplies the input itself (no copy), and a
//! channel concatenation is just a list of segments ([`Input`]). The product runs in tiles of
//! output rows: each rayon task builds its tile's im2col columns in its thread's scratch
//! buffer (so they stay in cache) and calls `gemm` single-threaded on them. That is the only
//! parallel level: `gemm` never spawns work of its own here.
//!
//! The epilogue is folded into the product: the output tile is first filled with what must be
//! added (bias, a per-sample time embedding, a residual; see [`Init`]) and `gemm` accumulates
//! onto it, scaled, so no op makes a second pass over its output.

use gemm::{gemm, Parallelism};
use half::bf16;
use rayon::prelude::*;

use super::arena::{with_scratch, Arena, Words};
use super::bf16 as bf16_gemm;
use super::narrow_gemm;
use super::SendPtr;
use crate::simd_dispatch;
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::Weight;

/// One logical input: channel segments `(data, channels)`, each `[c][b][h][w]`, concatenated.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub segs: &'a [(&'a [f32], usize)],
    pub dims: Dims,
}

impl<'a> Input<'a> {
    pub fn channels(&self) -> usize {
        self.segs.iter().map(|s| s.1).sum()
    }

    /// Channel `c` of the concatenation, `[b][h][w]`.
    pub fn channel(&self, mut c: usize) -> &'a [f32] {
        let n = self.dims.n();
        for &(seg, sc) in self.segs {
            if c < sc {
                return &seg[c * n..][..n];
            }
            c -= sc;
        }
        panic!("input channel past the segments")
    }
}

/// What the output starts from before the product is added:
/// `out = scale · (init + W × x)`, with `init = bias + bias2 + temb[b] + residual`; or, with
/// `keep`, `out += scale · W × x` onto the output's current contents (bias and the rest then
/// ignored).
#[derive(Clone, Copy)]
pub struct Init<'a> {
    pub bias: Option<&'a [f32]>,
    pub bias2: Option<&'a [f32]>,
    /// `[b][cout]`, added to every pixel of sample b.
    pub temb: Option<&'a [f32]>,
    /// Same layout as the output.
    pub residual: Option<&'a [f32]>,
    pub keep: bool,
    pub scale: f32,
}

impl<'a> Init<'a> {
    pub fn bias(bias: &'a [f32]) -> Self {
        Self {
            bias: Some(bias),
            bias2: None,
            temb: None,
            residual: None,
            keep: false,
            scale: 1.0,
        }
    }
}

/// A convolution's weights `[cout][cin·k²]` as its product takes them: f32 (by `gemm`), or
/// bf16 rows for the bf16 compute path, whose right-hand side is then rounded to bf16 too
/// (`cpu::bf16`: AMX tiles or f32 arithmetic, f32 sums either way).
#[derive(Clone, Copy)]
pub enum Lhs<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// bf16 in the AMX kernel's tiles (the model's weights under the bf16 compute path).
    Tiles(&'a bf16_gemm::Tiles),
}

impl Lhs<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F32(w) => w.len(),
            Self::Bf16(w) => w.len(),
            Self::Tiles(w) => w.rows() * w.depth(),
        }
    }
}

/// Im2col columns built once and shared by a tile's output-channel chunks, at most (32 MiB).
const MAX_SHARED_COLS: usize = 1 << 23;

/// Target output columns per tile: the sweet spot of `gemm` on this kind of shape (and of the
/// bf16 product: 512–2,048 were no faster at batch 8, slower at batch 1).
const TILE_COLS: usize = 256;

/// Output columns up to which a convolution takes one task per thread, not two.
const NARROW_COLS: usize = 64;

/// How a convolution's output is cut into tasks: tiles of `tile_rows` whole output rows (row
/// = b·hout + y), and, when there are too few of them to keep every thread busy (deep, small
/// layers), chunks of `mstep` output channels as well; task `t` is tile `t / mchunks`, chunk
/// `t % mchunks`.
#[derive(Clone, Copy)]
pub(super) struct Partition {
    pub tile_rows: usize,
    pub ntiles: usize,
    pub mstep: usize,
    pub mchunks: usize,
    /// Output rows in all.
    pub rows: usize,
    cout: usize,
}

impl Partition {
    pub fn new(od: Dims, cout: usize) -> Self {
        let rows = od.b * od.h;
        // Two tasks per thread of the pool (`partition_threads`: the bits do not depend on
        // it): four (more, smaller gemm calls) took 5–30% longer on the batch-1 layers and no
        // less elsewhere. Products at most NARROW_COLS wide (a batch-1 CIFAR UNet's 4×4 and
        // 8×8 layers) take one per thread: each call's fixed costs weigh more there than the
        // imbalance (the whole call 0.98–0.99× the time at batch 1 and 2).
        let per_thread = if od.n() <= NARROW_COLS { 1 } else { 2 };
        let want = per_thread * super::partition_threads();
        let mut tile_rows = (TILE_COLS / od.w).max(1);
        let min_rows = (64 / od.w).max(1);
        while rows.div_ceil(tile_rows) < want && tile_rows > min_rows {
            tile_rows = (tile_rows / 2).max(min_rows);
        }
        let ntiles = rows.div_ceil(tile_rows);
        let mchunks = if ntiles >= want {
            1
        } else {
            want.div_ceil(ntiles).min((cout / 32).max(1))
        };
        let mstep = cout.div_ceil(mchunks).next_multiple_of(16).min(cout);
        Self {
            tile_rows,
            ntiles,
            mstep,
            mchunks: cout.div_ceil(mstep),
            rows,
            cout,
        }
    }

    pub fn tasks(&self) -> usize {
        self.ntiles * self.mchunks
    }

    /// Task `t`'s output rows `r0..r1` and output channels `m0..m0 + m`.
    pub fn task(&self, t: usize) -> ((usize, usize), (usize, usize)) {
        let (tile, mc) = (t / self.mchunks, t % self.mchunks);
        let r0 = tile * self.tile_rows;
        let m0 = mc * self.mstep;
        (
            (r0, (r0 + self.tile_rows).min(self.rows)),
            (m0, self.mstep.min(self.cout - m0)),
        )
    }
}

/// The convolution `out = scale · (init + conv(x, w))`; `w` is `[cout][cin][k][k]`, `out`
/// `[cout][b][hout][wout]`.
pub fn conv2d(
    x: Input<'_>,
    w: Lhs<'_>,
    cout: usize,
    g: Geometry,
    init: Init<'_>,
    out: &mut [f32],
    arena: &mut Arena,
) {
    let cin = x.channels();
    let kk = cin * g.k * g.k;
    assert_eq!(w.len(), cout * kk, "conv weight size");
    let od = g.out_dims(x.dims);
    let n = od.n();
    assert_eq!(out.len(), cout * n, "conv output size");
    let direct = g.k == 1 && g.stride == 1 && !g.upsample && g.pad == [0; 4];
    // Chosen by the whole output's width, never a tile's, which follows the pool's size.
    let narrow = narrow_gemm::applies(n);

    let part = Partition::new(od, cout);
    let Partition {
        tile_rows,
        ntiles,
        mchunks,
        rows,
        ..
    } = part;
    let threads = super::partition_threads();

    // When output channels are cut into chunks, every chunk's task would build the same tile's
    // columns: they are built once instead, in parallel by channel pieces, into an arena
    // buffer (tile-major, each tile's `[kk][tn]` block at column offset kk·c0). For bf16
    // weights the buffer holds each tile's packed columns instead (`arena::Words`), one
    // tile per job.
    let bf16 = matches!(w, Lhs::Bf16(_) | Lhs::Tiles(_));
    let tap_major = matches!(w, Lhs::Tiles(t) if t.taps() > 1);
    let share = !direct && mchunks > 1 && kk * n <= MAX_SHARED_COLS;
    let tile_packed = bf16_gemm::packed_len(kk, tile_rows * od.w);
    let mut shared_packed = (share && bf16).then(|| Words::take(arena, ntiles * tile_packed));
    if let Some(sp) = &mut shared_packed {
        let jobs: Vec<_> = sp.words_mut().chunks_mut(tile_packed).enumerate().collect();
        jobs.into_par_iter().for_each(|(tile, packed)| {
            let (r0, r1) = (tile * tile_rows, ((tile + 1) * tile_rows).min(rows));
            pack_columns(&x, g, od, (r0, r1), tap_major, packed);
        });
    }
    let mut shared = (share && !bf16).then(|| arena.take(kk * n));
    if let Some(cols) = &mut shared {
        let piece = cin.div_ceil(threads);
        let mut jobs = Vec::new();
        let mut rest = &mut cols[..];
        for tile in 0..ntiles {
            let (r0, r1) = (tile * tile_rows, ((tile + 1) * tile_rows).min(rows));
            let tn = (r1 - r0) * od.w;
            let (block, tail) = rest.split_at_mut(kk * tn);
            rest = tail;
            for (pc, chunk) in block.chunks_mut(piece * g.k * g.k * tn).enumerate() {
                jobs.push(((r0, r1), (pc * piece, ((pc + 1) * piece).min(cin)), chunk));
            }
        }
        jobs.into_par_iter()
            .for_each(|(tile, chans, chunk)| im2col(&x, g, od, tile, chans, chunk));
    }
    let outp = SendPtr(out.as_mut_ptr());
    (0..part.tasks()).into_par_iter().for_each(|task| {
        let tile = task / mchunks;
        let ((r0, r1), (m0, m)) = part.task(task);
        let (c0, tn) = (r0 * od.w, (r1 - r0) * od.w);
        assert!(
            !narrow || tn == n,
            "a narrow product is its op's whole width"
        );
        // SAFETY: task (tile, mc) owns rows m0..m0+m and columns c0..c0+tn of `out`;
        // no two tasks share both.
        let dst = unsafe { outp.get().add(m0 * n + c0) };
        // SAFETY: prefill writes only the task's m×tn block at dst (row stride n).
        unsafe { prefill(dst, n, m0, m, c0, tn, od, &init) };
        if direct {
            let mut ci0 = 0;
            for &(seg, sc) in x.segs {
                // SAFETY: shapes checked above; rhs rows are input channels of this segment.
                unsafe {
                    product(
                        (m, tn, sc),
                        (dst, n),
                        (w, m0 * kk + ci0, kk),
                        (&seg[c0..], n),
                        init.scale,
                        narrow,
                    );
                }
                ci0 += sc;
            }
        } else {
            let product = |cols: &[f32]| {
                // SAFETY: as above; cols is [kk][tn].
                unsafe {
                    product(
                        (m, tn, kk),
                        (dst, n),
                        (w, m0 * kk, kk),
                        (cols, tn),
                        init.scale,
                        narrow,
                    )
                }
            };
            let bf16_product = |packed: &[u32]| {
                // SAFETY: as above; `packed` holds the tile's [kk][tn] columns.
                unsafe { bf16_product((m, tn, kk), (dst, n), (w, m0, 0, kk), packed, init.scale) }
            };
            match (&shared, &shared_packed, w) {
                (Some(cols), _, _) => product(&cols[kk * c0..][..kk * tn]),
                (None, Some(sp), _) => {
                    bf16_product(&sp.words()[tile * tile_packed..][..tile_packed])
                }
                // The bf16 product packs its columns as they are made (`pack_columns`).
                (None, None, Lhs::Bf16(_) | Lhs::Tiles(_)) => {
                    bf16_gemm::with_packed(bf16_gemm::packed_len(kk, tn), |packed| {
                        pack_columns(&x, g, od, (r0, r1), tap_major, packed);
                        bf16_product(packed)
                    })
                }
                (None, None, Lhs::F32(_)) => with_scratch(kk * tn, |cols| {
                    im2col(&x, g, od, (r0, r1), (0, cin), cols);
                    product(cols)
                }),
            }
        }
    });
    if let Some(cols) = shared {
        arena.give(cols);
    }
    if let Some(sp) = shared_packed {
        sp.give(arena);
    }
}

/// The im2col columns of output rows `r0..r1` (`[kk][tn]`), rounded to bf16 and packed for
/// the bf16 product into `packed`, as they are made: two channels (an even number of depth
/// rows) at a time, through a scratch that stays in cache. With `tap_major` weights
/// (`Tiles::taps`) the depth goes in their order, `[tap][cin]`.
fn pack_columns(
    x: &Input<'_>,
    g: Geometry,
    od: Dims,
    (r0, r1): (usize, usize),
    tap_major: bool,
    packed: &mut [u32],
) {
    let (cin, taps) = (x.channels(), g.k * g.k);
    let (kk, tn) = (cin * taps, (r1 - r0) * od.w);
    let kp = bf16_gemm::kpairs(kk);
    assert!(
        !tap_major || cin % 2 == 0,
        "tap-major depth with odd channels"
    );
    with_scratch(2 * taps * tn, |cols| {
        for c in (0..cin).step_by(2) {
            let c1 = (c + 2).min(cin);
            let rows = (c1 - c) * taps;
            im2col(x, g, od, (r0, r1), (c, c1), &mut cols[..rows * tn]);
            if tap_major {
                // Depth t·cin + c and + 1: channels c and c + 1 at tap t make one pair.
                for t in 0..taps {
                    let q = (t * cin + c) / 2;
                    bf16_gemm::pack_pairs(&cols[t * tn..], taps * tn, 2, tn, packed, kp, q);
                }
            } else {
                bf16_gemm::pack_pairs(cols, tn, rows, tn, packed, kp, c * taps / 2);
            }
        }
    });
    bf16_gemm::pad_depth(kk, tn, packed);
}

/// `dst += beta · lhs × rhs`: rows `m` of `lhs` from value `off` at row stride `lda`, rhs the
/// first `n` columns of `k` rows at row stride `rhs_rs`; by `gemm` ([`gemm_rows`]), by the
/// 16- or 32-column product when `narrow` (`narrow_gemm`: the op is that wide, so `n` is its
/// whole width) or, for bf16 weights, the bf16 product on `rhs` packed in this thread's buffer.
///
/// # Safety
/// `dst` addresses an m×n row-major matrix at row stride `dst_rs` written by no one else
/// meanwhile; `lhs` holds rows `off + i·lda .. + k` for `i < m` and `rhs` `(k - 1)·rhs_rs + n`
/// values.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, off, lda): (Lhs<'_>, usize, usize),
    (rhs, rhs_rs): (&[f32], usize),
    beta: f32,
    narrow: bool,
) {
    match lhs {
        Lhs::F32(w) if narrow && m > 0 => {
            // SAFETY: the caller's contract: dst's m rows of n at stride dst_rs are ours.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst, (m - 1) * dst_rs + n) };
            narrow_gemm::product(
                narrow_gemm::Operands {
                    m,
                    n,
                    k,
                    dst,
                    dst_rs,
                    w: &w[off..],
                    lda,
                    x: rhs,
                    xs: rhs_rs,
                },
                beta,
            )
        }
        // SAFETY: the caller's contract.
        Lhs::F32(w) => unsafe {
            gemm_rows(
                (m, n, k),
                (dst, dst_rs),
                true,
                (w[off..].as_ptr(), lda),
                (rhs.as_ptr(), rhs_rs),
                beta,
            )
        },
        Lhs::Bf16(_) | Lhs::Tiles(_) => {
            bf16_gemm::with_packed(bf16_gemm::packed_len(k, n), |packed| {
                bf16_gemm::pack(rhs, rhs_rs, k, n, packed);
                let (row0, col0) = (off / lda, off % lda);
                // SAFETY: the caller's contract.
                unsafe {
                    bf16_product(
                        (m, n, k),
                        (dst, dst_rs),
                        (lhs, row0, col0, lda),
                        packed,
                        beta,
                    )
                }
            })
        }
    }
}

/// `dst += beta · W × B`: rows `row0..row0 + m`, depth `col0..col0 + k` of the bf16 weights
/// `w` (row length `lda`) on B packed for depth k and n columns.
///
/// # Safety
/// As [`product`]'s, for dst.
unsafe fn bf16_product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (w, row0, col0, lda): (Lhs<'_>, usize, usize, usize),
    packed: &[u32],
    beta: f32,
) {
    let rows: Vec<bf16>;
    let a = match w {
        Lhs::Bf16(w) => bf16_gemm::Lhs::Rows(&w[row0 * lda + col0..], lda),
        Lhs::Tiles(t) if row0 % 16 == 0 && col0 % bf16_gemm::KBLOCK == 0 => {
            bf16_gemm::Lhs::Tiles(t, row0 / 16, col0 / bf16_gemm::KBLOCK)
        }
        Lhs::Tiles(t) => {
            // A 1×1 input segment that starts inside a depth block: its rows widened out.
            let mut wide = vec![0.0f32; k];
            let mut r = Vec::with_capacity(m * k);
            for i in 0..m {
                t.widen((row0 + i) * lda + col0, &mut wide);
                r.extend(wide.iter().map(|&v| bf16::from_f32(v)));
            }
            rows = r;
            bf16_gemm::Lhs::Rows(&rows, k)
        }
        Lhs::F32(_) => unreachable!("f32 weights take gemm_rows"),
    };
    // SAFETY: the caller's contract (bf16::gemm checks the operands' extents).
    unsafe { bf16_gemm::gemm((m, n, k), (dst, dst_rs), true, a, packed, beta) }
}

/// The depth of every product is summed in blocks of this many terms, in order, whatever the
/// product's shape. `gemm` picks its own depth blocks from m and n (512 up to 64×64, a
/// cache-derived size above), and they fix the order of each element's sum: blocks fixed here
/// keep an output's bits independent of how its op was cut into tasks, hence of the pool.
const GEMM_KC: usize = 512;

/// `dst = (accumulate ? dst : 0) + beta · lhs × rhs` by `gemm` on this thread, every operand
/// row-major: `(m, n, k)`, then each operand's pointer and row stride. The depth goes in
/// blocks of [`GEMM_KC`].
///
/// # Safety
/// Each pointer addresses a whole row-major matrix of its shape at its row stride (`dst`
/// m×n, `lhs` m×k, `rhs` k×n), and `dst` is written by no one else meanwhile.
pub(crate) unsafe fn gemm_rows(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    (lhs, lhs_rs): (*const f32, usize),
    (rhs, rhs_rs): (*const f32, usize),
    beta: f32,
) {
    for k0 in (0..k).step_by(GEMM_KC) {
        let kb = GEMM_KC.min(k - k0);
        // SAFETY: the caller's contract, with unit column strides; depth k0..k0 + kb is
        // columns k0.. of lhs and rows k0.. of rhs.
        unsafe {
            gemm(
                m,
                n,
                kb,
                dst,
                1,
                dst_rs as isize,
                accumulate || k0 > 0,
                lhs.add(k0),
                1,
                lhs_rs as isize,
                rhs.add(k0 * rhs_rs),
                1,
                rhs_rs as isize,
                1.0,
                beta,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
}

simd_dispatch!(
    /// Writes `scale · init` into the task's output block (rows m0.., columns c0..), compiled
    /// for the CPU's vectors (for the baseline, its fills and adds ran 16 bytes at a time: 4–6%
    /// of a call of the bundled digits model or of SD 1.5 in bf16).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn prefill(dst: *mut f32, n: usize, m0: usize, m: usize, c0: usize, tn: usize, od: Dims, init: &Init<'_>) => prefill_kernel
);

/// [`prefill`]'s body.
///
/// # Safety
/// `dst` points at row m0, column c0 of an output with row stride `n`, and the block is the
/// caller's alone.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn prefill_kernel(
    dst: *mut f32,
    n: usize,
    m0: usize,
    m: usize,
    c0: usize,
    tn: usize,
    od: Dims,
    init: &Init<'_>,
) {
    if init.keep {
        return;
    }
    let hw = od.hw();
    let s = init.scale;
    for i in 0..m {
        let c = m0 + i;
        // SAFETY: inside the caller's block.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n), tn) };
        let base = init.bias.map_or(0.0, |b| b[c]) + init.bias2.map_or(0.0, |b| b[c]);
        match init.temb {
            None => row.fill(base * s),
            Some(t) => {
                let cout = t.len() / od.b;
                let mut j = 0;
                while j < tn {
                    let col = c0 + j;
                    let b = col / hw;
                    let end = ((b + 1) * hw - c0).min(tn);
                    row[j..end].fill((base + t[b * cout + c]) * s);
                    j = end;
                }
            }
        }
        if let Some(r) = init.residual {
            let r = &r[c * n + c0..][..tn];
            for (o, v) in row.iter_mut().zip(r) {
                *o += v * s;
            }
        }
    }
}

/// The im2col columns of output rows r0..r1 (row = b·hout + y): `cols[ci·k² + ky·k + kx][j]`.
fn im2col(
    x: &Input<'_>,
    g: Geometry,
    od: Dims,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    cols: &mut [f32],
) {
    let d = x.dims;
    let tn = (r1 - r0) * od.w;
    let same3 = g.k == 3 && g.stride == 1 && !g.upsample && g.pad == [1; 4];
    let mut s0 = 0; // the first channel of the segment
    for &(seg, sc) in x.segs {
        for ci in s0.max(c0)..(s0 + sc).min(c1) {
            let plane_all = &seg[(ci - s0) * d.n()..][..d.n()];
            let rows = &mut cols[(ci - c0) * g.k * g.k * tn..][..g.k * g.k * tn];
            // One run per image inside the tile.
            let mut r = r0;
            while r < r1 {
                let b = r / od.h;
                let run_end = ((b + 1) * od.h).min(r1);
                let (ya, yb) = (r - b * od.h, run_end - b * od.h);
                let plane = &plane_all[b * d.hw()..][..d.hw()];
                let j0 = (r - r0) * od.w;
                let len = (yb - ya) * od.w;
                for t in 0..g.k * g.k {
                    let dst = &mut rows[t * tn + j0..][..len];
                    if same3 {
                        shifted_rows(plane, d.h, d.w, ya, yb, t / 3, t % 3, dst);
                    } else {
                        gather_rows(plane, d, g, od.w, ya, yb, t / g.k, t % g.k, dst);
                    }
                }
                r = run_end;
            }
        }
        s0 += sc;
    }
}

/// Tap (ky, kx) of a 3×3, stride-1, padding-1 convolution for output rows ya..yb of one
/// image: the plane shifted by (ky-1, kx-1) — one contiguous copy, then the wrapped-around
/// edge column and the rows outside the image zeroed.
#[allow(clippy::too_many_arguments)]
fn shifted_rows(
    plane: &[f32],
    h: usize,
    w: usize,
    ya: usize,
    yb: usize,
    ky: usize,
    kx: usize,
    dst: &mut [f32],
) {
    let va = ya.max(usize::from(ky == 0));
    let vb = yb.min(h + 1 - ky);
    if va >= vb {
        dst.fill(0.0);
        return;
    }
    let (lo, hi) = ((va - ya) * w, (vb - ya) * w);
    dst[..lo].fill(0.0);
    dst[hi..].fill(0.0);
    let mid = &mut dst[lo..hi];
    let l = hi - lo;
    let base = (va + ky - 1) * w;
    match kx {
        1 => mid.copy_from_slice(&plane[base..base + l]),
        0 => {
            mid[1..].copy_from_slice(&plane[base..base + l - 1]);
            for row in mid.chunks_exact_mut(w) {
                row[0] = 0.0;
            }
        }
        _ => {
            mid[..l - 1].copy_from_slice(&plane[base + 1..base + l]);
            for row in mid.chunks_exact_mut(w) {
                row[w - 1] = 0.0;
            }
        }
    }
}

/// Tap (ky, kx) of any geometry (stride 2, other padding, fused 2× upsampling) for output rows
/// ya..yb of one image.
#[allow(clippy::too_many_arguments)]
fn gather_rows(
    plane: &[f32],
    d: Dims,
    g: Geometry,
    wout: usize,
    ya: usize,
    yb: usize,
    ky: usize,
    kx: usize,
    dst: &mut [f32],
) {
    let (hv, wv) = if g.upsample {
        (2 * d.h, 2 * d.w)
    } else {
        (d.h, d.w)
    };
    let [pt, pl, _, _] = g.pad;
    let s = g.stride;
    let off = kx as isize - pl as isize;
    // Output columns x_lo..x_hi read inside the (upsampled) row, ix = x·s + off; the others
    // are padding.
    let x_lo = if off >= 0 {
        0
    } else {
        ((-off) as usize).div_ceil(s)
    }
    .min(wout);
    let x_hi = (((wv as isize - off).max(0) as usize).div_ceil(s)).clamp(x_lo, wout);
    for (y, row) in (ya..yb).zip(dst.chunks_exact_mut(wout)) {
        let iy = (y * s + ky) as isize - pt as isize;
        if iy < 0 || iy >= hv as isize {
            row.fill(0.0);
            continue;
        }
        let sy = if g.upsample {
            iy as usize / 2
        } else {
            iy as usize
        };
        let src = &plane[sy * d.w..][..d.w];
        let (head, rest) = row.split_at_mut(x_lo);
        let (mid, tail) = rest.split_at_mut(x_hi - x_lo);
        head.fill(0.0);
        tail.fill(0.0);
        if mid.is_empty() {
            continue;
        }
        // The first column read, ix ≥ 0; the loops below run without per-value tests (one
        // tested load per value took most of a stride-2 or upsampling layer's im2col).
        let ix0 = (x_lo as isize * s as isize + off) as usize;
        match (g.upsample, s) {
            (false, 1) => mid.copy_from_slice(&src[ix0..ix0 + mid.len()]),
            (false, _) => {
                for (v, &x) in mid.iter_mut().zip(src[ix0..].iter().step_by(s)) {
                    *v = x;
                }
            }
            (true, 1) => {
                // Upsampled column ix is source column ix / 2: pairs after an odd start.
                let mid = if ix0 % 2 == 1 {
                    mid[0] = src[ix0 / 2];
                    &mut mid[1..]
                } else {
                    mid
                };
                let (from, half) = (ix0.div_ceil(2), mid.len() / 2);
                let mut pairs = mid.chunks_exact_mut(2);
                for (p, &x) in (&mut pairs).zip(&src[from..]) {
                    p[0] = x;
                    p[1] = x;
                }
                if let [last] = pairs.into_remainder() {
                    *last = src[from + half];
                }
            }
            (true, _) => {
                for (i, v) in mid.iter_mut().enumerate() {
                    *v = src[(ix0 + i * s) / 2];
                }
            }
        }
    }
}

/// Output features per task of [`linear`].
const LINEAR_FEATURES: usize = 64;

/// Widening a weight to f32, exactly.
trait Wide: Copy {
    fn wide(self) -> f32;
}

impl Wide for f32 {
    #[inline(always)]
    fn wide(self) -> f32 {
        self
    }
}

impl Wide for bf16 {
    #[inline(always)]
    fn wide(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// `Σ_i w[i] · x[i]` in 128 f32 lanes (eight independent vector sums: with one, the adds'
/// latency bounds it) summed in a fixed order: the same bits on every CPU and thread count,
/// and for f32 and bf16 weights of the same values (widening is exact).
#[inline(always)]
fn dot_kernel<W: Wide>(w: &[W], x: &[f32]) -> f32 {
    const L: usize = 128;
    let mut acc = [0.0f32; L];
    let (wc, xc) = (w.chunks_exact(L), x.chunks_exact(L));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (wc, xc) in wc.zip(xc) {
        for l in 0..L {
            acc[l] += wc[l].wide() * xc[l];
        }
    }
    for (l, (&wv, &xv)) in wt.iter().zip(xt).enumerate() {
        acc[l] += wv.wide() * xv;
    }
    let mut n = L;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            acc[l] += acc[l + n];
        }
    }
    acc[0]
}

#[inline(always)] // (into simd_dispatch's per-ISA copies)
fn dot_f32_kernel(w: &[f32], x: &[f32]) -> f32 {
    dot_kernel(w, x)
}

#[inline(always)] // (into simd_dispatch's per-ISA copies)
fn dot_bf16_kernel(w: &[bf16], x: &[f32]) -> f32 {
    dot_kernel(w, x)
}

simd_dispatch!(fn dot_f32(w: &[f32], x: &[f32]) -> f32 => dot_f32_kernel);
simd_dispatch!(fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 => dot_bf16_kernel);

/// A linear layer on a few rows: `out[r][o] = bias[o] + Σ_i x[r][i] · w[o][i]`, one dot
/// product per output, in parallel over chunks of output features. f32 and bf16 weights are
/// read in place (bf16 widened in registers: half the bytes); f16 ones are widened a chunk at
/// a time into the thread's scratch, in cache. At one row per sample the layer is a pass over
/// its weights. Every dtype, pool and CPU gives the same bits for the same values.
pub fn linear(x: &[f32], rows: usize, w: &Weight, bias: Option<&[f32]>, out: &mut [f32]) {
    let fin = x.len() / rows;
    let fout = out.len() / rows;
    assert_eq!(w.len(), fin * fout, "linear weight size");
    for r in 0..rows {
        let o = &mut out[r * fout..][..fout];
        match bias {
            Some(b) => o.copy_from_slice(b),
            None => o.fill(0.0),
        }
    }
    let outp = SendPtr(out.as_mut_ptr());
    // Output o of every row from `dot(o, x_row)`: column o is this task's alone.
    let columns = |o0: usize, nf: usize, dot: &dyn Fn(usize, &[f32]) -> f32| {
        for o in o0..o0 + nf {
            for r in 0..rows {
                // SAFETY: `out` holds rows × fout values (checked above); no other task
                // writes column o.
                unsafe { *outp.get().add(r * fout + o) += dot(o, &x[r * fin..][..fin]) };
            }
        }
    };
    (0..fout.div_ceil(LINEAR_FEATURES))
        .into_par_iter()
        .for_each(|c| {
            let o0 = c * LINEAR_FEATURES;
            let nf = LINEAR_FEATURES.min(fout - o0);
            match w {
                Weight::F32(w) => columns(o0, nf, &|o, x| dot_f32(&w[o * fin..][..fin], x)),
                Weight::Bf16(w) => columns(o0, nf, &|o, x| dot_bf16(&w[o * fin..][..fin], x)),
                _ => with_scratch(nf * fin, |wide| {
                    let w = w.f32_range(o0 * fin, nf * fin, wide);
                    columns(o0, nf, &|o, x| dot_f32(&w[(o - o0) * fin..][..fin], x));
                }),
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear layer on f32, bf16 and f16 weights of the same values: the same bits (as a
    /// checkpoint widened at load gives), on one thread and on two, near an f64 reference.
    #[test]
    fn linear_gives_the_same_bits_for_every_weight_dtype() {
        let (fin, fout) = (77, 130); // a lane tail, three feature chunks
                                     // multiples of 1/64 in (-1, 1): exact in bf16 and f16
        let wide: Vec<f32> = (0..fin * fout)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let bias: Vec<f32> = (0..fout).map(|o| o as f32 / 10.0).collect();
        for rows in [1, 3] {
            let x: Vec<f32> = (0..rows * fin).map(|i| (i as f32 * 0.37).sin()).collect();
            let run = |w: &Weight, threads: usize| {
                let mut out = vec![0.0; rows * fout];
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| linear(&x, rows, w, Some(&bias), &mut out));
                out
            };
            let want = run(&Weight::F32(wide.clone()), 2);
            for w in [
                Weight::Bf16(wide.iter().map(|&v| bf16::from_f32(v)).collect()),
                Weight::F16(wide.iter().map(|&v| half::f16::from_f32(v)).collect()),
                Weight::F32(wide.clone()),
            ] {
                assert_eq!(run(&w, 2), want);
                assert_eq!(run(&w, 1), want);
            }
            for (i, &g) in want.iter().enumerate() {
                let (r, o) = (i / fout, i % fout);
                let e: f64 = bias[o] as f64
                    + (0..fin)
                        .map(|k| wide[o * fin + k] as f64 * x[r * fin + k] as f64)
                        .sum::<f64>();
                assert!((g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{g} vs {e}");
            }
        }
    }

    /// A direct 3×3 convolution on NCHW for reference.
    fn reference(x: &[f32], d: Dims, cin: usize, w: &[f32], cout: usize, g: Geometry) -> Vec<f32> {
        let od = g.out_dims(d);
        let (hv, wv) = if g.upsample {
            (2 * d.h, 2 * d.w)
        } else {
            (d.h, d.w)
        };
        let mut out = vec![0.0f32; cout * od.n()];
        for co in 0..cout {
            for b in 0..d.b {
                for y in 0..od.h {
                    for xo in 0..od.w {
                        let mut acc = 0.0f64;
                        for ci in 0..cin {
                            for ky in 0..g.k {
                                for kx in 0..g.k {
                                    let iy = (y * g.stride + ky) as isize - g.pad[0] as isize;
                                    let ix = (xo * g.stride + kx) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= hv as isize || ix >= wv as isize {
                                        continue;
                                    }
                                    let (sy, sx) = if g.upsample {
                                        (iy as usize / 2, ix as usize / 2)
                                    } else {
                                        (iy as usize, ix as usize)
                                    };
                                    let xv = x[((ci * d.b + b) * d.h + sy) * d.w + sx];
                                    let wv = w[((co * cin + ci) * g.k + ky) * g.k + kx];
                                    acc += (xv * wv) as f64;
                                }
                            }
                        }
                        out[((co * d.b + b) * od.h + y) * od.w + xo] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_direct_convolution() {
        // An even and an odd width (the gathers' edges), at stride 2 and upsampled too, and
        // outputs 16 and 32 pixels in all (`narrow_gemm`, where the CPU has AVX-512).
        for d in [
            Dims { b: 3, h: 6, w: 4 },
            Dims { b: 2, h: 5, w: 7 },
            Dims { b: 1, h: 4, w: 4 },
            Dims { b: 2, h: 4, w: 4 },
        ] {
            matches_direct_convolution_on(d);
        }
    }

    fn matches_direct_convolution_on(d: Dims) {
        let (c1, c2) = (5, 3);
        let cin = c1 + c2;
        let x: Vec<f32> = (0..cin * d.n())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        // 70 output channels are cut into chunks, which share one im2col.
        for (g, cout) in [37, 70].into_iter().flat_map(|cout| {
            [
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
            ]
            .map(|g| (g, cout))
        }) {
            let w: Vec<f32> = (0..cout * cin * g.k * g.k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 30.0)
                .collect();
            let want = reference(&x, d, cin, &w, cout, g);
            let od = g.out_dims(d);
            let mut out = vec![f32::NAN; cout * od.n()];
            let (a, b) = x.split_at(c1 * d.n());
            let segs = [(a, c1), (b, c2)];
            conv2d(
                Input {
                    segs: &segs,
                    dims: d,
                },
                Lhs::F32(&w),
                cout,
                g,
                Init::bias(&vec![0.0; cout]),
                &mut out,
                &mut Arena::default(),
            );
            for (o, r) in out.iter().zip(&want) {
                assert!((o - r).abs() < 1e-4, "{d:?} {g:?}: {o} vs {r}");
            }

            // The bf16 product: the same convolution of the bf16-rounded operands.
            let round =
                |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
            let want = reference(&round(&x), d, cin, &round(&w), cout, g);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let tiles = bf16_gemm::Tiles::from_rows(&wb, cout, cin * g.k * g.k);
            // The tap-major depth of the implicit convolution's weights, here through im2col.
            let taps = g.k * g.k;
            let tap_major = bf16_gemm::Tiles::from_rows_tap_major(&wb, cout, cin * taps, taps);
            for lhs in [Lhs::Bf16(&wb), Lhs::Tiles(&tiles), Lhs::Tiles(&tap_major)] {
                out.fill(f32::NAN);
                conv2d(
                    Input {
                        segs: &segs,
                        dims: d,
                    },
                    lhs,
                    cout,
                    g,
                    Init::bias(&vec![0.0; cout]),
                    &mut out,
                    &mut Arena::default(),
                );
                for (o, r) in out.iter().zip(&want) {
                    assert!((o - r).abs() < 1e-4, "bf16 {d:?} {g:?}: {o} vs {r}");
                }
            }
        }
    }
}
