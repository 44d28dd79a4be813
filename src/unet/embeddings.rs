//! Timestep, class and added embeddings, in f32 exactly in diffusers' order of operations:
//! sinusoidal (`Timesteps`), Gaussian Fourier (`GaussianFourierProjection`, log input, no
//! flip), a learned table, then `TimestepEmbedding` (linear, SiLU, linear; the projected
//! `timestep_cond` added first when the model has `time_cond_proj_dim`); the class embedding
//! and SDXL's "text_time" embedding (`time_ids` projected, after `text_embeds`, through
//! `add_embedding`) are added to it.

use super::arch::{Arch, ClassEmbedding, TextTime, TimeEmbeddingType};
use super::weights::{Loader, Weight};
use crate::cpu::conv::linear;
use crate::cpu::vecmath::silu_f32;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::value_err;

/// diffusers' `get_timestep_embedding`: `[t.len()][dim]`.
pub fn sinusoidal(ts: &[f32], dim: usize, flip_sin_to_cos: bool, shift: f64) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let denom = (half as f64 - shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((neg_log * k as f32) / denom).exp())
        .collect();
    let mut out = vec![0.0f32; ts.len() * dim];
    for (row, &t) in out.chunks_exact_mut(dim).zip(ts) {
        let (first, second) = row[..2 * half].split_at_mut(half);
        let (sin_part, cos_part) = if flip_sin_to_cos {
            (second, first)
        } else {
            (first, second)
        };
        for k in 0..half {
            let a = t * freqs[k];
            sin_part[k] = a.sin();
            cos_part[k] = a.cos();
        }
    }
    out
}

/// `GaussianFourierProjection(log=True, flip_sin_to_cos=False)`: `[t.len()][2·w.len()]`.
pub fn fourier(ts: &[f32], w: &[f32]) -> Vec<f32> {
    let m = w.len();
    let pi = std::f32::consts::PI;
    let mut out = vec![0.0f32; ts.len() * 2 * m];
    for (row, &t) in out.chunks_exact_mut(2 * m).zip(ts) {
        let lt = t.ln();
        for k in 0..m {
            let a = lt * w[k] * 2.0 * pi;
            row[k] = a.sin();
            row[m + k] = a.cos();
        }
    }
    out
}

/// `TimestepEmbedding`: linear_1, SiLU, linear_2.
pub struct Mlp {
    pub(crate) fin: usize,
    pub(crate) w1: Weight,
    pub(crate) b1: Vec<f32>,
    pub(crate) w2: Weight,
    pub(crate) b2: Vec<f32>,
    pub(crate) hidden: usize,
}

impl Mlp {
    /// Every matrix a backend multiplies (see `UNet2D::for_each_matrix`).
    pub(crate) fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        f(&mut self.w1);
        f(&mut self.w2);
    }

    pub fn load(ld: &Loader<'_>, prefix: &str, fin: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            fin,
            w1: ld.linear_weight(&format!("{prefix}.linear_1.weight"), &[dim, fin])?,
            b1: ld.get(&format!("{prefix}.linear_1.bias"), &[dim])?,
            w2: ld.linear_weight(&format!("{prefix}.linear_2.weight"), &[dim, dim])?,
            b2: ld.get(&format!("{prefix}.linear_2.bias"), &[dim])?,
            hidden: dim,
        })
    }

    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut h = vec![0.0f32; rows * self.hidden];
        linear(x, rows, &self.w1, Some(&self.b1), &mut h);
        for v in h.iter_mut() {
            *v = silu_f32(*v);
        }
        let mut out = vec![0.0f32; rows * self.hidden];
        linear(&h, rows, &self.w2, Some(&self.b2), &mut out);
        out
    }
}

/// A call's timesteps: values on the host, or f32 on the model's device (read there, so that
/// a call needs no host value and a device forward can be captured in a CUDA graph). The
/// graph sees one per sample; a caller may give one for all.
#[derive(Clone, Copy, Debug)]
pub enum Timesteps<'a> {
    Host(&'a [f32]),
    Device(&'a Tensor),
}

impl<'a> Timesteps<'a> {
    /// How many values the caller gave.
    pub fn count(&self) -> usize {
        match self {
            Self::Host(v) => v.len(),
            Self::Device(t) => t.numel,
        }
    }

    /// The host values; an error for device timesteps.
    pub fn host(&self) -> Result<&'a [f32]> {
        match self {
            Self::Host(v) => Ok(v),
            Self::Device(_) => value_err!(
                "timestep: this call needs the timesteps on the host (a learned embedding, \
                 timestep_cond, or a CPU model), got a device tensor"
            ),
        }
    }
}

/// What a call conditions the embedding on besides the timesteps (all f32 on the host).
#[derive(Clone, Copy, Debug)]
pub struct Conditioning<'a> {
    pub class: ClassLabels<'a>,
    /// `added_cond_kwargs["text_embeds"]`, `[b][n]` (SDXL's pooled text embedding).
    pub text_embeds: Option<&'a [f32]>,
    /// `added_cond_kwargs["time_ids"]`, `[b][k]` (SDXL: sizes and crop, k = 6).
    pub time_ids: Option<&'a [f32]>,
    /// `timestep_cond`, `[b][time_cond_proj_dim]` (guidance-distilled models).
    pub timestep_cond: Option<&'a [f32]>,
}

impl Conditioning<'_> {
    /// Class labels only (a `UNet2DModel` call).
    pub fn class(class: ClassLabels<'_>) -> Conditioning<'_> {
        Conditioning {
            class,
            text_embeds: None,
            time_ids: None,
            timestep_cond: None,
        }
    }
}

/// The class labels a call passes.
#[derive(Clone, Copy, Debug)]
pub enum ClassLabels<'a> {
    None,
    /// Indices into the embedding table.
    Indices(&'a [i64]),
    /// Values: timesteps for the "timestep" type, `[rows][dim]` embeddings for "identity".
    Values(&'a [f32]),
}

/// The time (and class) embedding of a UNet2DModel.
pub struct TimeEmbedding {
    pub(crate) kind: TimeEmbeddingType,
    pub(crate) dim0: usize,
    pub(crate) flip: bool,
    pub(crate) shift: f64,
    pub(crate) fourier_w: Vec<f32>,
    learned: Vec<f32>,
    pub(crate) mlp: Mlp,
    class: ClassEmbedding,
    class_table: Vec<f32>,
    class_mlp: Option<Mlp>,
    /// `time_embedding.cond_proj.weight`, `[input_dim][cond_dim]` (no bias).
    cond_proj: Option<(Weight, usize)>,
    /// SDXL's text_time: the spec and `add_embedding`.
    text_time: Option<(TextTime, Mlp)>,
    pub dim: usize,
}

impl TimeEmbedding {
    pub fn load(ld: &Loader<'_>, a: &Arch) -> Result<Self> {
        let t = &a.time;
        let fourier = t.kind == TimeEmbeddingType::Fourier;
        let dim0 = if fourier {
            t.input_dim / 2
        } else {
            t.input_dim
        };
        let ted = t.embed_dim;
        let fourier_w = if fourier {
            ld.get_any(&["time_proj.weight", "time_proj.W"], &[dim0])?
        } else {
            Vec::new()
        };
        let learned = if t.kind == TimeEmbeddingType::Learned {
            let n = t.num_train_timesteps.unwrap_or(0);
            ld.get("time_proj.weight", &[n, dim0])?
        } else {
            Vec::new()
        };
        let class_table = match t.class {
            ClassEmbedding::Table(n) => ld.get("class_embedding.weight", &[n, ted])?,
            _ => Vec::new(),
        };
        let class_mlp = match t.class {
            ClassEmbedding::Timestep => Some(Mlp::load(ld, "class_embedding", t.input_dim, ted)?),
            ClassEmbedding::Projection(n) => Some(Mlp::load(ld, "class_embedding", n, ted)?),
            _ => None,
        };
        let cond_proj = match t.cond_proj_dim {
            Some(k) => Some((
                ld.linear_weight("time_embedding.cond_proj.weight", &[t.input_dim, k])?,
                k,
            )),
            None => None,
        };
        let text_time = match t.text_time {
            Some(tt) => Some((tt, Mlp::load(ld, "add_embedding", tt.input_dim, ted)?)),
            None => None,
        };
        Ok(Self {
            kind: t.kind,
            dim0,
            flip: t.flip_sin_to_cos,
            shift: t.freq_shift,
            fourier_w,
            learned,
            mlp: Mlp::load(ld, "time_embedding", t.input_dim, ted)?,
            class: t.class,
            class_table,
            class_mlp,
            cond_proj,
            text_time,
            dim: ted,
        })
    }

    /// Whether the projection needs the timesteps' values on the host (the learned table, or
    /// a `timestep_cond` added to it); else a backend computes it from the timesteps where
    /// they are, which lets a device read them on the device.
    pub fn projects_on_host(&self, cond: &Conditioning<'_>) -> Result<bool> {
        match (self.kind, &self.cond_proj, cond.timestep_cond) {
            (_, None, Some(_)) => {
                value_err!("timestep_cond given, but this model has no time_cond_proj_dim")
            }
            (_, Some(_), Some(_)) | (TimeEmbeddingType::Learned, _, None) => Ok(true),
            _ => Ok(false),
        }
    }

    /// The projection to compute on the host (see `projects_on_host`), or None when a
    /// backend may compute it from `ts` itself.
    pub fn host_projection(&self, ts: &[f32], cond: &Conditioning<'_>) -> Result<Option<Vec<f32>>> {
        if !self.projects_on_host(cond)? {
            return Ok(None);
        }
        match (&self.cond_proj, cond.timestep_cond) {
            (Some((w, k)), Some(c)) => {
                let b = ts.len();
                if c.len() != b * k {
                    return value_err!(
                        "timestep_cond: expected [{b}, {k}] values, got {}",
                        c.len()
                    );
                }
                let mut p = self.project(ts)?;
                let fin = self.mlp.fin;
                let mut add = vec![0.0f32; b * fin];
                linear(c, b, w, None, &mut add);
                for (x, y) in p.iter_mut().zip(&add) {
                    *x += y;
                }
                Ok(Some(p))
            }
            _ => Ok(Some(self.project(ts)?)),
        }
    }

    /// The projection of `ts` before the MLP, `[ts.len()][dim0]`.
    pub fn project(&self, ts: &[f32]) -> Result<Vec<f32>> {
        Ok(match self.kind {
            TimeEmbeddingType::Positional => sinusoidal(ts, self.dim0, self.flip, self.shift),
            TimeEmbeddingType::Fourier => fourier(ts, &self.fourier_w),
            TimeEmbeddingType::Learned => {
                let n = self.learned.len() / self.dim0;
                let mut out = Vec::with_capacity(ts.len() * self.dim0);
                for &t in ts {
                    let i = t as i64;
                    if i < 0 || i as usize >= n || i as f32 != t {
                        return value_err!(
                            "timestep {t} is not an index into the learned embedding (0..{n})"
                        );
                    }
                    out.extend_from_slice(&self.learned[i as usize * self.dim0..][..self.dim0]);
                }
                out
            }
        })
    }

    /// The embedding `emb` (`[batch][dim]`), class and added embeddings included.
    pub fn forward(&self, ts: &[f32], cond: &Conditioning<'_>) -> Result<Vec<f32>> {
        let b = ts.len();
        let proj = match self.host_projection(ts, cond)? {
            Some(p) => p,
            None => self.project(ts)?,
        };
        let mut emb = self.mlp.forward(&proj, b);
        let d = self.dim;
        if let Some(rows) = self.added_rows(b, cond)? {
            let r = rows.len() / d;
            for (i, e) in emb.chunks_exact_mut(d).enumerate() {
                let src = &rows[(if r == 1 { 0 } else { i }) * d..][..d];
                for (x, y) in e.iter_mut().zip(src) {
                    *x += y;
                }
            }
        }
        Ok(emb)
    }

    /// What the class labels and the added conditioning add to the embedding of a batch of
    /// `b`: `[1 or b][dim]` rows (one row is broadcast), or None when nothing is added.
    pub fn added_rows(&self, b: usize, cond: &Conditioning<'_>) -> Result<Option<Vec<f32>>> {
        let class = self.class_rows(b, cond.class)?;
        let Some((tt, mlp)) = &self.text_time else {
            if cond.text_embeds.is_some() || cond.time_ids.is_some() {
                return value_err!(
                    "added_cond_kwargs: text_embeds / time_ids given, but this model's \
                     addition_embed_type is not \"text_time\""
                );
            }
            return Ok(class);
        };
        let (Some(text), Some(ids)) = (cond.text_embeds, cond.time_ids) else {
            return value_err!(
                "added_cond_kwargs: this model (addition_embed_type \"text_time\") needs \
                 \"text_embeds\" and \"time_ids\""
            );
        };
        if text.len() % b != 0 || ids.len() % b != 0 {
            return value_err!(
                "added_cond_kwargs: text_embeds ({} values) and time_ids ({} values) must have \
                 one row per sample of the batch of {b}",
                text.len(),
                ids.len()
            );
        }
        let (nt, k) = (text.len() / b, ids.len() / b);
        if nt + k * tt.time_dim != tt.input_dim {
            return value_err!(
                "added_cond_kwargs: {nt} text_embeds and {k} time_ids per sample give \
                 {} inputs; this model's add_embedding takes {} \
                 (projection_class_embeddings_input_dim)",
                nt + k * tt.time_dim,
                tt.input_dim
            );
        }
        let proj = sinusoidal(ids, tt.time_dim, self.flip, self.shift);
        let mut x = Vec::with_capacity(b * tt.input_dim);
        for i in 0..b {
            x.extend_from_slice(&text[i * nt..][..nt]);
            x.extend_from_slice(&proj[i * k * tt.time_dim..][..k * tt.time_dim]);
        }
        let mut rows = mlp.forward(&x, b);
        if let Some(c) = class {
            let r = c.len() / self.dim;
            for (i, row) in rows.chunks_exact_mut(self.dim).enumerate() {
                let src = &c[(if r == 1 { 0 } else { i }) * self.dim..][..self.dim];
                for (x, y) in row.iter_mut().zip(src) {
                    // diffusers: emb + class_emb, then + aug_emb.
                    *x += y;
                }
            }
        }
        Ok(Some(rows))
    }

    /// What the class labels add to the embedding of a batch of `b`: `[1 or b][dim]` rows
    /// (one row is broadcast), or None for an unconditional model.
    pub fn class_rows(&self, b: usize, class: ClassLabels<'_>) -> Result<Option<Vec<f32>>> {
        let d = self.dim;
        let want_rows = |n: usize, what: &str| -> Result<()> {
            if n == b || n == 1 {
                Ok(())
            } else {
                value_err!("class_labels: {n} {what} for a batch of {b}")
            }
        };
        Ok(match (self.class, class) {
            (ClassEmbedding::None, ClassLabels::None) => None,
            (ClassEmbedding::None, _) => {
                return value_err!(
                    "class_labels given, but this model has no class embedding \
                     (class_embed_type and num_class_embeds are null)"
                )
            }
            (_, ClassLabels::None) => {
                return value_err!("class_labels should be provided when doing class conditioning")
            }
            (ClassEmbedding::Table(n), ClassLabels::Indices(idx)) => {
                want_rows(idx.len(), "labels")?;
                let mut rows = Vec::with_capacity(idx.len() * d);
                for &i in idx {
                    if i < 0 || i as usize >= n {
                        return value_err!("class_labels: label {i} is out of range 0..{n}");
                    }
                    rows.extend_from_slice(&self.class_table[i as usize * d..][..d]);
                }
                Some(rows)
            }
            (ClassEmbedding::Table(_), ClassLabels::Values(_)) => {
                return value_err!("class_labels: the embedding table needs integer labels")
            }
            (ClassEmbedding::Timestep, lab) => {
                let v: Vec<f32> = match lab {
                    ClassLabels::Values(v) => v.to_vec(),
                    ClassLabels::Indices(i) => i.iter().map(|&x| x as f32).collect(),
                    ClassLabels::None => unreachable!(),
                };
                want_rows(v.len(), "labels")?;
                let mlp = self.class_mlp.as_ref().expect("class MLP loaded");
                Some(mlp.forward(&self.project(&v)?, v.len()))
            }
            (ClassEmbedding::Projection(n), lab) => {
                let ClassLabels::Values(v) = lab else {
                    return value_err!(
                        "class_labels: the projection class embedding needs float vectors"
                    );
                };
                if v.len() % n != 0 {
                    return value_err!(
                        "class_labels: the projection class embedding needs [batch, {n}] values, got {}",
                        v.len()
                    );
                }
                want_rows(v.len() / n, "rows")?;
                let mlp = self.class_mlp.as_ref().expect("class MLP loaded");
                Some(mlp.forward(v, v.len() / n))
            }
            (ClassEmbedding::Identity, lab) => {
                let v: Vec<f32> = match lab {
                    ClassLabels::Values(v) => v.to_vec(),
                    ClassLabels::Indices(i) => i.iter().map(|&x| x as f32).collect(),
                    ClassLabels::None => unreachable!(),
                };
                if !v.len().is_multiple_of(d) {
                    return value_err!(
                        "class_labels: identity class embedding needs [batch, {d}] values, got {}",
                        v.len()
                    );
                }
                want_rows(v.len() / d, "rows")?;
                Some(v)
            }
        })
    }
}
