//! The bf16 product on Intel AMX tiles.
//!
//! Each step of the kernel is a 32×32 f32 block of the output in four accumulator tiles
//! (`tmm0`–`tmm3`), fed by two 16-row tiles of A (`tmm4`, `tmm5`: 16 rows × 32 depth, read in
//! place at the weights' row stride) and two packed panels of B (`tmm6`, `tmm7`: 16 depth
//! pairs × 16 columns) per depth block; `TDPBF16PS` multiplies bf16 pairs and adds in f32.
//! A tile whose 16 rows × whole-block depth would read past the end of A (the last rows, an
//! odd tail) is copied, zero-padded, into thread scratch first; a read past a row's depth
//! inside A meets B's zero padding, so it adds exact zeros.
//!
//! Linux hands out the tile registers per process on request (`arch_prctl
//! ARCH_REQ_XCOMP_PERM`): [`available`] asks once. The instructions are written in `asm!`
//! (Rust's AMX intrinsics are unstable); no code the compiler generates uses tile registers,
//! so their state between the asm blocks of one call is the kernel's own.

use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::{kpairs, panels, KBLOCK, PANEL};

/// Whether this CPU has AMX-BF16 and this process may use the tiles (asked once).
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

/// Rows per A tile.
const TROWS: usize = 16;

thread_local! {
    static EDGE: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// See [`super::gemm`]; `a` as bf16 bits.
///
/// # Safety
/// As [`super::gemm`], whose checks this relies on, and [`available`] must have returned true.
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (a, lda): (&[u16], usize),
    b: &[u32],
    beta: f32,
) {
    let kp = kpairs(k);
    let kpad = 2 * kp;
    let blocks = kpad / KBLOCK;
    let mtiles = m.div_ceil(TROWS);
    EDGE.with(|edge| {
        let mut edge = edge.borrow_mut();
        // Each A tile as (pointer, row stride in bytes): in place when its 16 rows of kpad
        // values lie inside `a`, else a zero-padded copy of its rows that exist.
        let inside = |t: usize| (t * TROWS + TROWS - 1) * lda + kpad <= a.len();
        let copies = (0..mtiles).filter(|&t| !inside(t)).count();
        edge.clear();
        edge.resize(copies * TROWS * kpad, 0);
        let mut tiles = Vec::with_capacity(mtiles.next_multiple_of(2));
        let mut slot = 0;
        for t in 0..mtiles {
            if inside(t) {
                tiles.push((a[t * TROWS * lda..].as_ptr(), 2 * lda));
            } else {
                let copy = &mut edge[slot * TROWS * kpad..][..TROWS * kpad];
                for r in 0..TROWS.min(m - t * TROWS) {
                    let row = t * TROWS + r;
                    copy[r * kpad..][..k].copy_from_slice(&a[row * lda..][..k]);
                }
                tiles.push((copy.as_ptr(), 2 * kpad));
                slot += 1;
            }
        }
        if mtiles % 2 == 1 {
            // An odd last tile is paired with itself; the copy's rows are discarded.
            tiles.push(tiles[mtiles - 1]);
        }
        let mut c = [0.0f32; 4 * TROWS * PANEL];
        // SAFETY: `available()` holds (the caller's contract), so the tile instructions may
        // run; every tile load reads 16 rows of 64 bytes inside `a`, `edge` or `b` (checked
        // above and by `super::gemm`), every store writes inside `c`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            for np in (0..panels(n)).step_by(2) {
                let b0 = b[np * kp * PANEL..].as_ptr();
                let b1 = b[(np + 1) * kp * PANEL..].as_ptr();
                for (pi, pair) in tiles.chunks_exact(2).enumerate() {
                    let ((a0, s0), (a1, s1)) = (pair[0], pair[1]);
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    for kb in 0..blocks {
                        asm!(
                            "tileloadd tmm4, [{a0} + {s0}*1]",
                            "tileloadd tmm5, [{a1} + {s1}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(kb * KBLOCK),
                            a1 = in(reg) a1.add(kb * KBLOCK),
                            s0 = in(reg) s0,
                            s1 = in(reg) s1,
                            b0 = in(reg) b0.add(kb * KBLOCK / 2 * PANEL),
                            b1 = in(reg) b1.add(kb * KBLOCK / 2 * PANEL),
                            sb = in(reg) 4 * PANEL,
                            options(nostack, readonly)
                        );
                    }
                    let cp = c.as_mut_ptr();
                    asm!(
                        "tilestored [{c0} + {sc}*1], tmm0",
                        "tilestored [{c1} + {sc}*1], tmm1",
                        "tilestored [{c2} + {sc}*1], tmm2",
                        "tilestored [{c3} + {sc}*1], tmm3",
                        c0 = in(reg) cp,
                        c1 = in(reg) cp.add(PANEL),
                        c2 = in(reg) cp.add(TROWS * 2 * PANEL),
                        c3 = in(reg) cp.add(TROWS * 2 * PANEL + PANEL),
                        sc = in(reg) 4 * 2 * PANEL,
                        options(nostack)
                    );
                    // The block's rows and columns that exist, added onto dst.
                    let (r0, c0) = (pi * 2 * TROWS, np * PANEL);
                    let (rows, cols) = ((m - r0).min(2 * TROWS), (n - c0).min(2 * PANEL));
                    for (i, crow) in c.chunks_exact(2 * PANEL).take(rows).enumerate() {
                        let d =
                            std::slice::from_raw_parts_mut(dst.add((r0 + i) * dst_rs + c0), cols);
                        for (o, &v) in d.iter_mut().zip(crow) {
                            *o += beta * v;
                        }
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    });
}
