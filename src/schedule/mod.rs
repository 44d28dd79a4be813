//! Pure Rust, f64, no I/O: noise schedules, timestep spacings and solver coefficients.

pub mod analytic_dpm;
pub mod betas;
pub mod ddim;
pub mod deis;
pub mod dpm_singlestep;
pub mod dpm_solver;
pub mod dpm_solver_v3;
pub mod euler;
pub mod euler_spacing;
pub mod interp;
pub mod karras;
pub mod linsolve;
pub mod lms;
pub mod noise_schedule;
pub mod prediction;
pub mod reference;
pub mod spacing;
pub mod trajectory;
pub mod unipc;

pub use betas::{BetaSchedule, DiscreteBetas};
pub use noise_schedule::NoiseSchedule;

/// The most training timesteps or sampling steps a schedule may have: far above what
/// diffusion models use (1000–4000), low enough that a size typo is a ValueError rather than
/// an abort on a failed multi-gigabyte allocation.
pub const MAX_STEPS: usize = 1 << 20;

/// `n` if it is at most `MAX_STEPS`; a ValueError naming `what` otherwise.
pub fn check_steps(what: &str, n: usize) -> crate::error::Result<usize> {
    if n > MAX_STEPS {
        return crate::value_err!("{what}: {n} is more than rdiff supports ({MAX_STEPS})");
    }
    Ok(n)
}
