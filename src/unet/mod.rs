//! diffusers-compatible `UNet2DModel`: config, safetensors weights, blocks, the forward pass.

pub mod attention;
pub mod backend;
pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod layout;
pub mod model;
pub mod resnet;
pub mod runner;
pub mod weights;
