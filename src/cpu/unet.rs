//! The UNet on the CPU: the backend the graph (`unet::model`) runs over — the `cpu::*` ops on
//! buffers of an [`Arena`] — and the forward pass on the caller's NCHW buffers. It mirrors
//! `cuda::unet` (the device backend and its forward pass).

use super::arena::{Arena, Buf};
use super::attention::{self, Tokens as CpuTokens};
use super::conv::{self, Input, Lhs};
use super::direct_conv;
use super::implicit_conv;
use super::layer_norm::{self, LayerNormParams};
use super::norm::{self, GroupNormParams};
use super::resample;
use super::vecmath::silu_f32;
use super::winograd;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::unet::backend::{Act, Backend, Epilogue, Segs, Tokens};
use crate::unet::control::Controls;
use crate::unet::embeddings::{Conditioning, TimeEmbedding, Timesteps};
use crate::unet::layout::{Dims, Geometry};
use crate::unet::model::UNet2D;
use crate::unet::weights::ComputeDtype;
use crate::unet::weights::Weight;
use crate::with_elem;
use rayon::prelude::*;

/// The forward pass of `unet` on the CPU, activations from `arena`: `x` is NCHW
/// `[b][in_channels][h][w]`, `out` NCHW `[b][out_channels][h][w]`, both of element type T
/// (computed in f32); `context` a host tensor `[b][tokens][cross_dim]` of any float dtype,
/// shape checked by the caller; `controls` a control model's residuals, host tensors,
/// checked by the caller.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Elem>(
    unet: &UNet2D,
    arena: &mut Arena,
    x: &[T],
    (b, h, w): (usize, usize, usize),
    timesteps: &[f32],
    cond: &Conditioning<'_>,
    context: Option<&Tensor>,
    controls: Option<&Controls>,
    out: &mut [T],
) -> Result<()> {
    let cin = unet.in_channels();
    unet.check(b, cin, h, w, timesteps.len())?;
    let ts = unet.per_sample(timesteps, b);
    let bf16 = unet.compute == ComputeDtype::Bf16;
    let mut be = CpuBackend { arena, bf16 };
    let dims = Dims { b, h, w };
    let hw = dims.hw();

    // NCHW (any dtype) → [c][b][h][w] f32, centred if the config says so.
    let mut xin = be.act(cin, dims)?;
    let center = unet.arch.center_input_sample;
    for bi in 0..b {
        for ci in 0..cin {
            let dst = &mut xin.buf[(ci * b + bi) * hw..][..hw];
            T::load(&x[(bi * cin + ci) * hw..][..hw], dst);
            if center {
                for v in dst.iter_mut() {
                    *v = 2.0 * *v - 1.0;
                }
            }
        }
    }
    let ctx = match context {
        Some(c) => Some(tokens_in(&mut be, c)?),
        None => None,
    };
    let mut y = unet.run(&mut be, xin, Timesteps::Host(&ts), cond, ctx, controls)?;

    // [c][b][h][w] → NCHW, divided by the timestep for Fourier-embedded models.
    let co = unet.out_channels();
    let fourier = unet.divides_by_timestep();
    for bi in 0..b {
        for ci in 0..co {
            let src = &mut y.buf[(ci * b + bi) * hw..][..hw];
            if fourier {
                let t = ts[bi];
                for v in src.iter_mut() {
                    *v /= t;
                }
            }
            T::store(src, &mut out[(bi * co + ci) * hw..][..hw]);
        }
    }
    be.give(y.buf);
    Ok(())
}

/// The context `[b][t][c]` (any float dtype, on the host) as a `[c][b][t]` f32 activation.
fn tokens_in(be: &mut CpuBackend<'_>, c: &Tensor) -> Result<Act<Buf>> {
    let [b, t, width] = c.shape[..] else {
        unreachable!("context shape checked by the caller")
    };
    let dims = Dims { b, h: 1, w: t };
    let mut act = be.act(width, dims)?;
    let n = dims.n();
    with_elem!(c.dtype, U, {
        // SAFETY: a host tensor of this dtype and shape (checked by the caller), alive and
        // unwritten for the call.
        let src = unsafe { c.slice::<U>() };
        let mut row = vec![0.0f32; width];
        for (j, tok) in src.chunks_exact(width).enumerate() {
            U::load(tok, &mut row);
            for (ch, &v) in row.iter().enumerate() {
                act.buf[ch * n + j] = v;
            }
        }
    });
    Ok(act)
}

/// The CPU: the `cpu::*` ops on buffers of an [`Arena`].
pub struct CpuBackend<'a> {
    pub arena: &'a mut Arena,
    /// Attention's products in bf16 (`compute_dtype="bfloat16"`; the convolutions know it
    /// from their tiled weights).
    pub bf16: bool,
}

/// `f(w)` on the weight as f32: itself, or a half-precision weight widened into an arena
/// buffer, in parallel, once per call of its layer (every task of the im2col and 1×1 products
/// reads all of its rows; the arena makes it no allocation after the first call).
fn with_f32<R>(arena: &mut Arena, w: &Weight, f: impl FnOnce(&[f32], &mut Arena) -> R) -> R {
    const CHUNK: usize = 1 << 16;
    if let Some(w) = w.as_f32() {
        return f(w, arena);
    }
    let mut wide = arena.take(w.len());
    wide.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, c)| w.widen(i * CHUNK, c));
    let r = f(&wide, arena);
    arena.give(wide);
    r
}

fn slices<'a>(x: Segs<'a, Buf>) -> Vec<(&'a [f32], usize)> {
    x.iter().map(|&(b, c)| (&b[..], c)).collect()
}

impl Backend for CpuBackend<'_> {
    type Buf = Buf;

    fn take(&mut self, len: usize) -> Result<Buf> {
        self.arena.try_take(len)
    }

    fn give(&mut self, b: Buf) {
        self.arena.give(b)
    }

    fn conv2d(
        &mut self,
        x: Segs<'_, Buf>,
        dims: Dims,
        w: &Weight,
        cout: usize,
        g: Geometry,
        e: Epilogue<'_, Buf>,
        out: &mut Buf,
    ) -> Result<()> {
        // A residual made of several segments is joined first (one contiguous source).
        let joined = match e.residual {
            Some(r) if r.len() > 1 => {
                let mut j = self.arena.try_take(out.len())?;
                let mut o = 0;
                for (s, _) in r {
                    j[o..o + s.len()].copy_from_slice(s);
                    o += s.len();
                }
                Some(j)
            }
            _ => None,
        };
        let residual: Option<&[f32]> = match (&joined, e.residual) {
            (Some(j), _) => Some(j),
            (None, Some(r)) => Some(&r[0].0[..]),
            (None, None) => None,
        };
        let init = conv::Init {
            bias: e.bias,
            bias2: e.bias2,
            temb: e.temb.map(|t| &t[..]),
            residual,
            keep: e.keep,
            scale: e.scale,
        };
        let segs = slices(x);
        let input = Input { segs: &segs, dims };
        match w.as_tiles() {
            // Tiles: the bf16 compute path (`compute_dtype`), the only one that makes them.
            // Winograd's transformed operands would lose too much to bf16 rounding; the bf16
            // products run on the input itself (3×3 layers of whole panels) or on im2col
            // columns.
            Some(w) if implicit_conv::applies(w, g, g.out_dims(dims)) => {
                implicit_conv::conv2d(input, w, cout, g, init, out, self.arena)
            }
            Some(w) => conv::conv2d(input, Lhs::Tiles(w), cout, g, init, out, self.arena),
            _ if winograd::applies(g, dims, input.channels(), cout) => {
                winograd::conv2d(input, w, cout, g, init, out, self.arena)
            }
            _ if direct_conv::applies(g, input.channels(), cout) => {
                with_f32(self.arena, w, |w, _| {
                    direct_conv::conv2d(input, w, cout, g, init, out)
                })
            }
            _ => with_f32(self.arena, w, |w, arena| {
                conv::conv2d(input, Lhs::F32(w), cout, g, init, out, arena)
            }),
        }
        if let Some(j) = joined {
            self.arena.give(j);
        }
        Ok(())
    }

    fn group_norm(
        &mut self,
        x: Segs<'_, Buf>,
        dims: Dims,
        p: GroupNormParams<'_>,
        scale_shift: Option<&Buf>,
        silu: bool,
        out: &mut Buf,
    ) -> Result<()> {
        let segs = slices(x);
        norm::group_norm(
            Input { segs: &segs, dims },
            p,
            scale_shift.map(|s| &s[..]),
            silu,
            out,
        );
        Ok(())
    }

    fn linear(
        &mut self,
        x: &Buf,
        rows: usize,
        w: &Weight,
        bias: &[f32],
        out: &mut Buf,
    ) -> Result<()> {
        conv::linear(x, rows, w, Some(bias), out);
        Ok(())
    }

    fn attention(
        &mut self,
        q: Tokens<'_, Buf>,
        k: Tokens<'_, Buf>,
        v: Tokens<'_, Buf>,
        b: usize,
        heads: usize,
        dh: usize,
        out: &mut Buf,
    ) -> Result<()> {
        fn cpu<'a>(t: Tokens<'a, Buf>) -> CpuTokens<'a> {
            CpuTokens {
                data: &t.buf[..],
                row: t.row,
                t: t.t,
            }
        }
        let arena = self.bf16.then_some(&mut *self.arena);
        attention::attention(cpu(q), cpu(k), cpu(v), b, heads, dh, out, arena);
        Ok(())
    }

    fn layer_norm(
        &mut self,
        x: &Buf,
        n: usize,
        p: LayerNormParams<'_>,
        out: &mut Buf,
    ) -> Result<()> {
        layer_norm::layer_norm(x, n, p, out);
        Ok(())
    }

    fn geglu(&mut self, x: &Buf, inner: usize, n: usize, out: &mut Buf) -> Result<()> {
        super::geglu::geglu(x, inner, n, out);
        Ok(())
    }

    fn upsample2x(&mut self, x: &Buf, c: usize, d: Dims, out: &mut Buf) -> Result<()> {
        resample::upsample_nearest2x(x, c, d, out);
        Ok(())
    }

    fn avg_pool2x(&mut self, x: &Buf, c: usize, d: Dims, out: &mut Buf) -> Result<()> {
        resample::avg_pool2x(x, c, d, out);
        Ok(())
    }

    fn copy(&mut self, src: &Buf, dst: &mut Buf) -> Result<()> {
        dst.copy_from_slice(src);
        Ok(())
    }

    fn add_nchw(&mut self, x: &Tensor, dst: &mut Act<Buf>) -> Result<()> {
        let (b, hw) = (dst.dims.b, dst.dims.hw());
        assert_eq!(
            x.numel,
            dst.c * b * hw,
            "residual shape checked by the caller"
        );
        with_elem!(x.dtype, U, {
            // SAFETY: a host tensor of this dtype and shape (checked by the caller), alive and
            // unwritten for the call.
            let src = unsafe { x.slice::<U>() };
            // One widened row per rayon task, not per channel.
            dst.buf.par_chunks_mut(b * hw).enumerate().for_each_init(
                || vec![0.0f32; hw],
                |row, (ci, planes)| {
                    for (bi, plane) in planes.chunks_exact_mut(hw).enumerate() {
                        U::load(&src[(bi * dst.c + ci) * hw..][..hw], row);
                        for (d, &v) in plane.iter_mut().zip(row.iter()) {
                            *d += v;
                        }
                    }
                },
            );
        });
        Ok(())
    }

    fn time_embedding(
        &mut self,
        te: &TimeEmbedding,
        ts: Timesteps<'_>,
        cond: &Conditioning<'_>,
    ) -> Result<Buf> {
        let emb = te.forward(ts.host()?, cond)?;
        let mut out = self.arena.take(emb.len());
        for (o, &v) in out.iter_mut().zip(&emb) {
            *o = silu_f32(v);
        }
        Ok(out)
    }
}
