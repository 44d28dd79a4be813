//! `UNet2D`: diffusers' `UNet2DModel` forward pass on the CPU.
//!
//! The graph (this file, `blocks`, `resnet`, `attention`) only strings together a handful of
//! ops — `conv2d` (with its fused epilogue), `group_norm` (fused affine, scale/shift, SiLU),
//! `self_attention`, `linear`, the two resamplers — on activations in the `[c][b][h][w]`
//! layout; another backend provides those ops and an arena of its own.
//!
//! Activation memory comes from an [`Arena`] kept with the model: after the first call at a
//! given batch and image size, a call allocates nothing but a few batch-sized vectors for
//! the time embedding.

use std::path::Path;
use std::sync::Mutex;

use super::blocks::{DownBlock, MidBlock, UpBlock};
use super::config::{Arch, UNet2DConfig};
use super::embeddings::{ClassLabels, TimeEmbedding};
use super::resnet::{Act, Conv, Norm};
use super::weights::{Loader, SafetensorsFile, WeightSource};
use crate::cpu::arena::Arena;
use crate::cpu::conv::{conv2d, Dims, Geometry, Init, Input};
use crate::cpu::dtype::Elem;
use crate::cpu::norm::group_norm;
use crate::cpu::vecmath::silu_f32;
use crate::error::{RdiffError, Result};
use crate::value_err;

pub struct UNet2D {
    pub arch: Arch,
    conv_in: Conv,
    temb: TimeEmbedding,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: Norm,
    conv_out: Conv,
    arena: Mutex<Arena>,
    /// The image side must be a multiple of this (2^downsamplers).
    multiple: usize,
}

impl UNet2D {
    /// From a config.json text and weights by diffusers' names.
    pub fn load(config_json: &str, src: &dyn WeightSource) -> Result<Self> {
        let arch = UNet2DConfig::from_json(config_json)?.resolve()?;
        let ld = Loader::new(src);
        let ch = arch.cfg.block_out_channels.clone();
        let c0 = ch[0];
        let conv_in = Conv::load(&ld, "conv_in", arch.cfg.in_channels, c0, 3)?;
        let temb = TimeEmbedding::load(&ld, &arch)?;
        let mut down = Vec::new();
        let mut cin = c0;
        for (i, spec) in arch.down.iter().enumerate() {
            down.push(DownBlock::load(&ld, &arch, i, spec, cin, ch[i])?);
            cin = ch[i];
        }
        let mid = match arch.mid {
            Some(att) => Some(MidBlock::load(&ld, &arch, att)?),
            None => None,
        };
        let mut up = Vec::new();
        for (i, spec) in arch.up.iter().enumerate() {
            up.push(UpBlock::load(&ld, &arch, i, spec)?);
        }
        let norm_out = Norm::load(&ld, "conv_norm_out", c0, arch.groups, arch.cfg.norm_eps)?;
        let conv_out = Conv::load(&ld, "conv_out", c0, arch.cfg.out_channels, 3)?;
        let multiple = 1usize << down.iter().filter(|d| d.downsamples()).count();
        Ok(Self {
            arch,
            conv_in,
            temb,
            down,
            mid,
            up,
            norm_out,
            conv_out,
            arena: Mutex::new(Arena::default()),
            multiple,
        })
    }

    /// From a diffusers folder: `config.json` and the named safetensors file in `dir`.
    pub fn from_dir(dir: &Path, weights_name: &str) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = std::fs::read_to_string(&cfg_path)
            .map_err(|e| RdiffError::Io(format!("{}: {e}", cfg_path.display())))?;
        let file = SafetensorsFile::open(&dir.join(weights_name))?;
        Self::load(&cfg, &file)
    }

    pub fn in_channels(&self) -> usize {
        self.arch.cfg.in_channels
    }

    pub fn out_channels(&self) -> usize {
        self.arch.cfg.out_channels
    }

    /// Checks a call's shapes before any work.
    pub fn check(&self, b: usize, c: usize, h: usize, w: usize, timesteps: usize) -> Result<()> {
        if c != self.in_channels() {
            return value_err!(
                "sample: expected {} input channels, got {c} (shape [{b}, {c}, {h}, {w}])",
                self.in_channels()
            );
        }
        if b == 0 || h == 0 || w == 0 {
            return value_err!("sample: empty shape [{b}, {c}, {h}, {w}]");
        }
        if h % self.multiple != 0 || w % self.multiple != 0 {
            return value_err!(
                "sample: height and width must be multiples of {} for this UNet, got {h}×{w}",
                self.multiple
            );
        }
        if timesteps != b && timesteps != 1 {
            return value_err!("timestep: {timesteps} values for a batch of {b}");
        }
        Ok(())
    }

    /// The forward pass: `x` is NCHW `[b][in_channels][h][w]`, `out` NCHW
    /// `[b][out_channels][h][w]`, both of element type T (computed in f32).
    pub fn forward<T: Elem>(
        &self,
        x: &[T],
        (b, h, w): (usize, usize, usize),
        timesteps: &[f32],
        class: ClassLabels<'_>,
        out: &mut [T],
    ) -> Result<()> {
        let cin = self.in_channels();
        self.check(b, cin, h, w, timesteps.len())?;
        let ts: Vec<f32> = if timesteps.len() == 1 {
            vec![timesteps[0]; b]
        } else {
            timesteps.to_vec()
        };
        let emb = self.temb.forward(&ts, class)?;
        let temb_act: Vec<f32> = emb.iter().map(|&v| silu_f32(v)).collect();

        let mut guard = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        let arena = &mut *guard;
        let dims = Dims { b, h, w };
        let hw = dims.hw();

        // NCHW (any dtype) → [c][b][h][w] f32, centred if the config says so.
        let mut xin = Act::new(arena, cin, dims);
        let center = self.arch.cfg.center_input_sample;
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
        let c0 = self.conv_in.cout;
        let mut h0 = Act::new(arena, c0, dims);
        conv2d(
            Input {
                segs: &[xin.seg()],
                dims,
            },
            &self.conv_in.w,
            c0,
            Geometry::SAME3,
            Init::bias(&self.conv_in.b),
            &mut h0.buf,
        );
        arena.give(xin.buf);

        let mut stack = vec![h0];
        for d in &self.down {
            d.forward(arena, &mut stack, &temb_act);
        }
        let mut hcur = match &self.mid {
            Some(m) => m.forward(arena, stack.last().unwrap(), &temb_act),
            None => {
                // The up path consumes its input; the skip stays on the stack.
                let top = stack.last().unwrap();
                let mut c = Act::new(arena, top.c, top.dims);
                c.buf.copy_from_slice(&top.buf);
                c
            }
        };
        for u in &self.up {
            hcur = u.forward(arena, hcur, &mut stack, &temb_act);
        }
        debug_assert!(stack.is_empty());

        let mut hn = Act::new(arena, c0, hcur.dims);
        group_norm(
            Input {
                segs: &[hcur.seg()],
                dims: hcur.dims,
            },
            self.norm_out.params(),
            None,
            true,
            &mut hn.buf,
        );
        arena.give(hcur.buf);
        let co = self.out_channels();
        let mut y = Act::new(arena, co, dims);
        conv2d(
            Input {
                segs: &[hn.seg()],
                dims,
            },
            &self.conv_out.w,
            co,
            Geometry::SAME3,
            Init::bias(&self.conv_out.b),
            &mut y.buf,
        );
        arena.give(hn.buf);

        // [c][b][h][w] → NCHW, divided by the timestep for Fourier-embedded models.
        let fourier = self.arch.time_embedding == super::config::TimeEmbeddingType::Fourier;
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
        arena.give(y.buf);
        Ok(())
    }

    /// Bytes the activation arena has allocated so far.
    pub fn arena_bytes(&self) -> usize {
        self.arena.lock().map(|a| a.allocated_bytes()).unwrap_or(0)
    }
}
