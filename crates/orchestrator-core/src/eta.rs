//! Start-time estimates for queued work, the running service-time model (mean and
//! spread) and the probability that a task meets its deadline.

/// Exponentially weighted mean and variance of a duration, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceTime {
    mean_ms: f64,
    var_ms2: f64,
    samples: u64,
}

impl ServiceTime {
    /// `prior_ms` is used until the first observation arrives.
    pub fn new(prior_ms: f64) -> Self {
        Self {
            mean_ms: prior_ms.max(0.0),
            var_ms2: 0.0,
            samples: 0,
        }
    }

    pub fn observe(&mut self, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        self.samples += 1;
        // plain mean for the first few samples, then alpha = 0.2
        let alpha = (1.0 / self.samples as f64).max(0.2);
        let d = ms - self.mean_ms;
        self.mean_ms += alpha * d;
        // exponentially weighted variance (West's update)
        self.var_ms2 = (1.0 - alpha) * (self.var_ms2 + alpha * d * d);
    }

    pub fn mean_ms(&self) -> f64 {
        self.mean_ms
    }

    /// Standard deviation of the observations (0 before two samples).
    pub fn sd_ms(&self) -> f64 {
        self.var_ms2.max(0.0).sqrt()
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Probability that work expected to take `expected_ms` (standard deviation `sd_ms`)
/// is done within `left_ms`, under a normal model. The spread is floored at 10% of the
/// expectation (and 1 ms) so a model with few samples is not falsely certain.
pub fn on_time_probability(expected_ms: f64, sd_ms: f64, left_ms: f64) -> f64 {
    if left_ms <= 0.0 {
        return 0.0;
    }
    let sd = sd_ms.max(0.1 * expected_ms).max(1.0);
    let p = normal_cdf((left_ms - expected_ms) / sd);
    (p * 1000.0).round() / 1000.0
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 erf, |error| < 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    let erf = if x >= 0.0 { erf } else { -erf };
    0.5 * (1.0 + erf)
}

/// Queue position as the client sees it: 0 when a free slot takes the task now,
/// otherwise how many slot releases it waits for.
pub fn queue_position(ahead: usize, free_slots: u32) -> u32 {
    (ahead + 1).saturating_sub(free_slots as usize) as u32
}

/// Predicted milliseconds until a task at `position` starts, given `slots` concurrent
/// slots each releasing after `mean_service_ms` on average.
pub fn predicted_start_ms(position: u32, slots: u32, mean_service_ms: f64) -> u64 {
    if position == 0 || slots == 0 {
        return 0;
    }
    let waves = (position as f64 / slots as f64).ceil();
    (waves * mean_service_ms).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_when_a_slot_is_free() {
        assert_eq!(queue_position(0, 1), 0);
        assert_eq!(queue_position(1, 2), 0);
        assert_eq!(queue_position(2, 2), 1);
        assert_eq!(queue_position(0, 0), 1);
    }

    #[test]
    fn prediction_scales_with_waves() {
        assert_eq!(predicted_start_ms(0, 2, 100.0), 0);
        assert_eq!(predicted_start_ms(1, 2, 100.0), 100);
        assert_eq!(predicted_start_ms(3, 2, 100.0), 200);
    }

    #[test]
    fn on_time_probability_is_high_with_slack_and_low_without() {
        assert!(on_time_probability(100.0, 10.0, 200.0) > 0.99);
        assert!((on_time_probability(100.0, 10.0, 100.0) - 0.5).abs() < 0.01);
        assert!(on_time_probability(100.0, 10.0, 50.0) < 0.01);
        assert_eq!(on_time_probability(100.0, 10.0, 0.0), 0.0);
    }

    #[test]
    fn spread_follows_the_observations() {
        let mut s = ServiceTime::new(0.0);
        for ms in [100.0, 100.0, 100.0] {
            s.observe(ms);
        }
        assert!(s.sd_ms() < 1e-9);
        s.observe(200.0);
        assert!(s.sd_ms() > 10.0);
    }

    #[test]
    fn service_time_tracks_observations() {
        let mut s = ServiceTime::new(1000.0);
        s.observe(100.0);
        assert_eq!(s.mean_ms(), 100.0);
        s.observe(200.0);
        assert_eq!(s.mean_ms(), 150.0);
        s.observe(f64::NAN);
        assert_eq!(s.mean_ms(), 150.0);
    }
}
