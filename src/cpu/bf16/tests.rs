use half::bf16;

use super::*;

fn value(i: usize, a: usize, b: usize) -> f32 {
    ((i * a % b) as f32 - (b / 2) as f32) / (b as f32 / 3.0)
}

#[test]
fn round_matches_half() {
    let mut xs = vec![
        0.0f32,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        f32::from_bits(0x3F80_8000), // a tie, rounds to even (down)
        f32::from_bits(0x3F81_8000), // a tie, rounds to even (up)
        f32::from_bits(0x7F7F_FFFF), // rounds to infinity
    ];
    xs.extend((0..10_000).map(|i| value(i, 7919, 100_003) * 1e3));
    for x in xs {
        assert_eq!(round(x), u32::from(bf16::from_f32(x).to_bits()), "{x:e}");
    }
    assert!(f32::from_bits(round(f32::NAN) << 16).is_nan());
    assert!(f32::from_bits(round(-f32::NAN) << 16).is_nan());
}

#[test]
fn pack_layout() {
    let (k, n, rs) = (35, 21, 24);
    let src: Vec<f32> = (0..k * rs).map(|i| value(i, 37, 101)).collect();
    let mut out = vec![u32::MAX; packed_len(k, n)];
    pack(&src, rs, k, n, &mut out);
    let kp = kpairs(k);
    assert_eq!((kp, panels(n)), (32, 2));
    for p in 0..panels(n) {
        for q in 0..kp {
            for c in 0..PANEL {
                let col = p * PANEL + c;
                let at = |r: usize| {
                    if r < k && col < n {
                        round(src[r * rs + col])
                    } else {
                        0
                    }
                };
                let want = at(2 * q) | (at(2 * q + 1) << 16);
                assert_eq!(
                    out[(p * kp + q) * PANEL + c],
                    want,
                    "panel {p} pair {q} col {c}"
                );
            }
        }
    }
}

/// `dst + beta · A × B` in f64 from the bf16 operands.
fn reference(
    (m, n, k): (usize, usize, usize),
    a: &[bf16],
    lda: usize,
    bm: &[f32],
    dst: &[f32],
    beta: f32,
) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for q in 0..k {
                let bv = bf16::from_f32(bm[q * n + j]).to_f32();
                s += f64::from(a[i * lda + q].to_f32()) * f64::from(bv);
            }
            out[i * n + j] = f64::from(dst[i * n + j]) + f64::from(beta) * s;
        }
    }
    out
}

/// Both kernels (AMX where this machine has it) against the f64 sums of the same bf16
/// operands, over shapes with partial tiles, odd depths, a row stride wider than the depth,
/// rows in several chunks of the AMX kernel's walk (the last one short), and a destination
/// added onto or only written.
#[test]
fn kernels_match_reference() {
    let shapes = [
        (1, 1, 1),
        (16, 16, 32),
        (33, 40, 27),
        (70, 100, 70),
        (31, 17, 600),
        (64, 256, 1152),
        (200, 70, 320),
    ];
    for (m, n, k) in shapes {
        for lda in [k, k + 5] {
            let a: Vec<bf16> = (0..m * lda)
                .map(|i| bf16::from_f32(value(i, 13, 29)))
                .collect();
            let bm: Vec<f32> = (0..k * n).map(|i| value(i, 37, 101)).collect();
            let dst0: Vec<f32> = (0..m * n).map(|i| value(i, 7, 11)).collect();
            let beta = 0.75;
            let want = reference((m, n, k), &a, lda, &bm, &dst0, beta);
            let want0 = reference((m, n, k), &a, lda, &bm, &vec![0.0; m * n], beta);
            let mut packed = vec![0; packed_len(k, n)];
            pack(&bm, n, k, n, &mut packed);
            // The same A in tiles, as a block of a larger matrix: 16 rows above and one depth
            // block to the left of it.
            let (big_m, big_k) = (m + 16, lda + KBLOCK);
            let mut big = vec![bf16::from_f32(9.0); big_m * big_k];
            for i in 0..m {
                big[(16 + i) * big_k + KBLOCK..][..lda].copy_from_slice(&a[i * lda..][..lda]);
            }
            let tiles = Tiles::from_rows(&big, big_m, big_k);
            let mut kernels: Vec<(String, Vec<f32>, bool)> = Vec::new();
            for name in ["portable", "amx"] {
                if name == "amx" && !amx::available() {
                    continue;
                }
                for lhs in [Lhs::Rows(&a, lda), Lhs::Tiles(&tiles, 1, 1)] {
                    for accumulate in [true, false] {
                        // Not accumulating, dst starts as NaN: none of it may be read.
                        let mut dst = if accumulate {
                            dst0.clone()
                        } else {
                            vec![f32::NAN; m * n]
                        };
                        let dsts = (dst.as_mut_ptr(), n);
                        // SAFETY: dst is m×n at stride n; shapes as `gemm` checks them.
                        unsafe {
                            if name == "amx" {
                                let b = BTiles::packed(&packed, k);
                                amx::gemm((m, n, k), dsts, accumulate, lhs, b, beta)
                            } else {
                                portable::gemm((m, n, k), dsts, accumulate, lhs, &packed, beta)
                            }
                        }
                        let what = if matches!(lhs, Lhs::Tiles(..)) {
                            "tiles"
                        } else {
                            "rows"
                        };
                        kernels.push((
                            format!("{name} {what} accumulate={accumulate}"),
                            dst,
                            accumulate,
                        ));
                    }
                }
            }
            for (name, got, accumulate) in &kernels {
                let want = if *accumulate { &want } else { &want0 };
                for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                    // f32 sums of k exact products: a few ulps of the magnitudes summed.
                    let tol = 4e-7 * k as f64 * 4.0 + 1e-6 * w.abs();
                    assert!(
                        (f64::from(g) - w).abs() <= tol,
                        "{name} {m}×{n}×{k} lda {lda}: [{i}] {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// A through `gemm`'s own checks: too short an A is a panic with a message, not a read past it.
#[test]
#[should_panic(expected = "A too short")]
fn short_a_is_refused() {
    let a = vec![bf16::ZERO; 10];
    let b = vec![0u32; packed_len(8, 4)];
    let mut dst = vec![0.0f32; 8];
    // SAFETY: dst is 2×4.
    unsafe {
        gemm(
            (2, 4, 8),
            (dst.as_mut_ptr(), 4),
            true,
            Lhs::Rows(&a, 8),
            &b,
            1.0,
        )
    };
}

#[test]
fn tiles_round_trip() {
    for (m, k) in [(1, 1), (16, 32), (37, 70), (5, 600)] {
        let rows: Vec<bf16> = (0..m * k)
            .map(|i| bf16::from_f32(value(i, 13, 29)))
            .collect();
        let t = Tiles::from_rows(&rows, m, k);
        assert_eq!(t.to_rows(), rows, "{m}×{k}");
        // A widened slice that starts and ends mid-row.
        let (start, len) = (k / 2, (m * k - k / 2).min(k + 40));
        let mut wide = vec![0.0; len];
        t.widen(start, &mut wide);
        for (i, &v) in wide.iter().enumerate() {
            assert_eq!(v, rows[start + i].to_f32(), "{m}×{k} at {}", start + i);
        }
        // Stacked by rows: tile by tile (whole tiles above) or through rows.
        let other: Vec<bf16> = (0..3 * k)
            .map(|i| bf16::from_f32(value(i, 7, 11)))
            .collect();
        let o = Tiles::from_rows(&other, 3, k);
        let both = Tiles::concat(&[&t, &o]);
        assert_eq!(
            both.to_rows(),
            [rows.clone(), other].concat(),
            "{m}×{k} + 3×{k}"
        );
    }
}

/// Tap-major tiles store row `[cin][taps]` as `[taps][cin]` and give the original order back.
#[test]
fn tap_major_tiles_keep_the_original_order_outside() {
    let (m, cin, taps) = (20, 6, 9);
    let k = cin * taps;
    let rows: Vec<bf16> = (0..m * k)
        .map(|i| bf16::from_f32(value(i, 13, 29)))
        .collect();
    let t = Tiles::from_rows_tap_major(&rows, m, k, taps);
    assert_eq!(t.taps(), taps);
    assert_eq!(t.to_rows(), rows);
    let mut stored = vec![0.0; m * k];
    t.widen_stored(0, &mut stored);
    for r in 0..m {
        for (ci, tap) in (0..cin).flat_map(|c| (0..taps).map(move |t| (c, t))) {
            assert_eq!(
                stored[r * k + tap * cin + ci],
                rows[r * k + ci * taps + tap].to_f32()
            );
        }
    }
    let both = Tiles::concat(&[&t, &t]);
    assert_eq!(
        (both.taps(), both.to_rows()),
        (taps, [rows.clone(), rows].concat())
    );
}
