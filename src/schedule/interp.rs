//! Piecewise-linear interpolation with linear extrapolation past both ends, as the DPM-Solver
//! reference's `interpolate_fn` does (it is differentiable there, so it never clamps).

/// Interpolates y(x) through the points (xp[i], yp[i]); `xp` must be strictly increasing and
/// hold at least two points.
pub fn interpolate(x: f64, xp: &[f64], yp: &[f64]) -> f64 {
    debug_assert!(xp.len() >= 2 && xp.len() == yp.len());
    let n = xp.len();
    // Index of the segment [xp[k], xp[k+1]] to use, clamped to the first and last segments.
    let k = match xp.partition_point(|&v| v <= x) {
        0 => 0,
        p if p >= n => n - 2,
        p => p - 1,
    };
    let (x0, x1, y0, y1) = (xp[k], xp[k + 1], yp[k], yp[k + 1]);
    y0 + (x - x0) * (y1 - y0) / (x1 - x0)
}

#[cfg(test)]
mod tests {
    use super::interpolate;

    #[test]
    fn interpolates_and_extrapolates() {
        let xp = [0.0, 1.0, 3.0];
        let yp = [0.0, 2.0, 3.0];
        assert_eq!(interpolate(0.5, &xp, &yp), 1.0);
        assert_eq!(interpolate(2.0, &xp, &yp), 2.5);
        assert_eq!(interpolate(-1.0, &xp, &yp), -2.0);
        assert_eq!(interpolate(5.0, &xp, &yp), 4.0);
        assert_eq!(interpolate(3.0, &xp, &yp), 3.0);
    }
}
