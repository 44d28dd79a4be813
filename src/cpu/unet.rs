//! The UNet on the CPU: the backend the graph (`unet::model`) runs over — the `cpu::*` ops on
//! buffers of an [`Arena`] — and the forward pass on the caller's NCHW buffers. It mirrors
//! `cuda::unet` (the device backend and its forward pass).

use super::arena::{Arena, Buf};
use super::conv::{self, Input};
use super::norm::{self, GroupNormParams};
use super::resample;
use super::vecmath::silu_f32;
use crate::dtype::Elem;
use crate::error::Result;
use crate::unet::backend::{Backend, Epilogue, Segs};
use crate::unet::embeddings::{ClassLabels, TimeEmbedding};
use crate::unet::layout::{Dims, Geometry};
use crate::unet::model::UNet2D;

/// The forward pass of `unet` on the CPU, activations from `arena`: `x` is NCHW
/// `[b][in_channels][h][w]`, `out` NCHW `[b][out_channels][h][w]`, both of element type T
/// (computed in f32).
pub fn forward<T: Elem>(
    unet: &UNet2D,
    arena: &mut Arena,
    x: &[T],
    (b, h, w): (usize, usize, usize),
    timesteps: &[f32],
    class: ClassLabels<'_>,
    out: &mut [T],
) -> Result<()> {
    let cin = unet.in_channels();
    unet.check(b, cin, h, w, timesteps.len())?;
    let ts = unet.per_sample(timesteps, b);
    let mut be = CpuBackend { arena };
    let dims = Dims { b, h, w };
    let hw = dims.hw();

    // NCHW (any dtype) → [c][b][h][w] f32, centred if the config says so.
    let mut xin = be.act(cin, dims)?;
    let center = unet.arch.cfg.center_input_sample;
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
    let mut y = unet.run(&mut be, xin, &ts, class)?;

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

/// The CPU: the `cpu::*` ops on buffers of an [`Arena`].
pub struct CpuBackend<'a> {
    pub arena: &'a mut Arena,
}

fn slices<'a>(x: Segs<'a, Buf>) -> Vec<(&'a [f32], usize)> {
    x.iter().map(|&(b, c)| (&b[..], c)).collect()
}

impl Backend for CpuBackend<'_> {
    type Buf = Buf;

    fn take(&mut self, len: usize) -> Result<Buf> {
        Ok(self.arena.take(len))
    }

    fn give(&mut self, b: Buf) {
        self.arena.give(b)
    }

    fn conv2d(
        &mut self,
        x: Segs<'_, Buf>,
        dims: Dims,
        w: &[f32],
        cout: usize,
        g: Geometry,
        e: Epilogue<'_, Buf>,
        out: &mut Buf,
    ) -> Result<()> {
        // A residual made of several segments is joined first (one contiguous source).
        let joined = match e.residual {
            Some(r) if r.len() > 1 => {
                let mut j = self.arena.take(out.len());
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
        conv::conv2d(Input { segs: &segs, dims }, w, cout, g, init, out);
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
        w: &[f32],
        bias: &[f32],
        out: &mut Buf,
    ) -> Result<()> {
        conv::linear(x, rows, w, Some(bias), out);
        Ok(())
    }

    fn attention(
        &mut self,
        qkv: &Buf,
        inner: usize,
        heads: usize,
        dims: Dims,
        out: &mut Buf,
    ) -> Result<()> {
        crate::cpu::attention::self_attention(qkv, inner, heads, dims, out);
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

    fn time_embedding(
        &mut self,
        te: &TimeEmbedding,
        ts: &[f32],
        class: ClassLabels<'_>,
    ) -> Result<Buf> {
        let emb = te.forward(ts, class)?;
        let mut out = self.arena.take(emb.len());
        for (o, &v) in out.iter_mut().zip(&emb) {
            *o = silu_f32(v);
        }
        Ok(out)
    }
}
