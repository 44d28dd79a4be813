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

    /// `order`, lowered where the update would span a zero-length interval: a zero step (the
    /// target is the current point) or a repeated point in the history. diffusers divides by
    /// that zero length (NaN from then on); with the order lowered, a zero step returns the
    /// sample unchanged (its first-order weights are exactly 1 and 0) and the steps after it
    /// use only distinct points. Where diffusers' result is finite it is unchanged.
    /// `check_step` has passed: `step_index + 1 - order` and `step_index + 1` are points.
    fn nonzero_order(&self, step_index: usize, order: usize) -> usize {
        let c = &self.cfg;
        let (t, s0) = (step_index + 1, step_index);
        if order == 1 || c.same_point(t, s0) || c.same_point(s0, s0 - 1) {
            1
        } else if order == 3 && c.same_point(s0 - 1, s0 - 2) {
            2
        } else {
            order
        }
    }

    /// Step `step_index` as a fused pass; `lower_order_nums` as diffusers counts it.
    pub fn step(&self, step_index: usize, lower_order_nums: usize, io: DpmIo) -> Result<Lincomb> {
        let order = self.order(step_index, lower_order_nums);
        self.cfg.check_step(step_index, order)?;
        let order = self.nonzero_order(step_index, order);
        let co = multistep_coefficients(&self.cfg.step_at(step_index, order)?)?;
        self.cfg.pass(&co, order, io)
    }
}
