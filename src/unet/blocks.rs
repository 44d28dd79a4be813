//! The UNet's blocks: DownBlock2D / AttnDownBlock2D / ResnetDownsampleBlock2D /
//! CrossAttnDownBlock2D, UNetMidBlock2D / UNetMidBlock2DCrossAttn, UpBlock2D / AttnUpBlock2D /
//! ResnetUpsampleBlock2D / CrossAttnUpBlock2D, with diffusers' weight names
//! (`down_blocks.{i}.resnets.{j}`, `.attentions.{j}`, `.downsamplers.0.conv`, ...). A block
//! is resnets, each followed by its attention when it has one (spatial or a transformer).
//!
//! The skip connections live on a stack of activations: the down path pushes every output
//! state (the first being conv_in's output), the up path pops one per resnet and feeds
//! `[h, skip]` to it as two channel segments, so the concatenation is never copied.

use super::arch::{Arch, AttnSpec, BlockSpec, Resample};
use super::attention::Attention;
use super::backend::{Act, Backend, Cond, Epilogue};
use super::resnet::{Conv, Resnet, Sampling};
use super::transformer::Transformer2D;
use super::weights::{Loader, Weight};
use crate::error::Result;
use crate::tensor::Tensor;
use crate::unet::layout::{Dims, Geometry};

enum Sampler {
    None,
    Conv(Conv, Geometry),
    Resnet(Box<Resnet>),
}

impl Sampler {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        match self {
            Self::None => {}
            Self::Conv(c, _) => c.for_each_matrix(f),
            Self::Resnet(r) => r.for_each_matrix(f),
        }
    }

    fn forward<B: Backend>(
        &self,
        be: &mut B,
        x: &Act<B::Buf>,
        temb_act: &B::Buf,
    ) -> Result<Option<Act<B::Buf>>> {
        match self {
            Sampler::None => Ok(None),
            Sampler::Conv(conv, g) => {
                let mut out = be.act(conv.cout, g.out_dims(x.dims))?;
                be.conv2d(
                    &[x.seg()],
                    x.dims,
                    &conv.w,
                    conv.cout,
                    *g,
                    Epilogue::bias(&conv.b),
                    &mut out.buf,
                )?;
                Ok(Some(out))
            }
            Sampler::Resnet(r) => Ok(Some(r.forward(be, &[x.seg()], x.dims, temb_act)?)),
        }
    }
}

/// The attention after a resnet.
enum BlockAttn {
    Spatial(Attention),
    Transformer(Transformer2D),
}

impl BlockAttn {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        match self {
            Self::Spatial(a) => a.for_each_matrix(f),
            Self::Transformer(t) => t.for_each_matrix(f),
        }
    }

    /// The attention of spec `s` at `prefix` on `c` channels, after resnet `j`.
    fn load(
        ld: &Loader<'_>,
        prefix: &str,
        a: &Arch,
        s: &AttnSpec,
        c: usize,
        j: usize,
        rescale: f64,
    ) -> Result<Self> {
        Ok(match s {
            AttnSpec::Spatial { heads, dh, groups } => BlockAttn::Spatial(Attention::load(
                ld, prefix, c, *heads, *dh, *groups, a.norm_eps, rescale,
            )?),
            AttnSpec::Transformer(t) => BlockAttn::Transformer(Transformer2D::load(
                ld,
                prefix,
                c,
                a.groups,
                t,
                t.layers[j],
            )?),
        })
    }

    /// Consumes `h`.
    fn forward<B: Backend>(
        &self,
        be: &mut B,
        h: Act<B::Buf>,
        cond: &Cond<'_, B::Buf>,
    ) -> Result<Act<B::Buf>> {
        let out = match self {
            BlockAttn::Spatial(at) => at.forward(be, &h)?,
            BlockAttn::Transformer(t) => t.forward(be, &h, cond.context)?,
        };
        be.give(h.buf);
        Ok(out)
    }
}

/// A down or up block's matrices: its resnets', its attentions', its resampler's.
fn block_matrices(
    resnets: &mut [Resnet],
    attns: &mut [BlockAttn],
    sampler: &mut Sampler,
    f: &mut dyn FnMut(&mut Weight),
) {
    for r in resnets {
        r.for_each_matrix(f);
    }
    for a in attns {
        a.for_each_matrix(f);
    }
    sampler.for_each_matrix(f);
}

pub struct DownBlock {
    resnets: Vec<Resnet>,
    attns: Vec<BlockAttn>,
    sampler: Sampler,
}

impl DownBlock {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        block_matrices(&mut self.resnets, &mut self.attns, &mut self.sampler, f);
    }

    pub fn load(
        ld: &Loader<'_>,
        a: &Arch,
        i: usize,
        spec: &BlockSpec,
        cin: usize,
        cout: usize,
    ) -> Result<Self> {
        let pre = format!("down_blocks.{i}");
        let mut resnets = Vec::new();
        let mut attns = Vec::new();
        for j in 0..spec.layers {
            let c = if j == 0 { cin } else { cout };
            resnets.push(Resnet::load(
                ld,
                &format!("{pre}.resnets.{j}"),
                a,
                c,
                cout,
                1.0,
                Sampling::None,
            )?);
            if let Some(s) = &spec.attention {
                let p = format!("{pre}.attentions.{j}");
                attns.push(BlockAttn::load(ld, &p, a, s, cout, j, 1.0)?);
            }
        }
        let sampler = match spec.resample {
            Resample::None => Sampler::None,
            Resample::Conv => {
                let p = a.downsample_padding;
                let q = if p == 0 { 1 } else { p };
                let g = Geometry {
                    k: 3,
                    stride: 2,
                    pad: [p, p, q, q],
                    upsample: false,
                };
                Sampler::Conv(
                    Conv::load(ld, &format!("{pre}.downsamplers.0.conv"), cout, cout, 3)?,
                    g,
                )
            }
            Resample::Resnet => Sampler::Resnet(Box::new(Resnet::load(
                ld,
                &format!("{pre}.downsamplers.0"),
                a,
                cout,
                cout,
                1.0,
                Sampling::Down,
            )?)),
        };
        Ok(Self {
            resnets,
            attns,
            sampler,
        })
    }

    /// Reads the top of `stack`, pushes this block's output states; adds `adapter` (a
    /// T2I-Adapter's residual, of [`DownBlock::adapter_slot`]'s shape) where diffusers does.
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        stack: &mut Vec<Act<B::Buf>>,
        cond: &Cond<'_, B::Buf>,
        adapter: Option<&Tensor>,
    ) -> Result<()> {
        let last = self.resnets.len() - 1;
        for (j, r) in self.resnets.iter().enumerate() {
            let x = stack.last().expect("input on the stack");
            let mut h = r.forward(be, &[x.seg()], x.dims, cond.temb)?;
            if let Some(at) = self.attns.get(j) {
                h = at.forward(be, h, cond)?;
                if let Some(a) = adapter.filter(|_| j == last) {
                    be.add_nchw(a, &mut h)?;
                }
            }
            stack.push(h);
        }
        let x = stack.last().expect("block output");
        if let Some(d) = self.sampler.forward(be, x, cond.temb)? {
            stack.push(d);
        }
        if let Some(a) = adapter.filter(|_| self.attns.is_empty()) {
            // diffusers adds it in place to the block's output, which is also its last skip.
            be.add_nchw(a, stack.last_mut().expect("block output"))?;
        }
        Ok(())
    }

    /// Where a T2I-Adapter's residual goes, from an input of `d`: a cross-attention block's
    /// last attention output, another block's output.
    pub fn adapter_slot(&self, d: Dims) -> (usize, Dims) {
        let pushes = self.pushes(d);
        if self.attns.is_empty() {
            *pushes.last().expect("a block has a resnet")
        } else {
            pushes[self.resnets.len() - 1]
        }
    }

    pub fn downsamples(&self) -> bool {
        !matches!(self.sampler, Sampler::None)
    }

    /// What `forward` pushes from an input of `d`, as (channels, dims): a downsampler halves
    /// the sides (the model's `check` makes them even).
    pub fn pushes(&self, d: Dims) -> Vec<(usize, Dims)> {
        let mut out: Vec<_> = self.resnets.iter().map(|r| (r.cout(), d)).collect();
        if self.downsamples() {
            let c = out.last().map_or(0, |p| p.0);
            out.push((
                c,
                Dims {
                    h: d.h / 2,
                    w: d.w / 2,
                    ..d
                },
            ));
        }
        out
    }
}

pub struct MidBlock {
    resnets: Vec<Resnet>,
    attn: Option<BlockAttn>,
}

impl MidBlock {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        for r in &mut self.resnets {
            r.for_each_matrix(f);
        }
        if let Some(a) = &mut self.attn {
            a.for_each_matrix(f);
        }
    }

    pub fn load(ld: &Loader<'_>, a: &Arch, attention: Option<&AttnSpec>) -> Result<Self> {
        let c = *a.block_out_channels.last().unwrap();
        let s = a.mid_block_scale_factor;
        let r = |j: usize| {
            Resnet::load(
                ld,
                &format!("mid_block.resnets.{j}"),
                a,
                c,
                c,
                s,
                Sampling::None,
            )
        };
        Ok(Self {
            resnets: vec![r(0)?, r(1)?],
            attn: match attention {
                Some(spec) => Some(BlockAttn::load(
                    ld,
                    "mid_block.attentions.0",
                    a,
                    spec,
                    c,
                    0,
                    s,
                )?),
                None => None,
            },
        })
    }

    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        x: &Act<B::Buf>,
        cond: &Cond<'_, B::Buf>,
    ) -> Result<Act<B::Buf>> {
        let mut h = self.resnets[0].forward(be, &[x.seg()], x.dims, cond.temb)?;
        if let Some(at) = &self.attn {
            h = at.forward(be, h, cond)?;
        }
        let out = self.resnets[1].forward(be, &[h.seg()], h.dims, cond.temb)?;
        be.give(h.buf);
        Ok(out)
    }
}

pub struct UpBlock {
    resnets: Vec<Resnet>,
    attns: Vec<BlockAttn>,
    sampler: Sampler,
}

impl UpBlock {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        block_matrices(&mut self.resnets, &mut self.attns, &mut self.sampler, f);
    }

    /// Up block `i` of `levels`; `chans` is block_out_channels.
    pub fn load(ld: &Loader<'_>, a: &Arch, i: usize, spec: &BlockSpec) -> Result<Self> {
        let ch = &a.block_out_channels;
        let levels = ch.len();
        let rev = |k: usize| ch[levels - 1 - k];
        let prev = rev(i.saturating_sub(1)); // up block 0 follows the mid block
        let cout = rev(i);
        let cin = rev((i + 1).min(levels - 1));
        let layers = spec.layers;
        let pre = format!("up_blocks.{i}");
        let mut resnets = Vec::new();
        let mut attns = Vec::new();
        for j in 0..layers {
            let skip = if j == layers - 1 { cin } else { cout };
            let rin = if j == 0 { prev } else { cout };
            resnets.push(Resnet::load(
                ld,
                &format!("{pre}.resnets.{j}"),
                a,
                rin + skip,
                cout,
                1.0,
                Sampling::None,
            )?);
            if let Some(s) = &spec.attention {
                let p = format!("{pre}.attentions.{j}");
                attns.push(BlockAttn::load(ld, &p, a, s, cout, j, 1.0)?);
            }
        }
        let sampler = match spec.resample {
            Resample::None => Sampler::None,
            Resample::Conv => Sampler::Conv(
                Conv::load(ld, &format!("{pre}.upsamplers.0.conv"), cout, cout, 3)?,
                Geometry {
                    upsample: true,
                    ..Geometry::SAME3
                },
            ),
            Resample::Resnet => Sampler::Resnet(Box::new(Resnet::load(
                ld,
                &format!("{pre}.upsamplers.0"),
                a,
                cout,
                cout,
                1.0,
                Sampling::Up,
            )?)),
        };
        Ok(Self {
            resnets,
            attns,
            sampler,
        })
    }

    /// Consumes `h`, pops one skip per resnet.
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        mut h: Act<B::Buf>,
        stack: &mut Vec<Act<B::Buf>>,
        cond: &Cond<'_, B::Buf>,
    ) -> Result<Act<B::Buf>> {
        for (j, r) in self.resnets.iter().enumerate() {
            let skip = stack.pop().expect("skip connection on the stack");
            let mut out = r.forward(be, &[h.seg(), skip.seg()], h.dims, cond.temb)?;
            be.give(h.buf);
            be.give(skip.buf);
            if let Some(at) = self.attns.get(j) {
                out = at.forward(be, out, cond)?;
            }
            h = out;
        }
        Ok(match self.sampler.forward(be, &h, cond.temb)? {
            Some(u) => {
                be.give(h.buf);
                u
            }
            None => h,
        })
    }
}
