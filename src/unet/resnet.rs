//! `ResnetBlock2D`: GroupNorm+SiLU, conv (time embedding added in its epilogue, or applied
//! as scale/shift inside the second norm), GroupNorm+SiLU, conv onto the (projected)
//! residual, divided by the output scale factor — five passes over memory in all.

use super::arch::Arch;
use super::backend::{Act, Backend, Epilogue, Segs};
use super::weights::{Loader, Weight};
use crate::cpu::norm::GroupNormParams;
use crate::error::Result;
use crate::unet::layout::{Dims, Geometry};
use crate::value_err;

/// A GroupNorm's affine parameters.
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub groups: usize,
    pub eps: f32,
}

impl Norm {
    pub fn load(ld: &Loader<'_>, prefix: &str, c: usize, groups: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !c.is_multiple_of(groups) {
            return value_err!("{prefix}: {c} channels do not split into {groups} groups");
        }
        Ok(Self {
            gamma: ld.get(&format!("{prefix}.weight"), &[c])?,
            beta: ld.get(&format!("{prefix}.bias"), &[c])?,
            groups,
            eps: eps as f32,
        })
    }

    pub fn params(&self) -> GroupNormParams<'_> {
        GroupNormParams {
            groups: self.groups,
            eps: self.eps,
            gamma: &self.gamma,
            beta: &self.beta,
        }
    }
}

/// A convolution's weight `[cout][cin][k][k]` and bias.
pub struct Conv {
    pub w: Weight,
    pub b: Vec<f32>,
    pub cout: usize,
}

impl Conv {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        f(&mut self.w);
    }

    pub fn load(ld: &Loader<'_>, prefix: &str, cin: usize, cout: usize, k: usize) -> Result<Self> {
        Ok(Self {
            w: ld.weight(&format!("{prefix}.weight"), &[cout, cin, k, k])?,
            b: ld.get(&format!("{prefix}.bias"), &[cout])?,
            cout,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    None,
    Up,
    Down,
}

pub struct Resnet {
    cin: usize,
    cout: usize,
    norm1: Norm,
    conv1: Conv,
    temb_w: Weight,
    temb_b: Vec<f32>,
    norm2: Norm,
    conv2: Conv,
    shortcut: Option<Conv>,
    scale_shift: bool,
    inv_scale: f32,
    sampling: Sampling,
}

impl Resnet {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        for c in [&mut self.conv1, &mut self.conv2]
            .into_iter()
            .chain(self.shortcut.as_mut())
        {
            c.for_each_matrix(f);
        }
        f(&mut self.temb_w);
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.cout
    }

    pub fn load(
        ld: &Loader<'_>,
        prefix: &str,
        a: &Arch,
        cin: usize,
        cout: usize,
        out_scale: f64,
        sampling: Sampling,
    ) -> Result<Self> {
        let eps = a.norm_eps;
        let tdim = if a.scale_shift { 2 * cout } else { cout };
        let p = |s: &str| format!("{prefix}.{s}");
        Ok(Self {
            cin,
            cout,
            norm1: Norm::load(ld, &p("norm1"), cin, a.groups, eps)?,
            conv1: Conv::load(ld, &p("conv1"), cin, cout, 3)?,
            temb_w: ld.linear_weight(&p("time_emb_proj.weight"), &[tdim, a.time.embed_dim])?,
            temb_b: ld.get(&p("time_emb_proj.bias"), &[tdim])?,
            norm2: Norm::load(ld, &p("norm2"), cout, a.groups, eps)?,
            conv2: Conv::load(ld, &p("conv2"), cout, cout, 3)?,
            shortcut: if cin != cout {
                Some(Conv::load(ld, &p("conv_shortcut"), cin, cout, 1)?)
            } else {
                None
            },
            scale_shift: a.scale_shift,
            inv_scale: (1.0 / out_scale) as f32,
            sampling,
        })
    }

    /// `x` is the channel concatenation of `segs` (the up path's `cat([h, skip])`);
    /// `temb_act` is SiLU(emb), `[b][time_embed_dim]`.
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        segs: Segs<'_, B::Buf>,
        dims: Dims,
        temb_act: &B::Buf,
    ) -> Result<Act<B::Buf>> {
        let mut h = be.act(self.cin, dims)?;
        be.group_norm(segs, dims, self.norm1.params(), None, true, &mut h.buf)?;
        // Resolution change on both paths (nearest-up is fused into conv1 below).
        let mut resid: Option<Act<B::Buf>> = None;
        let mut geom = Geometry::SAME3;
        let mut d1 = dims;
        match self.sampling {
            Sampling::None => {}
            Sampling::Up => {
                geom.upsample = true;
                d1 = Dims {
                    h: 2 * dims.h,
                    w: 2 * dims.w,
                    ..dims
                };
                let mut r = be.act(self.cin, d1)?;
                be.upsample2x(segs[0].0, self.cin, dims, &mut r.buf)?;
                resid = Some(r);
            }
            Sampling::Down => {
                d1 = Dims {
                    h: dims.h / 2,
                    w: dims.w / 2,
                    ..dims
                };
                let mut hd = be.act(self.cin, d1)?;
                be.avg_pool2x(&h.buf, self.cin, dims, &mut hd.buf)?;
                be.give(std::mem::replace(&mut h, hd).buf);
                let mut r = be.act(self.cin, d1)?;
                be.avg_pool2x(segs[0].0, self.cin, dims, &mut r.buf)?;
                resid = Some(r);
            }
        }
        let hin_dims = h.dims;
        let b = dims.b;
        let tdim = self.temb_b.len();
        let mut t = be.take(b * tdim)?;
        be.linear(temb_act, b, &self.temb_w, &self.temb_b, &mut t)?;

        let mut h1 = be.act(self.cout, d1)?;
        let mut e1 = Epilogue::bias(&self.conv1.b);
        if !self.scale_shift {
            e1.temb = Some(&t);
        }
        be.conv2d(
            &[h.seg()],
            hin_dims,
            &self.conv1.w,
            self.cout,
            geom,
            e1,
            &mut h1.buf,
        )?;
        be.give(h.buf);
        let mut h2 = be.act(self.cout, d1)?;
        let ss = if self.scale_shift { Some(&t) } else { None };
        be.group_norm(&[h1.seg()], d1, self.norm2.params(), ss, true, &mut h2.buf)?;
        be.give(h1.buf);

        let mut out = be.act(self.cout, d1)?;
        let rsegs: Vec<(&B::Buf, usize)> = match &resid {
            Some(r) => vec![r.seg()],
            None => segs.to_vec(),
        };
        match &self.shortcut {
            Some(sc) => {
                let e = Epilogue {
                    bias2: Some(&self.conv2.b[..]),
                    scale: self.inv_scale,
                    ..Epilogue::bias(&sc.b)
                };
                be.conv2d(
                    &rsegs,
                    d1,
                    &sc.w,
                    self.cout,
                    Geometry::POINT,
                    e,
                    &mut out.buf,
                )?;
                be.conv2d(
                    &[h2.seg()],
                    d1,
                    &self.conv2.w,
                    self.cout,
                    Geometry::SAME3,
                    Epilogue::keep(self.inv_scale),
                    &mut out.buf,
                )?;
            }
            None => {
                let e = Epilogue {
                    residual: Some(&rsegs[..]),
                    scale: self.inv_scale,
                    ..Epilogue::bias(&self.conv2.b)
                };
                be.conv2d(
                    &[h2.seg()],
                    d1,
                    &self.conv2.w,
                    self.cout,
                    Geometry::SAME3,
                    e,
                    &mut out.buf,
                )?;
            }
        }
        drop(rsegs);
        be.give(h2.buf);
        be.give(t);
        if let Some(r) = resid {
            be.give(r.buf);
        }
        Ok(out)
    }
}
