//! ControlNet's residuals, diffusers' `down_block_additional_residuals` and
//! `mid_block_additional_residual`: one tensor for each skip connection of the down path
//! (conv_in's output first), added to it after the mid block has read the last one, and one
//! added to the mid block's output. The ControlNet itself runs wherever the caller runs it;
//! only its outputs cross.

use crate::error::Result;
use crate::tensor::Tensor;
use crate::unet::layout::Dims;
use crate::value_err;

/// A call's ControlNet residuals: NCHW tensors on the model's device, any float dtype the
/// backend reads (the CPU: f32, f16, bf16, f64; CUDA: f32, f16, bf16).
pub struct Controls {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

impl Controls {
    /// Every residual, the mid block's last.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.down.iter().chain([&self.mid])
    }

    /// Checks the count and shapes against the skips (`(channels, dims)`, conv_in's output
    /// first; the mid block's output has the last one's shape).
    pub fn check(&self, skips: &[(usize, Dims)]) -> Result<()> {
        if self.down.len() != skips.len() {
            return value_err!(
                "down_block_additional_residuals: {} given, but this UNet has {} skip \
                 connections (a ControlNet of another architecture?)",
                self.down.len(),
                skips.len()
            );
        }
        let nchw = |&(c, d): &(usize, Dims)| [d.b, c, d.h, d.w];
        for (i, (t, skip)) in self.down.iter().zip(skips).enumerate() {
            if t.shape != nchw(skip) {
                return value_err!(
                    "down_block_additional_residuals[{i}]: expected shape {:?}, got {:?}",
                    nchw(skip),
                    t.shape
                );
            }
        }
        let mid = skips.last().map(nchw).expect("conv_in's output is a skip");
        if self.mid.shape != mid {
            return value_err!(
                "mid_block_additional_residual: expected shape {mid:?}, got {:?}",
                self.mid.shape
            );
        }
        Ok(())
    }
}
