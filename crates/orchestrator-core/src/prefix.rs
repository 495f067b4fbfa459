//! Cache-aware placement: route a prompt to the replica that most likely still holds
//! its prefix in KV cache, without session ids, balanced against load.
//!
//! * [`block_hashes`]: a prompt as a chain of hashes of fixed-size byte blocks (each
//!   hash covers everything before it, as llm-d's prefix scorer does), so two prompts
//!   share the first `k` hashes exactly when they share the first `k` blocks.
//! * [`PrefixIndex`]: which replicas recently served each block chain, bounded in
//!   memory (least recently used blocks go first) and cleared per replica when it
//!   restarts, reloads or is erased.
//! * [`choose`]: session affinity first (when its replica can take work), then the
//!   replica with the longest cached prefix unless its load exceeds the least loaded
//!   one's by more than a slack (so one hot prefix cannot pile work on one replica),
//!   else the least loaded. The reason is reported (`session`, `prefix`, `load`).

use crate::placement::{pick_replica, ReplicaLoad};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Bytes per block (about 16 tokens of English text).
pub const BLOCK_BYTES: usize = 64;

/// The chained block hashes of the first `max_blocks` whole blocks of `text`.
pub fn block_hashes(text: &[u8], max_blocks: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity((text.len() / BLOCK_BYTES).min(max_blocks));
    let mut prev = 0u64;
    for block in text.chunks_exact(BLOCK_BYTES).take(max_blocks) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        prev.hash(&mut h);
        block.hash(&mut h);
        prev = h.finish();
        out.push(prev);
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Replicas (by bit) that served this chain.
    mask: u64,
    tick: u64,
}

/// See the module docs. `R` identifies a replica; at most 64 are tracked per index.
#[derive(Debug)]
pub struct PrefixIndex<R> {
    entries: HashMap<u64, Entry>,
    /// (tick, hash) in touch order; stale pairs are skipped and compacted.
    order: VecDeque<(u64, u64)>,
    tick: u64,
    cap: usize,
    bits: HashMap<R, u8>,
}

impl<R: Eq + Hash + Clone> PrefixIndex<R> {
    /// An index of at most `cap` block chains.
    pub fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            tick: 0,
            cap: cap.max(1),
            bits: HashMap::new(),
        }
    }

    /// Block chains held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Approximate bytes held (entries and the touch order), for the memory bound.
    pub fn approx_bytes(&self) -> usize {
        self.entries.capacity() * (8 + std::mem::size_of::<Entry>() + 8)
            + self.order.capacity() * 16
    }

    fn bit(&mut self, r: &R) -> Option<u8> {
        if let Some(b) = self.bits.get(r) {
            return Some(*b);
        }
        let used: u64 = self.bits.values().fold(0, |m, b| m | (1 << b));
        let free = (!used).trailing_zeros();
        (free < 64).then(|| {
            self.bits.insert(r.clone(), free as u8);
            free as u8
        })
    }

    /// Blocks of `hashes` each replica of `replicas` holds as a prefix.
    pub fn matched(&self, hashes: &[u64], replicas: &[R]) -> Vec<usize> {
        let masks: Vec<Option<u64>> = replicas
            .iter()
            .map(|r| self.bits.get(r).map(|b| 1u64 << b))
            .collect();
        let mut out = vec![0usize; replicas.len()];
        let mut alive: u64 = masks.iter().flatten().fold(0, |m, b| m | b);
        for h in hashes {
            let Some(e) = self.entries.get(h) else { break };
            alive &= e.mask;
            if alive == 0 {
                break;
            }
            for (i, m) in masks.iter().enumerate() {
                if m.is_some_and(|m| alive & m != 0) {
                    out[i] += 1;
                }
            }
        }
        out
    }

    /// `replica` served a prompt with these block hashes (it now holds them).
    pub fn record(&mut self, hashes: &[u64], replica: &R) {
        let Some(b) = self.bit(replica) else { return };
        for h in hashes {
            self.tick += 1;
            let tick = self.tick;
            let e = self.entries.entry(*h).or_insert(Entry { mask: 0, tick });
            e.mask |= 1 << b;
            e.tick = tick;
            self.order.push_back((tick, *h));
        }
        self.evict();
    }

    /// Forget everything `replica` held (it restarted, reloaded or was removed).
    pub fn forget(&mut self, replica: &R) {
        let Some(b) = self.bits.remove(replica) else {
            return;
        };
        let bit = 1u64 << b;
        self.entries.retain(|_, e| {
            e.mask &= !bit;
            e.mask != 0
        });
    }

    fn evict(&mut self) {
        while self.entries.len() > self.cap {
            let Some((tick, h)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&h).is_some_and(|e| e.tick == tick) {
                self.entries.remove(&h);
            }
        }
        // touches of entries still held leave stale pairs: keep the order O(entries)
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(t, h)| entries.get(h).is_some_and(|e| e.tick == *t));
        }
    }
}

/// Why a replica was chosen (this module chooses by session, prefix or load).
pub use orch_domain::PlacementReason as Reason;

/// How much cache outweighs load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixPolicy {
    /// Fewer cached blocks than this is no reason to prefer a replica.
    pub min_blocks: usize,
    /// A cached replica is preferred while its load (busy / slots) exceeds the least
    /// loaded one's by at most this much.
    pub load_slack: f64,
}

impl Default for PrefixPolicy {
    fn default() -> Self {
        Self {
            min_blocks: 2,
            load_slack: 0.5,
        }
    }
}

fn load(r: &ReplicaLoad) -> f64 {
    f64::from(r.slots_busy) / f64::from(r.slots_total.max(1))
}

/// Choose a replica (see the module docs); `matched[i]` is replica `i`'s cached
/// prefix in blocks (all zero to place by load only).
pub fn choose(
    loads: &[ReplicaLoad],
    matched: &[usize],
    preferred: Option<usize>,
    policy: PrefixPolicy,
    rotate: usize,
) -> Option<(usize, Reason)> {
    if let Some(p) = preferred {
        if loads.get(p).is_some_and(ReplicaLoad::accepts_work) {
            return Some((p, Reason::Session));
        }
    }
    let open: Vec<usize> = (0..loads.len())
        .filter(|&i| loads[i].accepts_work())
        .collect();
    let least = open
        .iter()
        .map(|&i| load(&loads[i]))
        .fold(f64::INFINITY, f64::min);
    let cached = open
        .iter()
        .copied()
        .filter(|&i| matched.get(i).copied().unwrap_or(0) >= policy.min_blocks.max(1))
        .filter(|&i| load(&loads[i]) <= least + policy.load_slack + 1e-9)
        .max_by(|&a, &b| {
            matched[a]
                .cmp(&matched[b])
                .then(load(&loads[b]).total_cmp(&load(&loads[a])))
        });
    match cached {
        Some(i) => Some((i, Reason::Prefix)),
        None => pick_replica(loads, None, rotate).map(|i| (i, Reason::Load)),
    }
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
    fn shared_prefixes_share_hashes() {
        let a = block_hashes(&[b'x'; 300], 100);
        let mut t = vec![b'x'; 200];
        t.extend_from_slice(&[b'y'; 100]);
        let b = block_hashes(&t, 100);
        assert_eq!(a.len(), 4);
        assert_eq!(a[..3], b[..3]);
        assert_ne!(a[3], b[3]);
    }

    #[test]
    fn matched_counts_the_common_prefix_per_replica() {
        let mut ix = PrefixIndex::new(1000);
        let long = block_hashes(&[b'a'; 640], 100);
        ix.record(&long[..6], &"r0");
        ix.record(&long[..2], &"r1");
        assert_eq!(ix.matched(&long, &["r0", "r1", "r2"]), vec![6, 2, 0]);
        ix.forget(&"r0");
        assert_eq!(ix.matched(&long, &["r0", "r1"]), vec![0, 2]);
    }

    #[test]
    fn prefix_wins_until_load_slack_then_load_wins() {
        let p = PrefixPolicy::default();
        // cached on 0, equally loaded: prefix
        assert_eq!(
            choose(&[r(4, 1), r(4, 1)], &[5, 0], None, p, 0),
            Some((0, Reason::Prefix))
        );
        // cached on 0 but it is 3/4 busy vs 0/4: load wins
        assert_eq!(
            choose(&[r(4, 3), r(4, 0)], &[5, 0], None, p, 0),
            Some((1, Reason::Load))
        );
        // too little cached: load
        assert_eq!(
            choose(&[r(4, 0), r(4, 0)], &[1, 0], None, p, 0).map(|x| x.1),
            Some(Reason::Load)
        );
        // session affinity first
        assert_eq!(
            choose(&[r(4, 0), r(4, 2)], &[5, 0], Some(1), p, 0),
            Some((1, Reason::Session))
        );
        // a full replica is never chosen
        assert_eq!(
            choose(&[r(1, 1), r(1, 0)], &[9, 0], None, p, 0),
            Some((1, Reason::Load))
        );
    }

    #[test]
    fn memory_stays_under_its_bound_with_100k_distinct_prompts() {
        let cap = 50_000;
        let mut ix = PrefixIndex::new(cap);
        for i in 0..100_000u32 {
            let prompt = format!("{i:08} distinct prompt number {i} with some words to fill a few blocks of text, {i}");
            let h = block_hashes(prompt.as_bytes(), 64);
            ix.record(&h, &format!("r{}", i % 3));
        }
        assert!(ix.len() <= cap, "{} entries", ix.len());
        // entries, their map's spare room and the touch order: a few MB at most
        assert!(
            ix.approx_bytes() < 16 * 1024 * 1024,
            "{} bytes",
            ix.approx_bytes()
        );
    }
}
