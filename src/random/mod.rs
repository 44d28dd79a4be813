//! Random numbers: rdiff's own counter-based stream, shared by the CPU path and the CUDA
//! kernels (`philox`), and torch's CPU generator reproduced so that rdiff draws diffusers'
//! noise faster than torch does (`mt19937`, `torch_normal`).

pub mod mt19937;
pub mod philox;
pub mod torch_normal;
