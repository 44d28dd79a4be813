//! Step families: one type per scheduler family holding its per-loop constants (what
//! `set_timesteps` fixes, in f64), whose `step` checks a step's tensors and describes the step
//! as the fused pass of `crate::lincomb`. The bindings convert arguments into these types and
//! run the pass on the target the tensors decide (`crate::target`); nothing here knows where
//! it runs.

pub mod analytic_dpm;
pub mod ddim;
pub mod dpm_multistep;
pub mod dpm_singlestep;
pub mod dpm_solver;
pub mod dpm_solver_v3;
pub mod euler;
pub mod lms;
pub mod unipc;

use crate::dtype::DType;
use crate::error::Result;
use crate::lincomb::Clamp;
use crate::tensor::Tensor;
use crate::value_err;

/// The sample's batch (its leading dimension), which must be non-empty.
pub fn batch_of(x: &Tensor) -> Result<usize> {
    if x.shape.is_empty() || x.shape[0] == 0 {
        return value_err!(
            "sample: expected a non-empty batch, got shape {:?}",
            x.shape
        );
    }
    Ok(x.shape[0])
}

/// The model output's row stride (elements per sample). Its shape must be the sample's, or,
/// with `extra_channels` (models that also predict a variance), the sample's with more
/// channels (dimension 1).
pub fn mo_stride(mo: &Tensor, x: &Tensor, extra_channels: bool) -> Result<usize> {
    let batch = batch_of(x)?;
    let (ms, xs) = (&mo.shape, &x.shape);
    let more_channels = extra_channels
        && ms.len() == xs.len()
        && ms.len() >= 2
        && ms[0] == xs[0]
        && ms[2..] == xs[2..]
        && ms[1] >= xs[1];
    if ms != xs && !more_channels {
        return value_err!("model_output: shape {ms:?} does not match sample's {xs:?}");
    }
    Ok(mo.numel / batch)
}

/// Checks a buffer the step reads or writes against the sample's shape and `dtype`.
pub fn expect_like(t: &Tensor, what: &str, sample: &Tensor, dtype: DType) -> Result<()> {
    t.expect_numel(what, sample.numel)?;
    if t.shape != sample.shape {
        return value_err!(
            "{what}: shape {:?} does not match the sample's {:?}",
            t.shape,
            sample.shape
        );
    }
    t.expect_dtype(what, dtype)
}

/// diffusers' dynamic thresholding: s = clamp(quantile(|x₀|, ratio), 1, sample_max_value),
/// the bounds written to the caller's scratch `bounds`.
pub fn thresholding(thresholding: Option<(f64, f64)>, bounds: Option<Tensor>) -> Result<Clamp> {
    match (thresholding, bounds) {
        (None, _) => Ok(Clamp::None),
        (Some((ratio, max_value)), Some(bounds)) => Ok(Clamp::Dynamic {
            ratio,
            lo: 1.0,
            hi: max_value,
            bounds,
        }),
        (Some(_), None) => value_err!(
            "bounds: dynamic thresholding needs a scratch tensor of `batch` values on the \
             sample's device"
        ),
    }
}

/// Checks diffusers' thresholding options: (ratio, sample_max_value) when on.
pub fn thresholding_options(on: bool, ratio: f64, max_value: f64) -> Result<Option<(f64, f64)>> {
    if !on {
        return Ok(None);
    }
    if !(0.0..=1.0).contains(&ratio) {
        return value_err!("dynamic_thresholding_ratio: must lie in [0, 1], got {ratio}");
    }
    if max_value.is_nan() || max_value <= 0.0 {
        return value_err!("sample_max_value: must be positive, got {max_value}");
    }
    Ok(Some((ratio, max_value)))
}
