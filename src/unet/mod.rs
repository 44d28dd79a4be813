//! diffusers-compatible `UNet2DModel` and `UNet2DConditionModel`: configs, safetensors
//! weights, blocks, the forward pass.

pub mod arch;
pub mod attention;
pub mod backend;
pub mod blocks;
pub mod cond_config;
pub mod config;
pub mod control;
pub mod embeddings;
pub mod layout;
pub mod model;
pub mod resnet;
pub mod runner;
pub mod transformer;
pub mod weights;
