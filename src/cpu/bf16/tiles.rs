//! A bf16 weight matrix laid out as the AMX kernel reads it, once at load: `[tile][block]
//! [16 rows][32 values]`, each tile a contiguous, 64-byte aligned KiB, zero past the rows
//! and the depth. Copying a layer's weights into this layout at every call cost more than
//! the product itself on batch-1 layers (few output columns per weight).
//!
//! A 3×3 convolution's weights may be kept in tap-major depth order (`[tap][cin]` instead of
//! diffusers' `[cin][tap]`), the order in which `cpu::implicit_conv` reads its input; the
//! tiles remember it, and [`Tiles::widen`] gives the values back in the original order.

use half::bf16;

use super::{Line, KBLOCK};

/// Rows per tile.
pub const TROWS: usize = 16;
/// Values per tile (16 rows × one depth block).
pub const ATILE: usize = TROWS * KBLOCK;

/// An `m × k` bf16 matrix in AMX tiles.
#[derive(Clone)]
pub struct Tiles {
    data: Vec<Line>,
    m: usize,
    k: usize,
    /// Taps per input channel when the depth is stored tap-major, else 1.
    taps: usize,
}

fn widen(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

impl std::fmt::Debug for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tiles({}×{}, {} taps)", self.m, self.k, self.taps)
    }
}

impl Tiles {
    /// From row-major `[m][k]` values, each row `[cin][taps]`, stored with the depth in
    /// tap-major order `[taps][cin]`.
    pub fn from_rows_tap_major(rows: &[bf16], m: usize, k: usize, taps: usize) -> Self {
        assert!(
            taps > 0 && k.is_multiple_of(taps),
            "tiles: depth {k} is not whole taps of {taps}"
        );
        let cin = k / taps;
        let mut permuted = vec![bf16::ZERO; rows.len()];
        for (src, dst) in rows
            .chunks_exact(k.max(1))
            .zip(permuted.chunks_exact_mut(k.max(1)))
        {
            for (ci, taps_of_ci) in src.chunks_exact(taps).enumerate() {
                for (t, &v) in taps_of_ci.iter().enumerate() {
                    dst[t * cin + ci] = v;
                }
            }
        }
        Self {
            taps,
            ..Self::from_rows(&permuted, m, k)
        }
    }

    /// From row-major `[m][k]` values.
    pub fn from_rows(rows: &[bf16], m: usize, k: usize) -> Self {
        assert_eq!(
            rows.len(),
            m * k,
            "tiles: {m}×{k} from {} values",
            rows.len()
        );
        let blocks = k.div_ceil(KBLOCK);
        let mtiles = m.div_ceil(TROWS);
        let mut t = Self {
            data: vec![Line::default(); (mtiles * blocks * ATILE).div_ceil(32)],
            m,
            k,
            taps: 1,
        };
        let all = t.values_mut();
        for (r, row) in rows.chunks_exact(k.max(1)).enumerate().take(m) {
            for (kb, src) in row.chunks(KBLOCK).enumerate() {
                let at = ((r / TROWS * blocks + kb) * TROWS + r % TROWS) * KBLOCK;
                for (d, s) in all[at..][..src.len()].iter_mut().zip(src) {
                    *d = s.to_bits();
                }
            }
        }
        t
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn depth(&self) -> usize {
        self.k
    }

    /// Taps per input channel of a tap-major depth, 1 when the depth is in its own order.
    pub fn taps(&self) -> usize {
        self.taps
    }

    /// Depth blocks per tile row.
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(KBLOCK)
    }

    /// Tiles (of 16 rows) held.
    pub fn tiles(&self) -> usize {
        self.m.div_ceil(TROWS)
    }

    pub fn bytes(&self) -> usize {
        64 * self.data.len()
    }

    /// Where the values start (a key for the weight, as `Weight::addr`).
    pub fn addr(&self) -> usize {
        self.data.as_ptr() as usize
    }

    /// Every value as bf16 bits, tile by tile.
    pub fn values(&self) -> &[u16] {
        // SAFETY: the Lines are 32 initialised u16 each; the borrow keeps them alive.
        unsafe {
            std::slice::from_raw_parts(self.data.as_ptr().cast::<u16>(), 32 * self.data.len())
        }
    }

    fn values_mut(&mut self) -> &mut [u16] {
        // SAFETY: as `values`, borrowed mutably.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.data.as_mut_ptr().cast::<u16>(),
                32 * self.data.len(),
            )
        }
    }

    /// Tile `t` from its depth block `kb` on (each block 1 KiB, 64-byte aligned, the next
    /// ones following), to the end of the values.
    pub fn tile(&self, t: usize, kb: usize) -> &[u16] {
        &self.values()[(t * self.blocks() + kb) * ATILE..]
    }

    /// Values `start..start + dst.len()` in row-major order (the original depth order),
    /// widened to f32.
    pub fn widen(&self, start: usize, dst: &mut [f32]) {
        if self.taps == 1 {
            return self.widen_stored(start, dst);
        }
        let (k, all) = (self.k, self.values());
        let cin = k / self.taps;
        for (i, d) in dst.iter_mut().enumerate() {
            let (r, q) = ((start + i) / k, (start + i) % k);
            *d = widen(all[self.at(r, (q % self.taps) * cin + q / self.taps)]);
        }
    }

    /// Values `start..start + dst.len()` in row-major order of the stored depth (tap-major
    /// where [`Tiles::taps`] > 1), widened to f32: the matrix the kernels multiply.
    pub fn widen_stored(&self, start: usize, dst: &mut [f32]) {
        let (k, all) = (self.k.max(1), self.values());
        let mut i = 0;
        while i < dst.len() {
            let (r, q) = ((start + i) / k, (start + i) % k);
            // The rest of this row's depth block, contiguous in the tile.
            let len = (KBLOCK - q % KBLOCK).min(k - q).min(dst.len() - i);
            let from = self.at(r, q);
            for (d, &s) in dst[i..i + len].iter_mut().zip(&all[from..from + len]) {
                *d = widen(s);
            }
            i += len;
        }
    }

    /// Where stored row `r`, depth `q` is among [`Tiles::values`].
    fn at(&self, r: usize, q: usize) -> usize {
        ((r / TROWS * self.blocks() + q / KBLOCK) * TROWS + r % TROWS) * KBLOCK + q % KBLOCK
    }

    /// All values in row-major order.
    pub fn to_rows(&self) -> Vec<bf16> {
        let mut wide = vec![0.0f32; self.m * self.k];
        self.widen(0, &mut wide);
        wide.iter().map(|&v| bf16::from_f32(v)).collect()
    }

    /// `parts` stacked by rows (their depths and depth orders equal): tile by tile where
    /// every part but the last fills whole tiles, else through rows.
    pub fn concat(parts: &[&Tiles]) -> Self {
        let (k, taps) = (parts[0].k, parts[0].taps);
        assert!(
            parts.iter().all(|p| p.k == k && p.taps == taps),
            "tiles: concatenating different depths"
        );
        let m = parts.iter().map(|p| p.m).sum();
        let whole = parts[..parts.len() - 1].iter().all(|p| p.m % TROWS == 0);
        if whole {
            let mut values: Vec<u16> = Vec::new();
            for p in parts {
                values.extend_from_slice(&p.values()[..p.tiles() * p.blocks() * ATILE]);
            }
            let mut t = Self {
                data: vec![Line::default(); values.len().div_ceil(32)],
                m,
                k,
                taps,
            };
            t.values_mut()[..values.len()].copy_from_slice(&values);
            t
        } else {
            let rows: Vec<bf16> = parts.iter().flat_map(|p| p.to_rows()).collect();
            Self::from_rows_tap_major(&rows, m, k, taps)
        }
    }
}
