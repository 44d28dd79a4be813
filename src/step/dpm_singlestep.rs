//! The singlestep DPM-Solver / DPM-Solver++ step (diffusers' `DPMSolverSinglestepScheduler`):
//! steps grouped by `order_list`, each updating from the sample saved at its group's start.

use super::dpm_solver::{DpmIo, SolverConfig};
use crate::error::Result;
use crate::lincomb::Lincomb;
use crate::schedule::dpm_singlestep::singlestep_coefficients;
use crate::schedule::dpm_solver::Algorithm;
use crate::value_err;

/// One loop's constants: the solver and the order of every step.
#[derive(Clone, Debug)]
pub struct DpmSinglestep {
    pub cfg: SolverConfig,
    pub order_list: Vec<usize>,
}

impl DpmSinglestep {
    pub fn new(cfg: SolverConfig, order_list: Vec<usize>) -> Result<Self> {
        if cfg.algorithm == Algorithm::SdeDpmSolver {
            return value_err!(
                "algorithm_type: \"sde-dpmsolver\" has no singlestep form in diffusers; use \
                 \"sde-dpmsolver++\""
            );
        }
        Ok(Self { cfg, order_list })
    }

    /// The order of step `step_index`: `order_list`'s, lowered while the history lacks the
    /// outputs it needs (a loop that starts mid-group, as img2img does).
    pub fn order(&self, step_index: usize, history: [bool; 2]) -> Result<usize> {
        let Some(&listed) = self.order_list.get(step_index) else {
            return value_err!(
                "step: order_list has {} entries, none for step {step_index}; call \
                 set_timesteps again",
                self.order_list.len()
            );
        };
        let mut order = listed;
        while order > 1 && !history[order - 2] {
            order -= 1;
        }
        Ok(order)
    }

    /// Step `step_index` as a fused pass, and its order (1 starts a group: the caller saves
    /// the sample as the group's start).
    pub fn step(&self, step_index: usize, io: DpmIo) -> Result<(Lincomb, usize)> {
        let have = [io.history[0].is_some(), io.history[1].is_some()];
        let order = self.order(step_index, have)?;
        if order > 1 && io.start.is_none() {
            return value_err!(
                "step: an order-{order} step needs the sample saved at its group's first \
                 step, and there is none; call set_timesteps to start a new loop"
            );
        }
        // A zero-length interval between the group's points (a repeated timestep) would
        // divide by zero, as it does in diffusers: step from the current sample at first order
        // instead. (The update spans the group's start to the target, so a zero last interval
        // alone is harmless.) The listed order still goes back to the caller, which keeps the
        // group's start sample.
        self.cfg.check_step(step_index, order)?;
        let zero = (step_index + 1 - order..step_index).any(|i| self.cfg.same_point(i, i + 1));
        let used = if zero { 1 } else { order };
        let co = singlestep_coefficients(&self.cfg.step_at(step_index, used)?)?;
        let io = if used == 1 {
            DpmIo { start: None, ..io }
        } else {
            io
        };
        Ok((self.cfg.pass(&co, used, io)?, order))
    }
}
