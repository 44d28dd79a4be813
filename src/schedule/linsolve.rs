//! The small dense solves of the solvers' order conditions (UniPC, DPM-Solver-v3): n ≤ 4.

/// Solves `m·v = b` by Gaussian elimination with partial pivoting; None when `m` is singular
/// (a zero or non-finite pivot: repeated time points).
pub fn solve(mut m: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
            .unwrap_or(c);
        if m[p][c] == 0.0 || !m[p][c].is_finite() {
            return None;
        }
        m.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = m[r][c] / m[c][c];
            let pivot = m[c].clone();
            for (v, p) in m[r][c..].iter_mut().zip(&pivot[c..]) {
                *v -= f * p;
            }
            b[r] -= f * b[c];
        }
    }
    let mut v = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| m[r][k] * v[k]).sum();
        v[r] = (b[r] - s) / m[r][r];
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::solve;

    #[test]
    fn solves_and_refuses_singular() {
        let m = vec![vec![0.0, 2.0], vec![1.0, 1.0]];
        assert_eq!(solve(m, vec![4.0, 3.0]), Some(vec![1.0, 2.0]));
        assert_eq!(
            solve(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![1.0, 1.0]),
            None
        );
    }
}
