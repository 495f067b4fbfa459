//! Start-time estimates for queued work and the running service-time average.

/// Exponentially weighted mean of task service time, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceTime {
    mean_ms: f64,
    samples: u64,
}

impl ServiceTime {
    /// `prior_ms` is used until the first observation arrives.
    pub fn new(prior_ms: f64) -> Self {
        Self {
            mean_ms: prior_ms.max(0.0),
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
        self.mean_ms += alpha * (ms - self.mean_ms);
    }

    pub fn mean_ms(&self) -> f64 {
        self.mean_ms
    }
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
