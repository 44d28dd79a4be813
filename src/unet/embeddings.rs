//! Timestep and class embeddings, in f32 exactly in diffusers' order of operations:
//! sinusoidal (`Timesteps`), Gaussian Fourier (`GaussianFourierProjection`, log input, no
//! flip), a learned table, then `TimestepEmbedding` (linear, SiLU, linear).

use super::config::{Arch, ClassEmbedding, TimeEmbeddingType};
use super::weights::Loader;
use crate::cpu::conv::linear;
use crate::cpu::vecmath::silu_f32;
use crate::error::Result;
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
    pub(crate) w1: Vec<f32>,
    pub(crate) b1: Vec<f32>,
    pub(crate) w2: Vec<f32>,
    pub(crate) b2: Vec<f32>,
    pub(crate) hidden: usize,
}

impl Mlp {
    pub fn load(ld: &Loader<'_>, prefix: &str, fin: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            w1: ld.get(&format!("{prefix}.linear_1.weight"), &[dim, fin])?,
            b1: ld.get(&format!("{prefix}.linear_1.bias"), &[dim])?,
            w2: ld.get(&format!("{prefix}.linear_2.weight"), &[dim, dim])?,
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
    pub dim: usize,
}

impl TimeEmbedding {
    pub fn load(ld: &Loader<'_>, a: &Arch) -> Result<Self> {
        let dim0 = a.cfg.block_out_channels[0];
        let ted = a.time_embed_dim;
        let fourier_w = if a.time_embedding == TimeEmbeddingType::Fourier {
            ld.get_any(&["time_proj.weight", "time_proj.W"], &[dim0])?
        } else {
            Vec::new()
        };
        let learned = if a.time_embedding == TimeEmbeddingType::Learned {
            let n = a.cfg.num_train_timesteps.unwrap_or(0);
            ld.get("time_proj.weight", &[n, dim0])?
        } else {
            Vec::new()
        };
        let class_table = match a.class_embedding {
            ClassEmbedding::Table(n) => ld.get("class_embedding.weight", &[n, ted])?,
            _ => Vec::new(),
        };
        let class_mlp = if a.class_embedding == ClassEmbedding::Timestep {
            Some(Mlp::load(ld, "class_embedding", a.time_input_dim, ted)?)
        } else {
            None
        };
        Ok(Self {
            kind: a.time_embedding,
            dim0,
            flip: a.cfg.flip_sin_to_cos,
            shift: a.cfg.freq_shift,
            fourier_w,
            learned,
            mlp: Mlp::load(ld, "time_embedding", a.time_input_dim, ted)?,
            class: a.class_embedding,
            class_table,
            class_mlp,
            dim: ted,
        })
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

    /// The embedding `emb` (`[batch][dim]`), class embedding added.
    pub fn forward(&self, ts: &[f32], class: ClassLabels<'_>) -> Result<Vec<f32>> {
        let b = ts.len();
        let mut emb = self.mlp.forward(&self.project(ts)?, b);
        let d = self.dim;
        if let Some(rows) = self.class_rows(b, class)? {
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
            (ClassEmbedding::Identity, lab) => {
                let v: Vec<f32> = match lab {
                    ClassLabels::Values(v) => v.to_vec(),
                    ClassLabels::Indices(i) => i.iter().map(|&x| x as f32).collect(),
                    ClassLabels::None => unreachable!(),
                };
                if v.len() % d != 0 {
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
