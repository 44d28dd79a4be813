//! Residuals a control model adds to the UNet's down path, as diffusers adds them:
//!
//! - a ControlNet's (`down_block_additional_residuals`, `mid_block_additional_residual`): one
//!   for each skip connection (conv_in's output first), added to it after the mid block has
//!   read the last one, and one added to the mid block's output;
//! - a T2I-Adapter's (`down_intrablock_additional_residuals`): one per down block, in order,
//!   added inside it — a cross-attention block's to its last attention's output (before its
//!   downsampler), another block's to its output (after it) — and, where one is left of the
//!   mid block's output shape, to that (T2I-Adapter-XL).
//!
//! The control model runs wherever the caller runs it; only its outputs cross.

use crate::error::Result;
use crate::tensor::Tensor;
use crate::unet::layout::Dims;
use crate::value_err;

/// A call's residuals: NCHW tensors on the model's device, any float dtype the backend reads
/// (the CPU: f32, f16, bf16, f64; CUDA: f32, f16, bf16).
pub struct Controls {
    /// A ControlNet's: the skips' and the mid block's.
    pub controlnet: Option<(Vec<Tensor>, Tensor)>,
    /// A T2I-Adapter's, in the order the down blocks (then the mid block) take them.
    pub adapter: Vec<Tensor>,
}

/// Where residuals go, as (channels, dims) of the activations they are added to.
pub type Places = Vec<(usize, Dims)>;

/// (channels, dims) as an NCHW shape.
fn nchw(&(c, d): &(usize, Dims)) -> [usize; 4] {
    [d.b, c, d.h, d.w]
}

impl Controls {
    /// Every residual.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        let net = self
            .controlnet
            .iter()
            .flat_map(|(d, m)| d.iter().chain([m]));
        net.chain(&self.adapter)
    }

    /// Checks the counts and shapes: `skips` are the down path's (`(channels, dims)`,
    /// conv_in's output first; the mid block's output has the last one's shape), `slots` where
    /// each down block takes an adapter's residual.
    pub fn check(&self, skips: &[(usize, Dims)], slots: &[(usize, Dims)]) -> Result<()> {
        let mid = skips.last().map(nchw).expect("conv_in's output is a skip");
        if let Some((down, mid_res)) = &self.controlnet {
            if down.len() != skips.len() {
                return value_err!(
                    "down_block_additional_residuals: {} given, but this UNet has {} skip \
                     connections (a ControlNet of another architecture?)",
                    down.len(),
                    skips.len()
                );
            }
            for (i, (t, skip)) in down.iter().zip(skips).enumerate() {
                if t.shape != nchw(skip) {
                    return value_err!(
                        "down_block_additional_residuals[{i}]: expected shape {:?}, got {:?}",
                        nchw(skip),
                        t.shape
                    );
                }
            }
            if mid_res.shape != mid {
                return value_err!(
                    "mid_block_additional_residual: expected shape {mid:?}, got {:?}",
                    mid_res.shape
                );
            }
        }
        let wanted = slots.iter().map(nchw).chain([mid]);
        if self.adapter.len() > slots.len() + 1 {
            return value_err!(
                "down_intrablock_additional_residuals: {} given, but this UNet takes at most \
                 {} (one per down block and one for the mid block)",
                self.adapter.len(),
                slots.len() + 1
            );
        }
        for (i, (t, want)) in self.adapter.iter().zip(wanted).enumerate() {
            if t.shape != want {
                return value_err!(
                    "down_intrablock_additional_residuals[{i}]: expected shape {want:?}, got \
                     {:?}",
                    t.shape
                );
            }
        }
        Ok(())
    }
}
