//! Means and standard deviations: one summation order for every figure of the workspace
//! (the dataset scores and their bootstrap, the trainer's diagnostics, the reports, the
//! comparisons and studies, the reward service). `schedule::stats` is this module.

/// Mean of the values (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Mean and population std of the defined values (`None` when fewer than one).
pub fn mean_std(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    let mean = mean(&v);
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    Some((mean, var.sqrt()))
}

/// Sample standard deviation (n - 1); 0 for fewer than two values.
pub fn sample_std(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}
