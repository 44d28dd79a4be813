//! The multistep DPM-Solver / DPM-Solver++ step (diffusers' `DPMSolverMultistepScheduler`):
//! its order rule and coefficients (`schedule::dpm_solver`) over the shared pass.

use super::dpm_solver::{DpmIo, SolverConfig};
use crate::error::Result;
use crate::lincomb::Lincomb;
use crate::schedule::dpm_solver::{multistep_coefficients, multistep_order, MultistepRule};
use crate::value_err;

/// One loop's constants: the solver, its order and the lower-order rule.
#[derive(Clone, Debug)]
pub struct DpmMultistep {
    pub cfg: SolverConfig,
    pub solver_order: usize,
    pub rule: MultistepRule,
}

impl DpmMultistep {
    pub fn new(cfg: SolverConfig, solver_order: usize, rule: MultistepRule) -> Result<Self> {
        if !(1..=3).contains(&solver_order) {
            return value_err!("solver_order: must be 1, 2 or 3, got {solver_order}");
        }
        Ok(Self {
            cfg,
            solver_order,
            rule,
        })
    }

    /// The order of step `step_index` with `lower_order_nums` earlier outputs in the history.
    pub fn order(&self, step_index: usize, lower_order_nums: usize) -> usize {
        multistep_order(
            step_index,
            self.cfg.steps(),
            self.solver_order,
            lower_order_nums,
            self.rule,
        )
    }

    /// Step `step_index` as a fused pass; `lower_order_nums` as diffusers counts it.
    pub fn step(&self, step_index: usize, lower_order_nums: usize, io: DpmIo) -> Result<Lincomb> {
        let order = self.order(step_index, lower_order_nums);
        let co = multistep_coefficients(&self.cfg.step_at(step_index, order)?)?;
        self.cfg.pass(&co, order, io)
    }
}
