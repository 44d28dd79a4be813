//! diffusers' `Transformer2DModel` (continuous input) with its `BasicTransformerBlock`s: the
//! attention of `UNet2DConditionModel`'s cross-attention blocks.
//!
//! Everything stays in the UNet's channel-major layout: the tokens of a `[c][b][h][w]`
//! activation are its `b·h·w` columns, so a linear layer is a 1×1 convolution (which is why
//! `use_linear_projection` changes only the weights' shapes), LayerNorm normalises columns,
//! and the context (`encoder_hidden_states`) is a `[cross_dim][b][tokens]` activation whose
//! keys and values each block projects for itself. Per block: LayerNorm, self-attention
//! (queries, keys and values one stacked product), the output projection with the residual
//! in its epilogue; LayerNorm, cross-attention onto the context, the same; LayerNorm, the GEGLU
//! feed-forward, its second layer onto the residual. The transformer's own residual is folded
//! into `proj_out`.

use super::arch::TransformerSpec;
use super::backend::{Act, Backend, Epilogue, Tokens};
use super::resnet::Norm;
use super::weights::{Loader, Weight};
use crate::cpu::layer_norm::LayerNormParams;
use crate::error::Result;
use crate::unet::layout::Geometry;
use crate::value_err;

/// Transformer2DModel's GroupNorm epsilon (fixed in diffusers, not the config's `norm_eps`).
const GROUP_NORM_EPS: f64 = 1e-6;
/// BasicTransformerBlock's LayerNorm epsilon.
const LAYER_NORM_EPS: f32 = 1e-5;

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl LayerNorm {
    fn load(ld: &Loader<'_>, prefix: &str, c: usize) -> Result<Self> {
        Ok(Self {
            gamma: ld.get(&format!("{prefix}.weight"), &[c])?,
            beta: ld.get(&format!("{prefix}.bias"), &[c])?,
        })
    }

    fn forward<B: Backend>(&self, be: &mut B, x: &Act<B::Buf>) -> Result<Act<B::Buf>> {
        let mut out = be.act(x.c, x.dims)?;
        let p = LayerNormParams {
            gamma: &self.gamma,
            beta: &self.beta,
            eps: LAYER_NORM_EPS,
        };
        be.layer_norm(&x.buf, x.dims.n(), p, &mut out.buf)?;
        Ok(out)
    }
}

/// A 1×1 product `out = bias + W × x (+ residual)`: a linear layer on the tokens.
fn project<B: Backend>(
    be: &mut B,
    x: &Act<B::Buf>,
    w: &Weight,
    bias: Option<&[f32]>,
    cout: usize,
    residual: Option<&Act<B::Buf>>,
) -> Result<Act<B::Buf>> {
    let mut out = be.act(cout, x.dims)?;
    let resid = residual.map(|r| [r.seg()]);
    let e = Epilogue {
        bias,
        bias2: None,
        temb: None,
        residual: resid.as_ref().map(|r| &r[..]),
        keep: false,
        scale: 1.0,
    };
    be.conv2d(
        &[x.seg()],
        x.dims,
        w,
        cout,
        Geometry::POINT,
        e,
        &mut out.buf,
    )?;
    Ok(out)
}

/// One `Attention` of a transformer block (no q/k/v biases, as diffusers builds them).
struct AttnLayer {
    heads: usize,
    dh: usize,
    /// Self-attention: `[3·inner][inner]` (to_q, to_k, to_v stacked); cross-attention:
    /// to_q alone, `[inner][inner]`.
    wq: Weight,
    /// Cross-attention: to_k and to_v stacked, `[2·inner][cross_dim]`.
    wkv: Option<Weight>,
    wo: Weight,
    bo: Vec<f32>,
}

impl AttnLayer {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        f(&mut self.wq);
        if let Some(w) = &mut self.wkv {
            f(w);
        }
        f(&mut self.wo);
    }

    fn load(
        ld: &Loader<'_>,
        prefix: &str,
        heads: usize,
        dh: usize,
        cross_dim: Option<usize>,
    ) -> Result<Self> {
        let inner = heads * dh;
        let p = |s: &str| format!("{prefix}.{s}");
        let kin = cross_dim.unwrap_or(inner);
        let q = ld.weight(&p("to_q.weight"), &[inner, inner])?;
        let k = ld.weight(&p("to_k.weight"), &[inner, kin])?;
        let v = ld.weight(&p("to_v.weight"), &[inner, kin])?;
        let (wq, wkv) = match cross_dim {
            Some(_) => (q, Some(Weight::concat(vec![k, v]))),
            None => (Weight::concat(vec![q, k, v]), None),
        };
        Ok(Self {
            heads,
            dh,
            wq,
            wkv,
            wo: ld.weight(&p("to_out.0.weight"), &[inner, inner])?,
            bo: ld.get(&p("to_out.0.bias"), &[inner])?,
        })
    }

    /// `residual + to_out(attention(x, context or x))`.
    fn forward<B: Backend>(
        &self,
        be: &mut B,
        x: &Act<B::Buf>,
        context: Option<&Act<B::Buf>>,
        residual: &Act<B::Buf>,
    ) -> Result<Act<B::Buf>> {
        let inner = self.heads * self.dh;
        let dims = x.dims;
        let mut o = be.act(inner, dims)?;
        let t = dims.hw();
        match (&self.wkv, context) {
            (None, _) => {
                let qkv = project(be, x, &self.wq, None, 3 * inner, None)?;
                let tok = |row| Tokens {
                    buf: &qkv.buf,
                    row,
                    t,
                };
                let (q, k, v) = (tok(0), tok(inner), tok(2 * inner));
                be.attention(q, k, v, dims.b, self.heads, self.dh, &mut o.buf)?;
                be.give(qkv.buf);
            }
            (Some(wkv), Some(ctx)) => {
                let q = project(be, x, &self.wq, None, inner, None)?;
                let kv = project(be, ctx, wkv, None, 2 * inner, None)?;
                let tk = ctx.dims.hw();
                let qt = Tokens {
                    buf: &q.buf,
                    row: 0,
                    t,
                };
                let kt = Tokens {
                    buf: &kv.buf,
                    row: 0,
                    t: tk,
                };
                let vt = Tokens {
                    buf: &kv.buf,
                    row: inner,
                    t: tk,
                };
                be.attention(qt, kt, vt, dims.b, self.heads, self.dh, &mut o.buf)?;
                be.give(q.buf);
                be.give(kv.buf);
            }
            (Some(_), None) => return value_err!("encoder_hidden_states: missing"),
        }
        let out = project(be, &o, &self.wo, Some(&self.bo), inner, Some(residual))?;
        be.give(o.buf);
        Ok(out)
    }
}

/// `BasicTransformerBlock` (GEGLU feed-forward, LayerNorms with affine parameters).
struct Block {
    norm1: LayerNorm,
    attn1: AttnLayer,
    /// `only_cross_attention`: attn1 attends to the context as well.
    only_cross: bool,
    norm2: LayerNorm,
    attn2: AttnLayer,
    norm3: LayerNorm,
    /// `[2·ff][inner]`: the GEGLU projection (values, then gates).
    w_ff1: Weight,
    b_ff1: Vec<f32>,
    w_ff2: Weight,
    b_ff2: Vec<f32>,
    ff: usize,
}

impl Block {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        self.attn1.for_each_matrix(f);
        self.attn2.for_each_matrix(f);
        f(&mut self.w_ff1);
        f(&mut self.w_ff2);
    }

    fn load(ld: &Loader<'_>, prefix: &str, s: &TransformerSpec) -> Result<Self> {
        let inner = s.heads * s.dh;
        let ff = 4 * inner;
        let p = |x: &str| format!("{prefix}.{x}");
        let attn1_ctx = if s.only_cross {
            Some(s.cross_dim)
        } else {
            None
        };
        Ok(Self {
            norm1: LayerNorm::load(ld, &p("norm1"), inner)?,
            attn1: AttnLayer::load(ld, &p("attn1"), s.heads, s.dh, attn1_ctx)?,
            only_cross: s.only_cross,
            norm2: LayerNorm::load(ld, &p("norm2"), inner)?,
            attn2: AttnLayer::load(ld, &p("attn2"), s.heads, s.dh, Some(s.cross_dim))?,
            norm3: LayerNorm::load(ld, &p("norm3"), inner)?,
            w_ff1: ld.weight(&p("ff.net.0.proj.weight"), &[2 * ff, inner])?,
            b_ff1: ld.get(&p("ff.net.0.proj.bias"), &[2 * ff])?,
            w_ff2: ld.weight(&p("ff.net.2.weight"), &[inner, ff])?,
            b_ff2: ld.get(&p("ff.net.2.bias"), &[inner])?,
            ff,
        })
    }

    /// Consumes `x`.
    fn forward<B: Backend>(
        &self,
        be: &mut B,
        x: Act<B::Buf>,
        ctx: &Act<B::Buf>,
    ) -> Result<Act<B::Buf>> {
        let n = self.norm1.forward(be, &x)?;
        let c1 = if self.only_cross { Some(ctx) } else { None };
        let h1 = self.attn1.forward(be, &n, c1, &x)?;
        be.give(n.buf);
        be.give(x.buf);
        let n = self.norm2.forward(be, &h1)?;
        let h2 = self.attn2.forward(be, &n, Some(ctx), &h1)?;
        be.give(n.buf);
        be.give(h1.buf);
        let n = self.norm3.forward(be, &h2)?;
        let p = project(be, &n, &self.w_ff1, Some(&self.b_ff1), 2 * self.ff, None)?;
        be.give(n.buf);
        let mut g = be.act(self.ff, h2.dims)?;
        be.geglu(&p.buf, self.ff, h2.dims.n(), &mut g.buf)?;
        be.give(p.buf);
        let out = project(be, &g, &self.w_ff2, Some(&self.b_ff2), h2.c, Some(&h2))?;
        be.give(g.buf);
        be.give(h2.buf);
        Ok(out)
    }
}

/// `Transformer2DModel`: GroupNorm, `proj_in`, the blocks, `proj_out` onto the input.
pub struct Transformer2D {
    c: usize,
    inner: usize,
    norm: Norm,
    w_in: Weight,
    b_in: Vec<f32>,
    blocks: Vec<Block>,
    w_out: Weight,
    b_out: Vec<f32>,
}

impl Transformer2D {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        f(&mut self.w_in);
        for b in &mut self.blocks {
            b.for_each_matrix(f);
        }
        f(&mut self.w_out);
    }

    /// The transformer at `prefix` on `c` channels with `layers` blocks.
    pub fn load(
        ld: &Loader<'_>,
        prefix: &str,
        c: usize,
        groups: usize,
        s: &TransformerSpec,
        layers: usize,
    ) -> Result<Self> {
        let inner = s.heads * s.dh;
        let p = |x: &str| format!("{prefix}.{x}");
        let blocks = (0..layers)
            .map(|l| Block::load(ld, &p(&format!("transformer_blocks.{l}")), s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            c,
            inner,
            norm: Norm::load(ld, &p("norm"), c, groups, GROUP_NORM_EPS)?,
            w_in: ld.weight(&p("proj_in.weight"), &[inner, c, 1, 1])?,
            b_in: ld.get(&p("proj_in.bias"), &[inner])?,
            blocks,
            w_out: ld.weight(&p("proj_out.weight"), &[c, inner, 1, 1])?,
            b_out: ld.get(&p("proj_out.bias"), &[c])?,
        })
    }

    /// `x + transformer(x)`; `ctx` is the context, `[cross_dim][b][tokens]`.
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        x: &Act<B::Buf>,
        ctx: Option<&Act<B::Buf>>,
    ) -> Result<Act<B::Buf>> {
        let Some(ctx) = ctx else {
            return value_err!("encoder_hidden_states: this UNet's cross-attention needs it");
        };
        let mut h = be.act(self.c, x.dims)?;
        be.group_norm(
            &[x.seg()],
            x.dims,
            self.norm.params(),
            None,
            false,
            &mut h.buf,
        )?;
        let mut t = project(be, &h, &self.w_in, Some(&self.b_in), self.inner, None)?;
        be.give(h.buf);
        for blk in &self.blocks {
            t = blk.forward(be, t, ctx)?;
        }
        let out = project(be, &t, &self.w_out, Some(&self.b_out), self.c, Some(x))?;
        be.give(t.buf);
        Ok(out)
    }
}
