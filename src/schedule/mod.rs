//! Pure Rust, f64, no I/O: noise schedules, timestep spacings and solver coefficients.

pub mod analytic_dpm;
pub mod betas;
pub mod ddim;
pub mod dpm_singlestep;
pub mod dpm_solver;
pub mod interp;
pub mod karras;
pub mod noise_schedule;
pub mod reference;
pub mod spacing;
pub mod trajectory;

pub use betas::{BetaSchedule, DiscreteBetas};
pub use noise_schedule::NoiseSchedule;
