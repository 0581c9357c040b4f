//! Range checks for the durations users set, in flags and config files alike: one rule, so
//! that no setting can panic a conversion (`Duration::from_secs_f64(1e30)`) or switch a
//! safeguard off by being absurdly large.

use std::time::Duration;

/// Longest duration any setting may ask for: one week. A timeout, backoff or window longer
/// than that is a typo, not a wish.
pub const MAX_SECS: f64 = 7.0 * 86_400.0;

/// `secs` as a [`Duration`], when it is a positive finite number of seconds up to
/// [`MAX_SECS`]; otherwise a one-line message naming `field`.
pub fn duration_secs(field: &str, secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX_SECS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "{field} must be a number of seconds in (0, {MAX_SECS}] (one week), got {secs}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_range_and_names_the_field_outside_it() {
        assert_eq!(duration_secs("x", 1.5), Ok(Duration::from_millis(1500)));
        assert_eq!(
            duration_secs("x", MAX_SECS),
            Ok(Duration::from_secs(604_800))
        );
        for bad in [0.0, -1.0, 1e30, f64::NAN, f64::INFINITY, MAX_SECS + 1.0] {
            let e = duration_secs("`timeout_secs`", bad).unwrap_err();
            assert!(e.starts_with("`timeout_secs` must be"), "{e}");
        }
    }
}
