//! diffusers' spatial `Attention` block (`_from_deprecated_attn_block`): optional GroupNorm,
//! Q/K/V projections (one stacked 1×1 product), multi-head softmax attention, the output
//! projection with the residual and the rescale factor folded into its epilogue.

use super::resnet::{Act, Norm};
use super::weights::Loader;
use crate::cpu::arena::Arena;
use crate::cpu::attention::self_attention;
use crate::cpu::conv::{conv2d, Geometry, Init, Input};
use crate::cpu::norm::group_norm;
use crate::error::Result;

pub struct Attention {
    c: usize,
    heads: usize,
    inner: usize,
    norm: Option<Norm>,
    /// `[3·inner][c]`: to_q, to_k, to_v stacked.
    wqkv: Vec<f32>,
    bqkv: Vec<f32>,
    wo: Vec<f32>,
    bo: Vec<f32>,
    inv_rescale: f32,
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ld: &Loader<'_>,
        prefix: &str,
        c: usize,
        heads: usize,
        dh: usize,
        groups: Option<usize>,
        eps: f64,
        rescale: f64,
    ) -> Result<Self> {
        let inner = heads * dh;
        let p = |s: &str| format!("{prefix}.{s}");
        // Grown from the weights read (not reserved from the config's sizes up front).
        let (mut wqkv, mut bqkv) = (Vec::new(), Vec::new());
        for (new, old) in [("to_q", "query"), ("to_k", "key"), ("to_v", "value")] {
            let w = ld.get_any(
                &[&p(&format!("{new}.weight")), &p(&format!("{old}.weight"))],
                &[inner, c],
            )?;
            let b = ld.get_any(
                &[&p(&format!("{new}.bias")), &p(&format!("{old}.bias"))],
                &[inner],
            )?;
            wqkv.extend_from_slice(&w);
            bqkv.extend_from_slice(&b);
        }
        Ok(Self {
            c,
            heads,
            inner,
            norm: match groups {
                Some(g) => Some(Norm::load(ld, &p("group_norm"), c, g, eps)?),
                None => None,
            },
            wqkv,
            bqkv,
            wo: ld.get_any(
                &[&p("to_out.0.weight"), &p("proj_attn.weight")],
                &[c, inner],
            )?,
            bo: ld.get_any(&[&p("to_out.0.bias"), &p("proj_attn.bias")], &[c])?,
            inv_rescale: (1.0 / rescale) as f32,
        })
    }

    pub fn forward(&self, arena: &mut Arena, x: &Act) -> Act {
        let dims = x.dims;
        let n = dims.n();
        let normed = self.norm.as_ref().map(|norm| {
            let mut h = Act::new(arena, self.c, dims);
            group_norm(
                Input {
                    segs: &[x.seg()],
                    dims,
                },
                norm.params(),
                None,
                false,
                &mut h.buf,
            );
            h
        });
        let src = normed.as_ref().unwrap_or(x);
        let mut qkv = arena.take(3 * self.inner * n);
        conv2d(
            Input {
                segs: &[src.seg()],
                dims,
            },
            &self.wqkv,
            3 * self.inner,
            Geometry::POINT,
            Init::bias(&self.bqkv),
            &mut qkv,
        );
        if let Some(h) = normed {
            arena.give(h.buf);
        }
        let mut o = arena.take(self.inner * n);
        self_attention(&qkv, self.inner, self.heads, dims, &mut o);
        arena.give(qkv);
        let mut out = Act::new(arena, self.c, dims);
        let init = Init {
            residual: Some(&x.buf),
            scale: self.inv_rescale,
            ..Init::bias(&self.bo)
        };
        conv2d(
            Input {
                segs: &[(&o, self.inner)],
                dims,
            },
            &self.wo,
            self.c,
            Geometry::POINT,
            init,
            &mut out.buf,
        );
        arena.give(o);
        out
    }
}
