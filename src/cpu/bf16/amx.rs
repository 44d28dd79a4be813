//! The bf16 product on Intel AMX tiles.
//!
//! Each step of the kernel is a 32×32 f32 block of the output in four accumulator tiles
//! (`tmm0`–`tmm3`), fed per depth block by two tiles of A (`tmm4`, `tmm5`: 16 rows × 32
//! depth) and two panels of B (`tmm6`, `tmm7`: 16 depth pairs × 16 columns, packed or read
//! in place, see `BTiles`);
//! `TDPBF16PS` multiplies bf16 pairs and adds in f32. Blocks go column pair by column pair
//! over a chunk of rows (about 64 KiB of A), then over the next chunk, so A is read from
//! memory once per product rather than once per 32 columns. A is first copied, zero-padded,
//! into 64-byte-aligned thread scratch as whole tiles, each a contiguous 1 KiB (`[tile]
//! [block][16][32]`): a tile row that straddles two cache lines costs about a quarter of the
//! speed.
//! Tile registers are not renamed, so the loads for the next depth block are issued right
//! after the last product that reads each register (software pipelining: about 15% over
//! loading all four first).
//!
//! Linux hands out the tile registers per process on request (`arch_prctl
//! ARCH_REQ_XCOMP_PERM`): [`available`] asks once. The instructions are written in `asm!`
//! (Rust's AMX intrinsics are unstable); no code the compiler generates uses tile registers,
//! so their state between the asm blocks of one call is the kernel's own.

use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

use half::slice::HalfFloatSliceExt;

use super::tiles::{ATILE, TROWS};
use super::{kpairs, panels, AlignedBuf, BTiles, Lhs, KBLOCK, PANEL};

/// Whether this CPU has AMX-BF16 and this process may use the tiles (asked once; never
/// with `RDIFF_NO_AMX` set, which the tests use to run the portable kernel).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| std::env::var_os("RDIFF_NO_AMX").is_none() && request())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request() -> bool {
    // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which XSAVE features the process
    // may use; it reads no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request() -> bool {
    false
}

/// `LDTILECFG`'s 64-byte operand: palette 1, every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    _reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Bytes of A (weights) that every column pair of B passes over before the next rows': a
/// pair of A tiles over the whole depth is 2 KiB a depth block, so from 1,024 deep one pair.
/// A product's weights (26 MB for SDXL's 1,280 → 10,240 feed-forward) were read once per 32
/// columns, from L3, before; now once per product (benches/README.md: SDXL 1.2×, SD 1.5 1.1×
/// faster in bf16; 256 KiB no faster, 1 MiB slower, splitting the depth as well slower).
const A_CHUNK: usize = 64 << 10;

/// One 32×32 block of sums, as the tiles store it.
#[repr(C, align(64))]
struct CBlock([f32; 4 * TROWS * PANEL]);

thread_local! {
    static A_TILES: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
    static ZERO_TILES: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// See [`super::gemm`].
///
/// # Safety
/// As [`super::gemm`], whose checks this relies on, and [`available`] must have returned true.
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    a: Lhs<'_>,
    b: BTiles<'_>,
    beta: f32,
) {
    let blocks = kpairs(k) * 2 / KBLOCK;
    // An even number of A tiles (the kernel takes two at a time); rows past m are zero or
    // another task's, and are discarded.
    let mtiles = m.div_ceil(2 * TROWS) * 2;
    let (mut rows_buf, mut zero_buf) = (
        A_TILES.with(|b| std::mem::take(&mut *b.borrow_mut())),
        ZERO_TILES.with(|b| std::mem::take(&mut *b.borrow_mut())),
    );
    {
        // Each tile's first depth block; the next ones follow it, ATILE values apart.
        let tiles: Vec<*const u16> = match a {
            Lhs::Rows(a, lda) => {
                let a = a.reinterpret_cast();
                let at = rows_buf.u16s(mtiles * blocks * ATILE);
                for t in 0..mtiles {
                    for i in 0..TROWS {
                        let r = t * TROWS + i;
                        let row = if r < m { &a[r * lda..][..k] } else { &[][..] };
                        for kb in 0..blocks {
                            let dst_row =
                                &mut at[(t * blocks + kb) * ATILE + i * KBLOCK..][..KBLOCK];
                            let src = row.get(kb * KBLOCK..).unwrap_or(&[]);
                            let len = src.len().min(KBLOCK);
                            dst_row[..len].copy_from_slice(&src[..len]);
                            dst_row[len..].fill(0);
                        }
                    }
                }
                (0..mtiles)
                    .map(|t| at[t * blocks * ATILE..].as_ptr())
                    .collect()
            }
            Lhs::Tiles(w, t0, kb0) => {
                // zero tiles only where the task's rows run past the weights' (an odd tile
                // count), not for every task
                let zero = if t0 + mtiles > w.tiles() {
                    let zero = zero_buf.u16s(blocks * ATILE);
                    zero.fill(0);
                    zero.as_ptr()
                } else {
                    std::ptr::null()
                };
                (0..mtiles)
                    .map(|t| {
                        if t0 + t < w.tiles() {
                            w.tile(t0 + t, kb0).as_ptr()
                        } else {
                            zero
                        }
                    })
                    .collect()
            }
        };
        let mut c = CBlock([0.0; 4 * TROWS * PANEL]);
        let cp = c.0.as_mut_ptr();
        // Bytes per row: of an A tile, of the 32×32 block.
        let (sa, sc) = (2 * KBLOCK, 4 * 2 * PANEL);
        // SAFETY: `available()` holds (the caller's contract), so the tile instructions may
        // run. Every tile load reads 16 rows of 64 bytes inside a tile of `rows_buf`, of
        // `zero_buf` or of the weights' tiles (blocks kb0..kb0 + blocks exist, checked by
        // `super::gemm`), or inside B's memory (`BTiles`' contract); every store writes
        // inside `c`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            let sb = b.stride;
            // Rows in chunks of about A_CHUNK bytes of A; every column pair passes over one
            // chunk before the next, which it then finds in cache (the same sums, in another
            // order of blocks).
            let pair_bytes = 2 * blocks * ATILE * std::mem::size_of::<u16>();
            let chunk = (A_CHUNK / pair_bytes).max(1);
            for mc in (0..mtiles / 2).step_by(chunk) {
                for np in 0..panels(n) / 2 {
                    let b0 = b.base.add(b.panels.at(2 * np));
                    let b1 = b.base.add(b.panels.at(2 * np + 1));
                    let bt = |p: *const u32, kb: usize| p.add(b.blocks.at(kb));
                    for mp in mc..(mc + chunk).min(mtiles / 2) {
                        let (a0, a1) = (tiles[2 * mp], tiles[2 * mp + 1]);
                        let atile = |p: *const u16, kb: usize| p.add(kb * ATILE);
                        asm!(
                            "tilezero tmm0",
                            "tilezero tmm1",
                            "tilezero tmm2",
                            "tilezero tmm3",
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            a0 = in(reg) a0,
                            a1 = in(reg) a1,
                            b0 = in(reg) b0,
                            b1 = in(reg) b1,
                            sa = in(reg) sa,
                            sb = in(reg) sb,
                            options(nostack, readonly)
                        );
                        for kb in 1..blocks {
                            // Block kb - 1's products, block kb's loads behind them.
                            asm!(
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tileloadd tmm4, [{a0} + {sa}*1]",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tileloadd tmm6, [{b0} + {sb}*1]",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                "tileloadd tmm5, [{a1} + {sa}*1]",
                                "tileloadd tmm7, [{b1} + {sb}*1]",
                                a0 = in(reg) atile(a0, kb),
                                a1 = in(reg) atile(a1, kb),
                                b0 = in(reg) bt(b0, kb),
                                b1 = in(reg) bt(b1, kb),
                                sa = in(reg) sa,
                                sb = in(reg) sb,
                                options(nostack, readonly)
                            );
                        }
                        asm!(
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            "tilestored [{c0} + {sc}*1], tmm0",
                            "tilestored [{c1} + {sc}*1], tmm1",
                            "tilestored [{c2} + {sc}*1], tmm2",
                            "tilestored [{c3} + {sc}*1], tmm3",
                            c0 = in(reg) cp,
                            c1 = in(reg) cp.add(PANEL),
                            c2 = in(reg) cp.add(TROWS * 2 * PANEL),
                            c3 = in(reg) cp.add(TROWS * 2 * PANEL + PANEL),
                            sc = in(reg) sc,
                            options(nostack)
                        );
                        // The block's rows and columns that exist, added onto dst (or stored).
                        let (r0, c0) = (mp * 2 * TROWS, np * 2 * PANEL);
                        if r0 >= m {
                            continue;
                        }
                        let (rows, cols) = ((m - r0).min(2 * TROWS), (n - c0).min(2 * PANEL));
                        for i in 0..rows {
                            let crow = std::slice::from_raw_parts(cp.add(i * 2 * PANEL), cols);
                            let d = std::slice::from_raw_parts_mut(
                                dst.add((r0 + i) * dst_rs + c0),
                                cols,
                            );
                            if accumulate {
                                for (o, &v) in d.iter_mut().zip(crow) {
                                    *o += beta * v;
                                }
                            } else {
                                for (o, &v) in d.iter_mut().zip(crow) {
                                    *o = beta * v;
                                }
                            }
                        }
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
    A_TILES.with(|b| *b.borrow_mut() = rows_buf);
    ZERO_TILES.with(|b| *b.borrow_mut() = zero_buf);
}
