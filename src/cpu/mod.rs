//! The CPU backend: the fused pass and its reductions over caller-owned buffers, and the
//! UNet's ops (rayon, gemm).

pub mod arena;
pub mod attention;
pub mod bf16;
pub mod conv;
pub mod direct_conv;
pub mod error_norm;
pub mod gamma;
pub mod geglu;
pub mod implicit_conv;
pub mod layer_norm;
pub mod lincomb;
pub mod narrow_gemm;
pub mod norm;
pub mod peak;
pub mod resample;
pub mod threshold;
pub mod unet;
pub mod vecmath;
pub mod winograd;

/// The threads the UNet's convolutions cut their work for: the rayon pool's. Their output bits
/// do not depend on it: every product's depth is summed in the same fixed blocks whatever the
/// tile shapes (`conv::gemm_rows`, Winograd's input-channel chunks), and the rest of each
/// output element is computed by one task. `tests/test_determinism.py` and the convolution
/// tests compare pools of different sizes bit for bit.
pub fn partition_threads() -> usize {
    rayon::current_num_threads()
}

/// Attention's query blocks are cut as if for this many threads, whatever the pool: the
/// online softmax's key blocks follow the query blocks (a fixed budget of scores), and with
/// them the order of every sum.
pub const ATTENTION_THREADS: usize = 16;

/// An output buffer's base pointer handed to rayon tasks. Each op's tasks write disjoint
/// regions of the buffer through it (every use says which, at its unsafe block).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T = f32>(pub(crate) *mut T);
// SAFETY: the tasks holding it write disjoint regions (see the type's doc), so sending the
// pointer to another thread creates no data race.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: shared only to hand the same base pointer to every task; see Send.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, so closures capture the whole (Sync) wrapper.
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::arena::Arena;
    use super::conv::{self, Init, Input};
    use super::winograd;
    use crate::unet::layout::{Dims, Geometry};
    use crate::unet::weights::Weight;

    /// The convolutions cut their work for the pool they run in; each output bit must not
    /// follow. Shapes whose products are deeper than one gemm depth block and whose tasks
    /// straddle gemm's 64×64 threshold, im2col, 1×1 and both Winograd variants.
    #[test]
    fn convolution_bits_do_not_depend_on_the_pool() {
        let stride2 = Geometry {
            stride: 2,
            pad: [0, 0, 1, 1],
            ..Geometry::SAME3
        };
        let up = Geometry {
            upsample: true,
            ..Geometry::SAME3
        };
        let avx512 = super::vecmath::has_avx512();
        let cases = [
            (Dims { b: 2, h: 20, w: 20 }, 60, 150, Geometry::SAME3, false),
            (Dims { b: 1, h: 8, w: 8 }, 300, 256, Geometry::SAME3, false),
            (Dims { b: 2, h: 16, w: 16 }, 64, 96, stride2, false),
            (Dims { b: 1, h: 16, w: 16 }, 600, 96, Geometry::POINT, false),
            (Dims { b: 1, h: 8, w: 16 }, 300, 130, Geometry::SAME3, true),
            (Dims { b: 2, h: 32, w: 32 }, 64, 72, Geometry::SAME3, true),
            // F(4×4) from 32 channels with 64 on the other side, and on an 8-pixel-wide
            // upsampled output (AVX-512); 32 in and out go to the direct convolution.
            (
                Dims {
                    b: 16,
                    h: 16,
                    w: 16,
                },
                32,
                64,
                Geometry::SAME3,
                avx512,
            ),
            (
                Dims {
                    b: 16,
                    h: 16,
                    w: 16,
                },
                32,
                40,
                Geometry::SAME3,
                false,
            ),
            (Dims { b: 64, h: 4, w: 4 }, 48, 32, up, avx512),
            // F(4×4) on 8-pixel-wide outputs from 128 channels and 32 tiles (AVX-512).
            (Dims { b: 8, h: 8, w: 8 }, 130, 128, Geometry::SAME3, avx512),
        ];
        for (d, cin, cout, g, wino) in cases {
            assert_eq!(
                winograd::applies(g, d, cin, cout),
                wino,
                "{d:?} {cin}→{cout}"
            );
            let x: Vec<f32> = (0..cin * d.n())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0)
                .collect();
            let w: Vec<f32> = (0..cout * cin * g.k * g.k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 91.0)
                .collect();
            let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.01).collect();
            let n = g.out_dims(d).n();
            // The bf16 product (AMX where the CPU has it) on the same shapes, never Winograd.
            let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let wb = super::bf16::Tiles::from_rows(&wb, cout, cin * g.k * g.k);
            let run = |threads: usize, bf16: bool| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![f32::NAN; cout * n];
                pool.install(|| {
                    let segs = [(&x[..], cin)];
                    let input = Input {
                        segs: &segs,
                        dims: d,
                    };
                    let (init, arena) = (Init::bias(&bias), &mut Arena::default());
                    let lhs = if bf16 {
                        conv::Lhs::Tiles(&wb)
                    } else if wino {
                        let w = Weight::F32(w.clone());
                        return winograd::conv2d(input, &w, cout, g, init, &mut out, arena);
                    } else {
                        conv::Lhs::F32(&w)
                    };
                    conv::conv2d(input, lhs, cout, g, init, &mut out, arena);
                });
                out
            };
            for (what, bf16) in [("f32", false), ("bf16", true)] {
                let run = |threads| run(threads, bf16);
                let one = run(1);
                assert!(one.iter().all(|v| v.is_finite()));
                for threads in [2, 3, 8] {
                    let other = run(threads);
                    let same = one
                        .iter()
                        .zip(&other)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{what} {d:?} {cin}→{cout} k{}: 1 vs {threads} threads",
                        g.k
                    );
                }
            }
        }
    }
}
