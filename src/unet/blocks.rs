//! The UNet's blocks: DownBlock2D / AttnDownBlock2D / ResnetDownsampleBlock2D,
//! UNetMidBlock2D, UpBlock2D / AttnUpBlock2D / ResnetUpsampleBlock2D, with diffusers' weight
//! names (`down_blocks.{i}.resnets.{j}`, `.attentions.{j}`, `.downsamplers.0.conv`, ...).
//!
//! The skip connections live on a stack of activations: the down path pushes every output
//! state (the first being conv_in's output), the up path pops one per resnet and feeds
//! `[h, skip]` to it as two channel segments, so the concatenation is never copied.

use super::attention::Attention;
use super::backend::{Act, Backend, Epilogue};
use super::config::{Arch, BlockSpec, Resample};
use super::resnet::{Conv, Resnet, Sampling};
use super::weights::Loader;
use crate::error::Result;
use crate::unet::layout::Geometry;

enum Sampler {
    None,
    Conv(Conv, Geometry),
    Resnet(Box<Resnet>),
}

impl Sampler {
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

fn attention(
    ld: &Loader<'_>,
    prefix: &str,
    a: &Arch,
    c: usize,
    groups: Option<usize>,
    rescale: f64,
) -> Result<Attention> {
    let (heads, dh) = a.cfg.heads(c)?;
    Attention::load(ld, prefix, c, heads, dh, groups, a.cfg.norm_eps, rescale)
}

pub struct DownBlock {
    resnets: Vec<Resnet>,
    attns: Vec<Attention>,
    sampler: Sampler,
}

impl DownBlock {
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
        for j in 0..a.cfg.layers_per_block {
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
            if spec.attention {
                attns.push(attention(
                    ld,
                    &format!("{pre}.attentions.{j}"),
                    a,
                    cout,
                    Some(a.groups),
                    1.0,
                )?);
            }
        }
        let sampler = match spec.resample {
            Resample::None => Sampler::None,
            Resample::Conv => {
                let p = a.cfg.downsample_padding;
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

    /// Reads the top of `stack`, pushes this block's output states.
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        stack: &mut Vec<Act<B::Buf>>,
        temb_act: &B::Buf,
    ) -> Result<()> {
        for (j, r) in self.resnets.iter().enumerate() {
            let x = stack.last().expect("input on the stack");
            let mut h = r.forward(be, &[x.seg()], x.dims, temb_act)?;
            if let Some(at) = self.attns.get(j) {
                let a = at.forward(be, &h)?;
                be.give(std::mem::replace(&mut h, a).buf);
            }
            stack.push(h);
        }
        let x = stack.last().expect("block output");
        if let Some(d) = self.sampler.forward(be, x, temb_act)? {
            stack.push(d);
        }
        Ok(())
    }

    pub fn downsamples(&self) -> bool {
        !matches!(self.sampler, Sampler::None)
    }
}

pub struct MidBlock {
    resnets: Vec<Resnet>,
    attn: Option<Attention>,
}

impl MidBlock {
    pub fn load(ld: &Loader<'_>, a: &Arch, with_attention: bool) -> Result<Self> {
        let c = *a.cfg.block_out_channels.last().unwrap();
        let s = a.cfg.mid_block_scale_factor;
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
            attn: if with_attention {
                Some(attention(
                    ld,
                    "mid_block.attentions.0",
                    a,
                    c,
                    a.mid_attn_groups,
                    s,
                )?)
            } else {
                None
            },
        })
    }

    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        x: &Act<B::Buf>,
        temb_act: &B::Buf,
    ) -> Result<Act<B::Buf>> {
        let mut h = self.resnets[0].forward(be, &[x.seg()], x.dims, temb_act)?;
        if let Some(at) = &self.attn {
            let a = at.forward(be, &h)?;
            be.give(std::mem::replace(&mut h, a).buf);
        }
        let out = self.resnets[1].forward(be, &[h.seg()], h.dims, temb_act)?;
        be.give(h.buf);
        Ok(out)
    }
}

pub struct UpBlock {
    resnets: Vec<Resnet>,
    attns: Vec<Attention>,
    sampler: Sampler,
}

impl UpBlock {
    /// Up block `i` of `levels`; `chans` is block_out_channels.
    pub fn load(ld: &Loader<'_>, a: &Arch, i: usize, spec: &BlockSpec) -> Result<Self> {
        let ch = &a.cfg.block_out_channels;
        let levels = ch.len();
        let rev = |k: usize| ch[levels - 1 - k];
        let prev = rev(i.saturating_sub(1)); // up block 0 follows the mid block
        let cout = rev(i);
        let cin = rev((i + 1).min(levels - 1));
        let layers = a.cfg.layers_per_block + 1;
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
            if spec.attention {
                attns.push(attention(
                    ld,
                    &format!("{pre}.attentions.{j}"),
                    a,
                    cout,
                    Some(a.groups),
                    1.0,
                )?);
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
        temb_act: &B::Buf,
    ) -> Result<Act<B::Buf>> {
        for (j, r) in self.resnets.iter().enumerate() {
            let skip = stack.pop().expect("skip connection on the stack");
            let mut out = r.forward(be, &[h.seg(), skip.seg()], h.dims, temb_act)?;
            be.give(h.buf);
            be.give(skip.buf);
            if let Some(at) = self.attns.get(j) {
                let a = at.forward(be, &out)?;
                be.give(std::mem::replace(&mut out, a).buf);
            }
            h = out;
        }
        Ok(match self.sampler.forward(be, &h, temb_act)? {
            Some(u) => {
                be.give(h.buf);
                u
            }
            None => h,
        })
    }
}
