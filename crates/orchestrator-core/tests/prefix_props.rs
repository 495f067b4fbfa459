//! Property tests of cache-aware placement: the index stays within its bound and
//! remembers what was just recorded; `choose` only picks replicas that can take work,
//! finds one whenever one can, and never lets cache outweigh load by more than the
//! slack.

use orchestrator_core::placement::ReplicaLoad;
use orchestrator_core::prefix::{block_hashes, choose, PrefixIndex, PrefixPolicy, Reason};
use proptest::prelude::*;

fn load() -> impl Strategy<Value = ReplicaLoad> {
    (1u32..5, 0u32..5, any::<bool>(), any::<bool>()).prop_map(|(total, busy, ready, draining)| {
        ReplicaLoad {
            ready,
            draining,
            slots_total: total,
            slots_busy: busy.min(total),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn index_is_bounded_and_remembers_the_latest(
        prompts in prop::collection::vec((prop::collection::vec(0u8..4, 0..3000), 0u8..5), 1..60),
        cap in 1usize..200,
    ) {
        let mut ix = PrefixIndex::new(cap);
        for (p, r) in &prompts {
            let h = block_hashes(p, 32);
            ix.record(&h, r);
            prop_assert!(ix.len() <= cap);
            let m = ix.matched(&h, std::slice::from_ref(r));
            prop_assert!(m[0] <= h.len());
            if h.len() <= cap {
                prop_assert_eq!(m[0], h.len(), "just recorded, within the bound");
            }
        }
    }

    #[test]
    fn choose_respects_work_and_the_slack(
        loads in prop::collection::vec(load(), 0..6),
        matched in prop::collection::vec(0usize..10, 6),
        slack in 0.0f64..1.0,
        rotate in 0usize..6,
    ) {
        let p = PrefixPolicy { min_blocks: 2, load_slack: slack };
        let got = choose(&loads, &matched, None, p, rotate);
        let any = loads.iter().any(ReplicaLoad::accepts_work);
        prop_assert_eq!(got.is_some(), any);
        if let Some((i, why)) = got {
            prop_assert!(loads[i].accepts_work());
            if why == Reason::Prefix {
                let l = |r: &ReplicaLoad| f64::from(r.slots_busy) / f64::from(r.slots_total);
                let least = loads.iter().filter(|r| r.accepts_work()).map(l).fold(f64::INFINITY, f64::min);
                prop_assert!(l(&loads[i]) <= least + slack + 1e-9);
                prop_assert!(matched[i] >= 2);
            }
        }
    }
}
