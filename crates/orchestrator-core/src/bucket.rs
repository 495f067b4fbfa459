//! A token bucket for per-tenant tokens-per-minute quotas.
//!
//! Admission takes a task's `max_tokens` out of its tenant's bucket and gives back
//! what the task did not generate when it ends. The bucket refills continuously at
//! `per_minute / 60 000` tokens per millisecond up to `per_minute`. Time is passed in
//! (milliseconds on any monotonic clock), so the arithmetic is testable without one.

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    capacity: u64,
    per_ms: f64,
    level: f64,
    at_ms: u64,
}

/// The bucket cannot cover a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short {
    /// Tokens available now.
    pub available: u64,
    /// Milliseconds until enough have refilled (≥ 1).
    pub wait_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens at `now_ms`.
    pub fn per_minute(per_minute: u64, now_ms: u64) -> Self {
        Self {
            capacity: per_minute,
            per_ms: per_minute as f64 / 60_000.0,
            level: per_minute as f64,
            at_ms: now_ms,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.at_ms {
            let dt = (now_ms - self.at_ms) as f64;
            self.level = (self.level + dt * self.per_ms).min(self.capacity as f64);
            self.at_ms = now_ms;
        }
    }

    /// Tokens available at `now_ms` (rounded down).
    pub fn available(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        self.level.floor() as u64
    }

    /// Take `n` tokens, or say how long until they are there. A request above the
    /// capacity can never be covered: callers refuse it before asking.
    pub fn try_take(&mut self, n: u64, now_ms: u64) -> Result<(), Short> {
        self.refill(now_ms);
        let need = n as f64;
        if self.level + 1e-9 >= need {
            self.level -= need;
            return Ok(());
        }
        let wait = if self.per_ms > 0.0 {
            ((need - self.level) / self.per_ms).ceil() as u64
        } else {
            u64::MAX
        };
        Err(Short {
            available: self.level.max(0.0).floor() as u64,
            wait_ms: wait.max(1),
        })
    }

    /// Return `n` unused tokens (never above the capacity).
    pub fn give_back(&mut self, n: u64, now_ms: u64) {
        self.refill(now_ms);
        self.level = (self.level + n as f64).min(self.capacity as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_refuses_past_the_level() {
        let mut b = TokenBucket::per_minute(600, 0);
        assert_eq!(b.try_take(500, 0), Ok(()));
        let short = b.try_take(200, 0).unwrap_err();
        assert_eq!(short.available, 100);
        // 100 tokens missing at 10 tokens/s
        assert_eq!(short.wait_ms, 10_000);
    }

    #[test]
    fn refills_with_time_up_to_capacity() {
        let mut b = TokenBucket::per_minute(600, 0);
        b.try_take(600, 0).unwrap();
        assert_eq!(b.available(1_000), 10);
        assert_eq!(b.available(10 * 60_000), 600);
    }

    #[test]
    fn give_back_refunds_but_never_overfills() {
        let mut b = TokenBucket::per_minute(100, 0);
        b.try_take(80, 0).unwrap();
        b.give_back(50, 0);
        assert_eq!(b.available(0), 70);
        b.give_back(1_000, 0);
        assert_eq!(b.available(0), 100);
    }
}
