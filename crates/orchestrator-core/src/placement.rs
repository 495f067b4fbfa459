//! Replica placement over a snapshot: least-loaded ready replica, with session
//! affinity when the preferred replica has a free slot.

/// What placement needs to know about one replica at decision time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLoad {
    pub ready: bool,
    pub draining: bool,
    pub slots_total: u32,
    pub slots_busy: u32,
}

impl ReplicaLoad {
    pub fn free(&self) -> u32 {
        self.slots_total.saturating_sub(self.slots_busy)
    }

    pub fn accepts_work(&self) -> bool {
        self.ready && !self.draining && self.free() > 0
    }
}

/// Pick a replica index: the `preferred` one (session affinity) when it can take
/// work, else the one with the most free slots; ties go to the lowest busy count,
/// then to the lowest index after `rotate` (spreads ties across calls).
pub fn pick_replica(
    replicas: &[ReplicaLoad],
    preferred: Option<usize>,
    rotate: usize,
) -> Option<usize> {
    if let Some(p) = preferred {
        if replicas.get(p).is_some_and(ReplicaLoad::accepts_work) {
            return Some(p);
        }
    }
    let n = replicas.len();
    if n == 0 {
        return None;
    }
    (0..n)
        .map(|k| (k + rotate) % n)
        .filter(|&i| replicas[i].accepts_work())
        .max_by(|&a, &b| {
            let (ra, rb) = (&replicas[a], &replicas[b]);
            ra.free()
                .cmp(&rb.free())
                .then(rb.slots_busy.cmp(&ra.slots_busy))
                // max_by keeps the last of equals: reverse so the first in rotation wins
                .then(std::cmp::Ordering::Greater)
        })
}

/// Free slots across replicas that accept work.
pub fn free_slots(replicas: &[ReplicaLoad]) -> u32 {
    replicas
        .iter()
        .filter(|r| r.ready && !r.draining)
        .map(ReplicaLoad::free)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(total: u32, busy: u32) -> ReplicaLoad {
        ReplicaLoad {
            ready: true,
            draining: false,
            slots_total: total,
            slots_busy: busy,
        }
    }

    #[test]
    fn picks_least_loaded() {
        assert_eq!(pick_replica(&[r(2, 2), r(2, 1), r(2, 0)], None, 0), Some(2));
    }

    #[test]
    fn skips_unready_and_draining() {
        let mut a = r(2, 0);
        a.ready = false;
        let mut b = r(2, 0);
        b.draining = true;
        assert_eq!(pick_replica(&[a, b, r(2, 1)], None, 0), Some(2));
        assert_eq!(pick_replica(&[r(1, 1)], None, 0), None);
    }

    #[test]
    fn affinity_wins_when_free() {
        assert_eq!(pick_replica(&[r(2, 0), r(2, 1)], Some(1), 0), Some(1));
        assert_eq!(pick_replica(&[r(2, 0), r(2, 2)], Some(1), 0), Some(0));
    }

    #[test]
    fn ties_rotate() {
        let reps = [r(2, 0), r(2, 0), r(2, 0)];
        assert_eq!(pick_replica(&reps, None, 0), Some(0));
        assert_eq!(pick_replica(&reps, None, 1), Some(1));
        assert_eq!(pick_replica(&reps, None, 2), Some(2));
    }
}
