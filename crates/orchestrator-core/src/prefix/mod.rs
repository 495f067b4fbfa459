//! Cache-aware placement: route a prompt to the replica that most likely still holds
//! its prefix in KV cache, without session ids, balanced against load.
//!
//! * [`block_hashes`]: a prompt as a chain of hashes of fixed-size byte blocks (each
//!   hash covers everything before it, as llm-d's prefix scorer does), so two prompts
//!   share the first `k` hashes exactly when they share the first `k` blocks.
//! * [`PrefixIndex`]: which replicas recently served each block chain, bounded in
//!   memory (least recently used blocks go first) and cleared per replica when it
//!   restarts, reloads or is erased. It is observed-precise: when a task ends, what
//!   the engine reported reusing ([`PrefixIndex::observe`]) confirms the prefix, or
//!   shows the engine evicted it, and then the replica loses everything it was given
//!   before the evicted block.
//! * [`choose`]: session affinity first (when its replica can take work), then the
//!   replica with the longest cached prefix unless its load exceeds the least loaded
//!   one's by more than a slack (so one hot prefix cannot pile work on one replica),
//!   else the least loaded. The reason is reported (`session`, `prefix`, `load`).

mod hash;

use hash::Keys;
pub use hash::{block_hashes, BLOCK_BYTES};

use crate::placement::{pick_replica, ReplicaLoad};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The index keeps every one of a prompt's first `DENSE` blocks...
const DENSE: usize = 16;
/// ...and after them every `STRIDE`th: a chained hash stands for its whole prefix, so
/// a match at a kept block is exact, and a long prompt matches to within `STRIDE`
/// blocks (4 KiB) for a sixteenth of the entries (a 128 KiB prefix keeps 47, not 512).
const STRIDE: usize = 16;

/// Whether the index keeps block `i` of a prompt (see [`DENSE`] and [`STRIDE`]).
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than our MSRV (1.85)
pub fn kept(i: usize) -> bool {
    i < DENSE || (i + 1) % STRIDE == 0
}

/// The blocks of `hashes` the index keeps, with their places.
fn kept_blocks(hashes: &[u64]) -> impl Iterator<Item = (usize, &u64)> {
    hashes.iter().enumerate().filter(|(i, _)| kept(*i))
}

/// What an engine reported of one task's prompt, measured against what the index
/// predicted when it placed the task there: see [`PrefixIndex::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The prompt's block hashes as placed.
    pub hashes: Vec<u64>,
    /// When the replica was last given each block the index said it held (index
    /// ticks): as many as it predicted.
    pub prior: Vec<u64>,
}

impl Placed {
    /// Blocks the index said the replica held.
    pub fn predicted(&self) -> usize {
        self.prior.len()
    }
}

/// What an observation taught the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The engine reused at least what was predicted.
    Confirmed,
    /// The engine had dropped part of what was predicted: the replica loses what it
    /// was given before the dropped block (engines evict least recently used first).
    Evicted,
    /// The engine reused a prefix the index did not know of.
    Discovered,
    /// Nothing predicted, nothing reused.
    Nothing,
}

/// See the module docs. `R` identifies a replica; at most 64 are tracked per index.
///
/// Entries are (block hash, replica) pairs with the tick at which the replica was last
/// given the block. Each replica has a floor: its entries older than the floor are
/// known gone (the engine reported evicting something it was given then).
#[derive(Debug)]
pub struct PrefixIndex<R> {
    held: HashMap<(u64, u8), u64, Keys>,
    /// (tick, hash, replica bit) in touch order; stale triples are skipped and compacted.
    order: VecDeque<(u64, u64, u8)>,
    tick: u64,
    cap: usize,
    bits: HashMap<R, u8>,
    floors: [u64; 64],
}

impl<R: Eq + Hash + Clone> PrefixIndex<R> {
    /// An index of at most `cap` (block, replica) entries.
    pub fn new(cap: usize) -> Self {
        Self {
            held: HashMap::with_hasher(Keys),
            order: VecDeque::new(),
            tick: 0,
            cap: cap.max(1),
            bits: HashMap::new(),
            floors: [0; 64],
        }
    }

    /// Entries held (including ones below their replica's floor not yet dropped).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Approximate bytes held (entries and the touch order), for the memory bound.
    pub fn approx_bytes(&self) -> usize {
        self.held.capacity() * (24 + 1) + self.order.capacity() * 24
    }

    fn bit(&mut self, r: &R) -> Option<u8> {
        if let Some(b) = self.bits.get(r) {
            return Some(*b);
        }
        let used: u64 = self.bits.values().fold(0, |m, b| m | (1 << b));
        let free = (!used).trailing_zeros();
        (free < 64).then(|| {
            self.bits.insert(r.clone(), free as u8);
            self.floors[free as usize] = self.tick + 1;
            free as u8
        })
    }

    /// When `bit`'s replica was last given block `h`, if it still holds it.
    fn held_at(&self, h: u64, bit: u8) -> Option<u64> {
        self.held
            .get(&(h, bit))
            .copied()
            .filter(|t| *t >= self.floors[bit as usize])
    }

    /// Blocks of `hashes` each replica of `replicas` holds as a prefix (up to its
    /// last kept block held, see [`kept`]).
    pub fn matched(&self, hashes: &[u64], replicas: &[R]) -> Vec<usize> {
        replicas
            .iter()
            .map(|r| match self.bits.get(r) {
                Some(&b) => self.held_prefix(hashes, b),
                None => 0,
            })
            .collect()
    }

    fn held_prefix(&self, hashes: &[u64], b: u8) -> usize {
        kept_blocks(hashes)
            .take_while(|(_, h)| self.held_at(**h, b).is_some())
            .last()
            .map_or(0, |(i, _)| i + 1)
    }

    /// Place a prompt on `replica`: what the index predicts it holds (`predicted`
    /// blocks, from [`matched`](Self::matched)), then record that it now holds all of
    /// it. The result is what [`observe`](Self::observe) needs when the task ends.
    pub fn place(&mut self, hashes: Vec<u64>, replica: &R, predicted: usize) -> Placed {
        // each block's tick is its own when kept, else the next kept block's (they
        // were given together), even when that one lies past `predicted`
        let prior = match self.bits.get(replica) {
            Some(&b) => {
                let n = predicted.min(hashes.len());
                let mut prior = vec![0; n];
                // from the first kept block at or after the last predicted one
                let top = (n.saturating_sub(1)..hashes.len())
                    .find(|i| kept(*i))
                    .map_or(hashes.len(), |k| k + 1);
                let mut tick = 0;
                for i in (0..top).rev() {
                    if kept(i) {
                        tick = self.held_at(hashes[i], b).unwrap_or(0);
                    }
                    if i < n {
                        prior[i] = tick;
                    }
                }
                prior
            }
            None => Vec::new(),
        };
        self.record(&hashes, replica);
        Placed { hashes, prior }
    }

    /// `replica` served a prompt with these block hashes (it now holds them; the
    /// index keeps the [`kept`] ones).
    pub fn record(&mut self, hashes: &[u64], replica: &R) {
        let Some(b) = self.bit(replica) else { return };
        for (_, h) in kept_blocks(hashes) {
            self.tick += 1;
            self.held.insert((*h, b), self.tick);
            self.order.push_back((self.tick, *h, b));
        }
        self.evict();
    }

    /// Correct the index with what the engine reported when the task `placed` ended
    /// on `replica`: it reused its first `reused` blocks. Blocks it reused are
    /// confirmed (touched again); a shortfall against the prediction means the engine
    /// evicted the first block it did not reuse, and with it (least recently used
    /// first) everything the replica was given before that block: the replica's floor
    /// rises past it. `slack` blocks of shortfall are forgiven (token counts map to
    /// bytes only approximately); a caller that cannot tell an eviction from a busy
    /// slot passes `usize::MAX` (confirm only).
    pub fn observe(
        &mut self,
        placed: &Placed,
        replica: &R,
        reused: usize,
        slack: usize,
    ) -> Learned {
        let Some(&b) = self.bits.get(replica) else {
            return Learned::Nothing;
        };
        let reused = reused.min(placed.hashes.len());
        let mut learned = match (placed.predicted(), reused) {
            (0, 0) => Learned::Nothing,
            (0, _) => Learned::Discovered,
            _ => Learned::Confirmed,
        };
        if reused.saturating_add(slack) < placed.predicted() {
            if let Some(t) = placed.prior.get(reused) {
                let f = &mut self.floors[b as usize];
                *f = (*f).max(t + 1);
                learned = Learned::Evicted;
            }
        }
        // what it reused is what it holds most recently
        self.record(&placed.hashes[..reused], replica);
        learned
    }

    /// Forget everything `replica` held (it restarted, reloaded or was removed).
    pub fn forget(&mut self, replica: &R) {
        let Some(b) = self.bits.remove(replica) else {
            return;
        };
        self.held.retain(|(_, bit), _| *bit != b);
    }

    fn evict(&mut self) {
        while self.held.len() > self.cap {
            let Some((tick, h, b)) = self.order.pop_front() else {
                break;
            };
            if self.held.get(&(h, b)) == Some(&tick) {
                self.held.remove(&(h, b));
            }
        }
        // touches of entries still held leave stale triples: keep the order O(entries)
        if self.order.len() > 2 * self.held.len() + 64 {
            let held = &self.held;
            self.order
                .retain(|(t, h, b)| held.get(&(*h, *b)) == Some(t));
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
        let a = block_hashes(&[b'x'; 4 * BLOCK_BYTES + 44], 100);
        let mut t = vec![b'x'; 3 * BLOCK_BYTES + 8];
        t.extend_from_slice(&[b'y'; BLOCK_BYTES]);
        let b = block_hashes(&t, 100);
        assert_eq!(a.len(), 4);
        assert_eq!(a[..3], b[..3]);
        assert_ne!(a[3], b[3]);
    }

    /// Every byte of a block counts: changing any one of them changes that block's
    /// hash and every one after it, never an earlier one.
    #[test]
    fn every_byte_of_a_block_changes_its_hash() {
        let text: Vec<u8> = (0..3 * BLOCK_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        let base = block_hashes(&text, 10);
        for at in BLOCK_BYTES..2 * BLOCK_BYTES {
            let mut t = text.clone();
            t[at] ^= 1;
            let h = block_hashes(&t, 10);
            assert_eq!(h[0], base[0], "byte {at}");
            assert_ne!(h[1], base[1], "byte {at}");
            assert_ne!(h[2], base[2], "byte {at}");
        }
    }

    #[test]
    fn matched_counts_the_common_prefix_per_replica() {
        let mut ix = PrefixIndex::new(1000);
        let long = block_hashes(&[b'a'; 10 * BLOCK_BYTES], 100);
        ix.record(&long[..6], &"r0");
        ix.record(&long[..2], &"r1");
        assert_eq!(ix.matched(&long, &["r0", "r1", "r2"]), vec![6, 2, 0]);
        ix.forget(&"r0");
        assert_eq!(ix.matched(&long, &["r0", "r1"]), vec![0, 2]);
    }

    /// A long prompt keeps its first 16 blocks and every 16th after them; a prompt
    /// sharing 70 of its 100 blocks matches up to the last kept block they share (64),
    /// and an eviction observed mid-stride still drops what the replica got before.
    #[test]
    fn a_long_prompt_keeps_a_sparse_prefix_exact_at_its_kept_blocks() {
        let mut ix = PrefixIndex::new(1000);
        let prompt = |tail: u8| {
            let mut t = vec![b'a'; 70 * BLOCK_BYTES];
            t.extend_from_slice(&[tail; 30 * BLOCK_BYTES]);
            block_hashes(&t, 1000)
        };
        let (old, a, c) = (
            block_hashes(&[b'o'; 100 * BLOCK_BYTES], 1000),
            prompt(b'b'),
            prompt(b'c'),
        );
        assert_eq!((a.len(), c.len()), (100, 100));
        ix.record(&old, &"r0");
        assert_eq!(ix.len(), 16 + 5, "blocks 0..16, then 31, 47, 63, 79, 95");
        ix.record(&a, &"r0");
        assert_eq!(ix.matched(&old, &["r0"]), vec![96]);
        assert_eq!(ix.matched(&a, &["r0"]), vec![96]);
        assert_eq!(ix.matched(&c, &["r0"]), vec![64]);
        // placed: 64 blocks predicted, but the engine reused only 40
        let placed = ix.place(c.clone(), &"r0", 64);
        assert_eq!(placed.predicted(), 64);
        assert!(placed.prior.iter().all(|t| *t > 0));
        assert_eq!(ix.observe(&placed, &"r0", 40, 2), Learned::Evicted);
        assert_eq!(
            ix.matched(&old, &["r0"]),
            vec![0],
            "given before the evicted block"
        );
        assert_eq!(
            ix.matched(&c, &["r0"]),
            vec![96],
            "it has just computed all of c"
        );
    }

    /// A prediction that ends between kept blocks still gets every block's tick (the
    /// next kept block's), so an eviction observed in that stretch moves the floor.
    #[test]
    fn a_prediction_between_kept_blocks_has_every_prior_tick() {
        let mut ix = PrefixIndex::new(1000);
        let a = block_hashes(&[b'a'; 100 * BLOCK_BYTES], 1000);
        ix.record(&a, &"r0");
        let placed = ix.place(a.clone(), &"r0", 40);
        assert_eq!(placed.predicted(), 40);
        assert!(placed.prior.iter().all(|t| *t > 0), "{:?}", placed.prior);
        assert_eq!(ix.observe(&placed, &"r0", 20, 2), Learned::Evicted);
    }

    fn chain(tag: u8) -> Vec<u64> {
        block_hashes(&[tag; 10 * BLOCK_BYTES], 100)
    }

    #[test]
    fn an_observed_eviction_drops_what_the_replica_got_before_it() {
        let mut ix = PrefixIndex::new(1000);
        let (c, a, b) = (chain(b'c'), chain(b'a'), chain(b'b'));
        ix.record(&c, &"r0");
        ix.record(&a, &"r0");
        ix.record(&b, &"r0");
        ix.record(&c, &"r1");
        let predicted = ix.matched(&a, &["r0"])[0];
        assert_eq!(predicted, 10);
        let placed = ix.place(a.clone(), &"r0", predicted);
        // the engine reused nothing: it had evicted a, and so c given before it
        assert_eq!(ix.observe(&placed, &"r0", 0, 1), Learned::Evicted);
        assert_eq!(
            ix.matched(&c, &["r0", "r1"]),
            vec![0, 10],
            "r0 lost c, r1 keeps it"
        );
        assert_eq!(ix.matched(&b, &["r0"]), vec![10], "b came after a: kept");
        assert_eq!(
            ix.matched(&a, &["r0"]),
            vec![10],
            "it computed a again: held now"
        );
    }

    #[test]
    fn a_hit_confirms_and_an_unknown_hit_is_learned() {
        let mut ix = PrefixIndex::new(1000);
        let a = chain(b'a');
        ix.record(&a, &"r0");
        let placed = ix.place(a.clone(), &"r0", 10);
        assert_eq!(ix.observe(&placed, &"r0", 10, 1), Learned::Confirmed);
        assert_eq!(ix.matched(&a, &["r0"]), vec![10]);
        // a shortfall within the slack is forgiven
        let placed = ix.place(a.clone(), &"r0", 10);
        assert_eq!(ix.observe(&placed, &"r0", 9, 1), Learned::Confirmed);
        assert_eq!(ix.matched(&a, &["r0"]), vec![10]);
        // reused where nothing was predicted
        let b = chain(b'b');
        let placed = ix.place(b.clone(), &"r1", 0);
        assert_eq!(ix.observe(&placed, &"r1", 4, 1), Learned::Discovered);
        let placed = ix.place(chain(b'z'), &"r1", 0);
        assert_eq!(ix.observe(&placed, &"r1", 0, 1), Learned::Nothing);
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
            // three blocks, distinct from the first byte
            let prompt = format!("{i:08} distinct prompt number {i} with some words to fill a few blocks of text, {i}").repeat(10);
            let h = block_hashes(prompt.as_bytes(), 64);
            assert_eq!(h.len(), prompt.len() / BLOCK_BYTES);
            assert!(h.len() >= 3);
            ix.record(&h, &format!("r{}", i % 3));
        }
        assert_eq!(ix.len(), cap, "full, and at its bound");
        assert!(ix.len() <= cap, "{} entries", ix.len());
        // entries, their map's spare room and the touch order: a few MB at most
        assert!(
            ix.approx_bytes() < 16 * 1024 * 1024,
            "{} bytes",
            ix.approx_bytes()
        );
    }
}
