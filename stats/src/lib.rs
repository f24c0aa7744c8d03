//! The statistics of ctrwatch's benchmarks (tests/src/bin/bench.rs, `cargo xtask vm-test
//! --scenario bench`, `cargo xtask startup`): one place for the median and its confidence
//! interval, so that every report computes them the same way.

/// The median of `v` (the mean of the middle two for an even count); NaN when `v` is empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The 95 % confidence interval of `v`'s median from order statistics (ranks n/2 ± 0.98·√n,
/// distribution-free); None under 6 values, where it would be the whole range or wider.
pub fn median_ci95(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    if n < 6 {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let half = 0.98 * (n as f64).sqrt();
    let lo = (n as f64 / 2.0 - half).floor().max(0.0) as usize;
    let hi = ((n as f64 / 2.0 + half).ceil() as usize).min(n - 1);
    Some((s[lo], s[hi]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn intervals() {
        assert_eq!(median_ci95(&[1.0; 5]), None);
        let v: Vec<f64> = (1..=9).map(f64::from).collect();
        // ranks 4.5 ± 2.94 (0-based 1 and 8): the 2nd and the 9th of 9; 50 ± 9.8 of 100:
        // 0-based 40 and 60.
        assert_eq!(median_ci95(&v), Some((2.0, 9.0)));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median_ci95(&v), Some((41.0, 61.0)));
    }
}
