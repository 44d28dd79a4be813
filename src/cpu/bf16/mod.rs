//! The matrix product of the bf16 compute path (`compute_dtype="bfloat16"`).
//!
//! `dst += β · A × B` with A the layer's weights as bf16 rows (the model's `Weight::Bf16`,
//! `[m][k]` at a row stride), B the right-hand side (im2col columns, or a 1×1 convolution's
//! input rows) rounded to bf16 and packed in depth pairs by [`pack`], and the sums kept in
//! f32. Two kernels compute it over the same packed B:
//!
//! - [`amx`]: Intel AMX tiles (`TDPBF16PS`, a 16×16 f32 block per 16×32 by 32×16 bf16 step),
//!   where the CPU has AMX-BF16 and the kernel lets this process use the tile registers.
//! - [`portable`]: the same operands widened back to f32 and multiplied by `gemm`, anywhere
//!   else (and the tests' second opinion on the AMX kernel).
//!
//! Each output element is summed over the whole depth by one kernel call, in an order that
//! does not depend on how the op was cut into tasks, so its bits do not depend on the pool.
//! bf16 × bf16 products are exact in f32; the two kernels differ only in the order of the f32
//! additions.

pub mod amx;
mod pack;
mod portable;
pub mod tiles;

use std::cell::RefCell;
use std::marker::PhantomData;

use half::bf16;

pub use pack::{pack, pack_pairs, pad_depth, pair, round};
pub use tiles::Tiles;
use tiles::TROWS;

/// The product's left operand (the weights): bf16 rows at a row stride, or a matrix's
/// [`Tiles`] from tile `t0` (row 16·t0) and depth block `kb0` (column 32·kb0).
#[derive(Clone, Copy)]
pub enum Lhs<'a> {
    Rows(&'a [bf16], usize),
    Tiles(&'a Tiles, usize, usize),
}

/// Columns per packed panel (one AMX tile's width in f32).
pub const PANEL: usize = 16;
/// Depth per block (one AMX tile's width in bf16).
pub const KBLOCK: usize = 32;

/// Depth pairs a packed panel holds for depth `k`: whole blocks, zero-padded.
pub fn kpairs(k: usize) -> usize {
    k.next_multiple_of(KBLOCK) / 2
}

/// Panels a packed B holds for `n` columns: an even number (the AMX kernel takes two at a
/// time), zero-padded.
pub fn panels(n: usize) -> usize {
    n.div_ceil(2 * PANEL) * 2
}

/// Length in u32 of the packed B for depth `k` and `n` columns.
pub fn packed_len(k: usize, n: usize) -> usize {
    panels(n) * kpairs(k) * PANEL
}

/// Which kernel [`gemm`] runs here: `"amx"` or `"portable"`.
pub fn kernel_name() -> &'static str {
    if amx::available() {
        "amx"
    } else {
        "portable"
    }
}

/// 64 bytes on a 64-byte boundary: an AMX tile row, a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// A growable scratch buffer on 64-byte boundaries (AMX tile rows that straddle cache lines
/// load about a quarter slower).
#[derive(Default)]
pub struct AlignedBuf(Vec<Line>);

impl AlignedBuf {
    /// The first `len` u32 (contents unspecified).
    pub fn u32s(&mut self, len: usize) -> &mut [u32] {
        let lines = len.div_ceil(16);
        if self.0.len() < lines {
            self.0.resize(lines, Line::default());
        }
        // SAFETY: `lines` Lines are 64·lines bytes of initialised u32s, at least len of them;
        // the borrow of self keeps them alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u32>(), len) }
    }

    /// The first `len` u16 (contents unspecified).
    pub fn u16s(&mut self, len: usize) -> &mut [u16] {
        let words = self.u32s(len.div_ceil(2));
        // SAFETY: the same bytes as u16s (alignment 2 ≤ 4), at least len of them.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u16>(), len) }
    }
}

thread_local! {
    static PACKED: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// Runs `f` on this thread's packing buffer (64-byte aligned), `len` long. Not re-entrant.
pub fn with_packed<R>(len: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    PACKED.with(|p| f(p.borrow_mut().u32s(len)))
}

/// `dst[i][j] = (accumulate ? dst[i][j] : 0) + beta · Σ_q A[i][q] · B[q][j]` for `i < m`,
/// `j < n`, `q < k`, `B` packed by [`pack`] for depth `k` and at least `n` columns (without
/// `accumulate`, dst is only written: nothing needs zeroing first). Rows A: `a` starts at
/// row 0 and holds at least `(m - 1)·lda + k` values. Tiles A: rows `16·t0..16·t0 + m`,
/// depth `32·kb0..+ k` of the matrix, inside it (a kernel may read on into the tiles' zero
/// padding).
///
/// # Safety
/// `dst` addresses an m×n row-major f32 matrix at row stride `dst_rs` that no one else writes
/// meanwhile.
pub unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    a: Lhs<'_>,
    b: &[u32],
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    check_lhs((m, k), a);
    assert!(
        b.len() >= panels(n) * kpairs(k) * PANEL,
        "bf16 gemm: B too short"
    );
    // SAFETY: the shapes were checked above; the caller's contract covers dst.
    unsafe {
        if amx::available() {
            amx::gemm(
                (m, n, k),
                (dst, dst_rs),
                accumulate,
                a,
                BTiles::packed(b, k),
                beta,
            )
        } else {
            portable::gemm((m, n, k), (dst, dst_rs), accumulate, a, b, beta)
        }
    }
}

/// [`gemm`] with B's tiles read where they lie ([`BTiles::strided`]) instead of packed: AMX
/// only (check [`amx::available`] first). `b` must name a tile for each of the `panels(n)`
/// panels and `kpairs(k) / 16` depth blocks.
///
/// # Safety
/// As [`gemm`].
pub unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    a: Lhs<'_>,
    b: BTiles<'_>,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(amx::available(), "bf16 gemm: strided B needs AMX");
    check_lhs((m, k), a);
    assert!(
        b.panels.covers(panels(n)) && b.blocks.covers(kpairs(k) * 2 / KBLOCK),
        "bf16 gemm: B has too few tiles"
    );
    // SAFETY: as in `gemm`; `BTiles::strided` checked that its tiles lie in its memory.
    unsafe { amx::gemm((m, n, k), (dst, dst_rs), accumulate, a, b, beta) }
}

fn check_lhs((m, k): (usize, usize), a: Lhs<'_>) {
    match a {
        Lhs::Rows(a, lda) => assert!(a.len() >= (m - 1) * lda + k, "bf16 gemm: A too short"),
        Lhs::Tiles(t, t0, kb0) => assert!(
            16 * t0 + m <= t.rows() && 32 * kb0 + k <= t.depth(),
            "bf16 gemm: A too small"
        ),
    }
}

/// Where the AMX kernel reads B: the tile of panel `p` (16 columns) and depth block `kb` (16
/// pairs) starts `panels.at(p) + blocks.at(kb)` words from `base`, its 16 rows (pairs)
/// `stride` bytes apart. [`pack`]'s layout is one case; a 3×3 convolution's padded
/// channel-pair planes (`cpu::implicit_conv`), read in place, are another.
#[derive(Clone, Copy)]
pub struct BTiles<'a> {
    base: *const u32,
    panels: Offsets<'a>,
    blocks: Offsets<'a>,
    stride: usize,
    _memory: PhantomData<&'a [u32]>,
}

/// Word offsets of tiles: `i · step`, or listed.
#[derive(Clone, Copy)]
enum Offsets<'a> {
    Step(usize),
    List(&'a [usize]),
}

impl Offsets<'_> {
    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        match self {
            Self::Step(s) => i * s,
            Self::List(l) => l[i],
        }
    }

    fn covers(&self, count: usize) -> bool {
        match self {
            Self::Step(_) => true,
            Self::List(l) => l.len() >= count,
        }
    }
}

impl<'a> BTiles<'a> {
    /// B packed by [`pack`] for depth `k`.
    fn packed(b: &'a [u32], k: usize) -> Self {
        Self {
            base: b.as_ptr(),
            panels: Offsets::Step(kpairs(k) * PANEL),
            blocks: Offsets::Step(KBLOCK / 2 * PANEL),
            stride: 4 * PANEL,
            _memory: PhantomData,
        }
    }

    /// Tiles in `data`: panel p's at word `panels[p]`, depth block kb's `blocks[kb]` words on,
    /// rows `row_words` apart. Panics unless every such tile lies inside `data`.
    pub fn strided(
        data: &'a [u32],
        panels: &'a [usize],
        blocks: &'a [usize],
        row_words: usize,
    ) -> Self {
        let last = |l: &[usize]| l.iter().copied().max().unwrap_or(0);
        assert!(
            last(panels) + last(blocks) + (TROWS - 1) * row_words + PANEL <= data.len(),
            "bf16 gemm: B tiles past their memory"
        );
        Self {
            base: data.as_ptr(),
            panels: Offsets::List(panels),
            blocks: Offsets::List(blocks),
            stride: 4 * row_words,
            _memory: PhantomData,
        }
    }
}

#[cfg(test)]
mod tests;
