//! The UNet on CUDA: the graph of `crate::unet` run through [`backend::DeviceBackend`], whose
//! ops are the kernels of `kernels/{gemm,unet_conv,unet_ops,unet_attention}.cu` launched on a
//! [`device::UnetDevice`] (the real launcher on the caller's stream, or the emulated one with
//! a CPU GEMM standing in for the GEMM kernel).
//!
//! Precision: activations are f32 on the device; weights are f32 (f16 / bf16 checkpoints are
//! widened once, on load, as on the CPU); the caller's tensors may be f32, f16 or bf16 and are
//! converted at the graph's two ends by the layout kernels.

pub mod backend;
pub mod device;
pub mod model;

#[cfg(test)]
mod tests;
