//! `deadlines_met_ratio{priority}`: of the tasks with a deadline that ended in the last
//! [`DEADLINE_WINDOW_SECS`], the fraction that completed within it. A sliding window of
//! 10-second buckets, so the gauge (and the alert on it) follows what is happening now
//! and recovers once a bad stretch is over; a priority with no such task in the window
//! has no series (it leaves `/metrics` under the gauges' idle timeout).

use super::{DEADLINES_MET_RATIO, PRIORITIES};
use metrics::gauge;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

pub const DEADLINE_WINDOW_SECS: u64 = 300;
const BUCKET_SECS: u64 = 10;

/// Per priority (interactive, batch): [met, ended].
type Counts = [[u64; 2]; 2];

struct Window {
    epoch: Instant,
    /// (bucket number, counts), oldest first.
    buckets: VecDeque<(u64, Counts)>,
}

static WINDOW: Mutex<Option<Window>> = Mutex::new(None);

impl Window {
    fn bucket_now(&self) -> u64 {
        self.epoch.elapsed().as_secs() / BUCKET_SECS
    }

    fn prune(&mut self) {
        let now = self.bucket_now();
        self.prune_at(now);
    }

    fn prune_at(&mut self, now: u64) {
        let keep = DEADLINE_WINDOW_SECS / BUCKET_SECS;
        while self.buckets.front().is_some_and(|(b, _)| b + keep <= now) {
            self.buckets.pop_front();
        }
    }

    fn totals(&self) -> Counts {
        let mut t = [[0u64; 2]; 2];
        for (_, c) in &self.buckets {
            for (i, [m, n]) in c.iter().enumerate() {
                t[i][0] += m;
                t[i][1] += n;
            }
        }
        t
    }
}

/// A task with a deadline ended: completed within it (`met`) or not.
pub fn deadline_outcome(priority: &str, met: bool) {
    let i = usize::from(priority != "interactive");
    let mut g = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    let w = g.get_or_insert_with(|| Window {
        epoch: Instant::now(),
        buckets: VecDeque::new(),
    });
    let now = w.bucket_now();
    if w.buckets.back().is_none_or(|(b, _)| *b != now) {
        w.buckets.push_back((now, [[0; 2]; 2]));
    }
    if let Some((_, c)) = w.buckets.back_mut() {
        c[i][0] += u64::from(met);
        c[i][1] += 1;
    }
    publish(w);
}

/// Set the gauge for each priority with a task in the window (the gauge sweep calls
/// this every second).
pub fn publish_deadlines() {
    let mut g = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = g.as_mut() {
        publish(w);
    }
}

fn publish(w: &mut Window) {
    w.prune();
    for (i, [met, ended]) in w.totals().iter().enumerate() {
        if *ended > 0 {
            gauge!(DEADLINES_MET_RATIO, "priority" => PRIORITIES[i])
                .set(*met as f64 / *ended as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_recent_outcomes_and_forgets_old_ones() {
        let mut w = Window {
            epoch: Instant::now(),
            buckets: VecDeque::new(),
        };
        let keep = DEADLINE_WINDOW_SECS / BUCKET_SECS;
        // ten misses at the start, then a good stretch a whole window later
        w.buckets.push_back((0, [[0, 10], [0, 0]]));
        w.buckets.push_back((keep + 1, [[3, 4], [1, 1]]));
        w.prune_at(keep - 1);
        assert_eq!(w.totals(), [[3, 14], [1, 1]]);
        w.prune_at(keep + 2);
        assert_eq!(w.totals(), [[3, 4], [1, 1]]);
    }
}
