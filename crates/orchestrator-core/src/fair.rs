//! Fair sharing inside a priority class: which flow (tenant) is served next.
//!
//! A lane tags every task when it arrives and always serves the flow whose head has
//! the smallest start tag. The tag function is the policy ([`TagPolicy`]):
//!
//! * [`StartTimeFair`] — start-time fair queuing (Goyal et al., SFQ): a task of flow
//!   `f` with cost `c` gets `S = max(V, F_f)`, `F_f := S + c / w_f`, where `V` is the
//!   start tag of the task served last. Backlogged flows receive service in
//!   proportion to their weights: for any two of them, the normalised service
//!   `W_i / w_i` and `W_j / w_j` differ by at most `c_max,i / w_i + c_max,j / w_j`,
//!   and a task arriving at an idle flow is served after at most one task of each
//!   other flow. Idle time earns no credit.
//! * [`ArrivalOrder`] — first come, first served (the tag is the arrival number);
//!   fairness off.
//!
//! Tags are fixed point (`TAG_ONE` per unit of cost at weight 1).

/// One unit of cost at weight 1, in tag units.
pub const TAG_ONE: u64 = 1 << 16;

/// What a lane knows about the flow a new task joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagInput {
    /// The lane's virtual time (start tag of the task served last).
    pub vtime: u64,
    /// Finish tag of the flow's previous task (0 for a new flow).
    pub last_finish: u64,
    /// Arrival number of the task in its lane.
    pub arrival: u64,
    /// Expected cost (tokens), ≥ 1.
    pub cost: u64,
    /// Flow weight, ≥ 1.
    pub weight: u32,
}

/// The start and finish tags of a new task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tags {
    pub start: u64,
    pub finish: u64,
}

/// A fairness policy: how a new task is tagged. The lane serves the smallest start tag.
pub trait TagPolicy {
    fn tag(&self, input: TagInput) -> Tags;
}

/// Start-time fair queuing across flows, weighted. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimeFair;

impl TagPolicy for StartTimeFair {
    fn tag(&self, i: TagInput) -> Tags {
        let start = i.vtime.max(i.last_finish);
        let step = i.cost.max(1).saturating_mul(TAG_ONE) / u64::from(i.weight.max(1));
        Tags {
            start,
            finish: start.saturating_add(step.max(1)),
        }
    }
}

/// First come, first served: no fairness across flows.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArrivalOrder;

impl TagPolicy for ArrivalOrder {
    fn tag(&self, i: TagInput) -> Tags {
        Tags {
            start: i.arrival,
            finish: i.arrival,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(vtime: u64, last_finish: u64, cost: u64, weight: u32) -> TagInput {
        TagInput {
            vtime,
            last_finish,
            arrival: 7,
            cost,
            weight,
        }
    }

    #[test]
    fn sfq_starts_at_virtual_time_or_after_the_flows_last_task() {
        let p = StartTimeFair;
        assert_eq!(p.tag(input(100, 0, 1, 1)).start, 100);
        assert_eq!(p.tag(input(100, 500, 1, 1)).start, 500);
    }

    #[test]
    fn sfq_finish_grows_with_cost_and_shrinks_with_weight() {
        let p = StartTimeFair;
        let a = p.tag(input(0, 0, 10, 1));
        let b = p.tag(input(0, 0, 10, 5));
        assert_eq!(a.finish, 10 * TAG_ONE);
        assert_eq!(b.finish, 2 * TAG_ONE);
    }

    #[test]
    fn arrival_order_tags_by_arrival() {
        assert_eq!(ArrivalOrder.tag(input(100, 500, 3, 2)).start, 7);
    }
}
