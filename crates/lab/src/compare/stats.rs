//! The statistics of a comparison over seeds: confidence intervals of means and of a
//! difference (Student / Welch), and the exact permutation test.

pub use schedule::stats::{mean, sample_std as sd};

/// The 97.5% quantile of Student's t with `df` degrees of freedom (the two-sided 95% critical
/// value); `df` may be fractional (Welch). NaN when `df` is not positive.
pub fn t975(df: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    // statrs inverts the incomplete beta function, which loses digits (and takes long) for huge
    // df; there the Cornish-Fisher expansion around the normal quantile is exact to ~1e-12.
    if df > 1e4 {
        const Z: f64 = 1.959_963_984_540_054;
        let g1 = (Z.powi(3) + Z) / 4.0;
        let g2 = (5.0 * Z.powi(5) + 16.0 * Z.powi(3) + 3.0 * Z) / 96.0;
        return Z + g1 / df + g2 / (df * df);
    }
    StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |t| t.inverse_cdf(0.975))
}

/// Half-width of the 95% confidence interval of the mean.
pub fn ci95(v: &[f64]) -> f64 {
    t975(v.len() as f64 - 1.0) * sd(v) / (v.len() as f64).sqrt()
}

/// The smallest p-value `permutation_p` can give for groups of `n1` and `n2` distinct values:
/// only the two most extreme relabelings reach the observed difference, so it is
/// 2 / C(n1 + n2, n1). With 3 seeds per method that is 0.1: no difference can be significant.
pub fn min_permutation_p(n1: usize, n2: usize) -> f64 {
    let mut c = 1.0f64;
    for i in 0..n1 {
        c = c * (n2 + n1 - i) as f64 / (i + 1) as f64;
    }
    (2.0 / c).min(1.0)
}

/// Mean difference `mean(a) - mean(b)` with the half-width of its 95% confidence interval
/// (Welch: unequal variances, Welch-Satterthwaite degrees of freedom, not rounded).
pub fn diff_ci95(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (va, vb) = (
        sd(a).powi(2) / a.len() as f64,
        sd(b).powi(2) / b.len() as f64,
    );
    let se = (va + vb).sqrt();
    let df = if se == 0.0 {
        (a.len() + b.len()) as f64 - 2.0
    } else {
        let den =
            va * va / (a.len() as f64 - 1.0).max(1.0) + vb * vb / (b.len() as f64 - 1.0).max(1.0);
        ((va + vb).powi(2) / den).max(1.0)
    };
    (mean(a) - mean(b), t975(df) * se)
}

/// Exact two-sided permutation test of a difference in means: the share of all relabelings
/// of the pooled values whose |difference| is at least the observed one.
pub fn permutation_p(a: &[f64], b: &[f64]) -> f64 {
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let (n, k) = (pooled.len(), a.len());
    if n > 24 || k == 0 || k == n {
        return f64::NAN;
    }
    let observed = (mean(a) - mean(b)).abs();
    let total: f64 = pooled.iter().sum();
    let (mut hits, mut count) = (0u64, 0u64);
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize != k {
            continue;
        }
        let sa: f64 = (0..n)
            .filter(|i| mask >> i & 1 == 1)
            .map(|i| pooled[i])
            .sum();
        let d = (sa / k as f64 - (total - sa) / (n - k) as f64).abs();
        count += 1;
        if d >= observed - 1e-12 {
            hits += 1;
        }
    }
    hits as f64 / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert!((ci95(&[1.0, 2.0, 3.0]) - t975(2.0) / 3f64.sqrt()).abs() < 1e-12);
        // fully separated groups of 3: 2 of the 20 relabelings are as extreme
        assert!((permutation_p(&[1.0, 1.1, 1.2], &[0.0, 0.1, 0.2]) - 0.1).abs() < 1e-12);
        assert_eq!(permutation_p(&[1.0, 0.0], &[1.0, 0.0]), 1.0);
        assert!((min_permutation_p(3, 3) - 0.1).abs() < 1e-12);
        assert!((min_permutation_p(5, 5) - 2.0 / 252.0).abs() < 1e-12);
        assert!((min_permutation_p(2, 3) - 0.2).abs() < 1e-12);
        // equal spreads: Welch reduces to the pooled t with n1 + n2 - 2 = 4 df
        let (d, half) = diff_ci95(&[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0]);
        assert!((d - 1.0).abs() < 1e-12);
        let se = (2.0f64 / 3.0).sqrt();
        assert!((half - t975(4.0) * se).abs() < 1e-12, "{half}");
    }
}
