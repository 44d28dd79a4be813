//! diffusers' spatial `Attention` block (`_from_deprecated_attn_block`): optional GroupNorm,
//! Q/K/V projections (one stacked 1×1 product), multi-head softmax attention, the output
//! projection with the residual and the rescale factor folded into its epilogue.

use super::backend::{Act, Backend, Epilogue, Tokens};
use super::resnet::Norm;
use super::weights::{Loader, Weight};
use crate::error::Result;
use crate::unet::layout::Geometry;

pub struct Attention {
    c: usize,
    heads: usize,
    dh: usize,
    inner: usize,
    norm: Option<Norm>,
    /// `[3·inner][c]`: to_q, to_k, to_v stacked.
    wqkv: Weight,
    bqkv: Vec<f32>,
    wo: Weight,
    bo: Vec<f32>,
    inv_rescale: f32,
}

impl Attention {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        f(&mut self.wqkv);
        f(&mut self.wo);
    }

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
            let w = ld.weight_any(
                &[&p(&format!("{new}.weight")), &p(&format!("{old}.weight"))],
                &[inner, c],
            )?;
            let b = ld.get_any(
                &[&p(&format!("{new}.bias")), &p(&format!("{old}.bias"))],
                &[inner],
            )?;
            wqkv.push(w);
            bqkv.extend_from_slice(&b);
        }
        Ok(Self {
            c,
            heads,
            dh,
            inner,
            norm: match groups {
                Some(g) => Some(Norm::load(ld, &p("group_norm"), c, g, eps)?),
                None => None,
            },
            wqkv: Weight::concat(wqkv),
            bqkv,
            wo: ld.weight_any(
                &[&p("to_out.0.weight"), &p("proj_attn.weight")],
                &[c, inner],
            )?,
            bo: ld.get_any(&[&p("to_out.0.bias"), &p("proj_attn.bias")], &[c])?,
            inv_rescale: (1.0 / rescale) as f32,
        })
    }

    pub fn forward<B: Backend>(&self, be: &mut B, x: &Act<B::Buf>) -> Result<Act<B::Buf>> {
        let dims = x.dims;
        let n = dims.n();
        let normed = match &self.norm {
            Some(norm) => {
                let mut h = be.act(self.c, dims)?;
                be.group_norm(&[x.seg()], dims, norm.params(), None, false, &mut h.buf)?;
                Some(h)
            }
            None => None,
        };
        let src = normed.as_ref().unwrap_or(x);
        let mut qkv = be.take(3 * self.inner * n)?;
        be.conv2d(
            &[src.seg()],
            dims,
            &self.wqkv,
            3 * self.inner,
            Geometry::POINT,
            Epilogue::bias(&self.bqkv),
            &mut qkv,
        )?;
        if let Some(h) = normed {
            be.give(h.buf);
        }
        let mut o = be.take(self.inner * n)?;
        let tok = |row| Tokens {
            buf: &qkv,
            row,
            t: dims.hw(),
        };
        let (q, k, v) = (tok(0), tok(self.inner), tok(2 * self.inner));
        be.attention(q, k, v, dims.b, self.heads, self.dh, &mut o)?;
        be.give(qkv);
        let mut out = be.act(self.c, dims)?;
        let resid = [x.seg()];
        let e = Epilogue {
            residual: Some(&resid[..]),
            scale: self.inv_rescale,
            ..Epilogue::bias(&self.bo)
        };
        be.conv2d(
            &[(&o, self.inner)],
            dims,
            &self.wo,
            self.c,
            Geometry::POINT,
            e,
            &mut out.buf,
        )?;
        be.give(o);
        Ok(out)
    }
}
