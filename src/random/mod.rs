//! Counter-based random numbers shared by the CPU path and the CUDA kernels.

pub mod philox;
