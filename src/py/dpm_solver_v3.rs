//! `_DpmSolverV3`: the core of `rdiff.DPMSolverV3Scheduler`, built from an EMS table and a
//! schedule; `set_timesteps` computes every step's coefficients and `step` runs one fused pass.

use numpy::{IntoPyArray, PyArray3, PyReadonlyArray2};
use pyo3::prelude::*;

use super::run;
use super::schedule::PyNoiseSchedule;
use super::tensor::{tensor, tensor_opt};
use crate::error::RdiffError;
use crate::schedule::dpm_solver_v3::{ems_grid, Ems, V3Options};
use crate::step::dpm_solver_v3::{DpmSolverV3, DpmSolverV3Io, ROWS};

/// The solver options, by the scheduler's config names.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct V3Args {
    solver_order: usize,
    predictor_pseudo: bool,
    use_corrector: bool,
    corrector_pseudo: bool,
    lower_order_final: bool,
    corrector_half: bool,
    prediction_type: String,
}

#[pyclass(name = "_DpmSolverV3", module = "rdiff._rdiff")]
pub struct PyDpmSolverV3 {
    inner: DpmSolverV3,
}

fn rows(a: &PyReadonlyArray2<'_, f64>, what: &str) -> PyResult<(usize, Vec<f64>)> {
    let v = a.as_array();
    if v.is_empty() {
        return Err(RdiffError::Value(format!("ems: {what} is empty")).into());
    }
    Ok((v.shape()[1], v.iter().copied().collect()))
}

#[pymethods]
impl PyDpmSolverV3 {
    /// `lambdas`: the table's λ grid (checked against the one `schedule`, `t_start`, `t_end`
    /// give); `l`, `s`, `b`: float64 (M + 1, per_sample) statistics.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        schedule: PyRef<'_, PyNoiseSchedule>,
        t_start: f64,
        t_end: f64,
        lambdas: Vec<f64>,
        l: PyReadonlyArray2<'_, f64>,
        s: PyReadonlyArray2<'_, f64>,
        b: PyReadonlyArray2<'_, f64>,
        options: V3Args,
    ) -> PyResult<Self> {
        let sch = schedule.inner.clone();
        let m = lambdas.len().saturating_sub(1);
        let grid = ems_grid(&sch, t_start, t_end, m)?;
        if let Some(j) =
            (0..=m).find(|&j| (grid[j] - lambdas[j]).abs() > 1e-9 * (1.0 + grid[j].abs()))
        {
            return Err(RdiffError::Value(format!(
                "ems: the table's λ grid is not the schedule's from t={t_start} to t={t_end} in \
                 {m} intervals (point {j}: {} vs {}); it was estimated for another schedule or \
                 range",
                lambdas[j], grid[j]
            ))
            .into());
        }
        let (ps, lv) = rows(&l, "l")?;
        let (_, sv) = rows(&s, "s")?;
        let (_, bv) = rows(&b, "b")?;
        let ems = Ems::new(grid, ps, &lv, &sv, &bv)?;
        let o = V3Options {
            order: options.solver_order,
            p_pseudo: options.predictor_pseudo,
            use_corrector: options.use_corrector,
            c_pseudo: options.corrector_pseudo,
            lower_order_final: options.lower_order_final,
            half: options.corrector_half,
        };
        Ok(Self {
            inner: DpmSolverV3::new(ems, sch, o, &options.prediction_type)?,
        })
    }

    /// Computes the run's time steps and coefficients for a loop starting at step `begin`
    /// (GIL released).
    #[pyo3(signature = (steps, skip_type, begin=0))]
    fn set_timesteps(
        &mut self,
        py: Python<'_>,
        steps: usize,
        skip_type: &str,
        begin: usize,
    ) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.set_timesteps(steps, skip_type, begin))?;
        Ok(())
    }

    /// The continuous times t_0 > … > t_K of the run (on the EMS grid).
    #[getter]
    fn times(&self) -> Vec<f64> {
        self.inner.points.iter().map(|p| p.t).collect()
    }

    /// The grid index of every time step.
    #[getter]
    fn indexes(&self) -> Vec<usize> {
        self.inner.points.iter().map(|p| p.index).collect()
    }

    /// (corrector order or 0, predictor order) of every step.
    #[getter]
    fn orders(&self) -> Vec<(usize, usize)> {
        self.inner.orders.clone()
    }

    /// The history entries (earlier f) step `i` reads.
    fn history_needed(&self, i: usize) -> usize {
        self.inner.history_needed(i)
    }

    /// Every step's coefficient rows: float64 (steps, 13, per_sample).
    fn coefficients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f64>>> {
        let ps = self.inner.ems.per_sample();
        let k = self.inner.steps();
        let a = ndarray::Array3::from_shape_vec((k, ROWS, ps), self.inner.coefficients.clone())
            .map_err(|e| RdiffError::Value(format!("coefficients: {e}")))?;
        Ok(a.into_pyarray(py))
    }

    /// One fused step `i`: f of the output into `hist`, the corrected sample into `corrected`
    /// (when the step has a corrector), the step's result into `prev`. `history`: the earlier
    /// f, newest first; `coef`: this step's rows, in the pass's arithmetic dtype.
    #[pyo3(signature = (i, *, model_output, sample, last_sample, history, coef, hist, prev,
        corrected=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        i: usize,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        last_sample: Option<&Bound<'_, PyAny>>,
        history: Vec<Bound<'_, PyAny>>,
        coef: &Bound<'_, PyAny>,
        hist: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        corrected: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let history = history
            .iter()
            .enumerate()
            .map(|(k, m)| tensor(m, &format!("history[{k}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let io = DpmSolverV3Io {
            model_output: tensor(model_output, "model_output")?,
            sample: tensor(sample, "sample")?,
            last_sample: tensor_opt(last_sample, "last_sample")?,
            history,
            coef: tensor(coef, "coefficients")?,
            hist: tensor(hist, "history buffer")?,
            corrected: tensor_opt(corrected, "corrected sample")?,
            prev: tensor(prev, "output buffer")?,
        };
        let lc = self.inner.step(i, io)?;
        run(py, &lc, lc.tensors(), stream)
    }
}
