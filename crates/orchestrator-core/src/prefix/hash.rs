//! A prompt's chained block hashes (keyed per process, so nobody can aim collisions)
//! and the hasher of the index's tables, whose keys are such hashes already.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// Bytes per block (about 64 tokens of English text, the block llm-d scores by).
pub const BLOCK_BYTES: usize = 256;

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xD6E8_FEB8_6659_FD93;

/// The folded 128-bit product of two words (the mixing step of wyhash-style hashes).
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

/// This process's secret hash key (from the OS's randomness via std, drawn once): a
/// prompt's block hashes cannot be predicted, so nobody can aim collisions at the
/// index's tables or another tenant's prefix.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1
    })
}

/// One block's hash, chained on the hash of everything before it. Four lanes take
/// alternate 16-byte pieces (independent multiplies, so the CPU overlaps them; one
/// chain of 16 was bound by the multiply's latency), then fold into one.
fn block_hash(prev: u64, block: &[u8], key: u64) -> u64 {
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let seed = prev ^ key;
    let mut h = [seed, seed ^ K0, seed ^ K1, seed.rotate_left(32)];
    for quad in block.chunks_exact(64) {
        for (lane, pair) in h.iter_mut().zip(quad.chunks_exact(16)) {
            *lane = fold(word(&pair[..8]) ^ *lane ^ K0, word(&pair[8..]) ^ key ^ K1);
        }
    }
    let a = fold(h[0] ^ K1, h[1] ^ key);
    let b = fold(h[2] ^ K0, h[3] ^ key);
    fold(a ^ K1, b ^ K0)
}

/// The chained block hashes of the first `max_blocks` whole blocks of `text` (keyed
/// per process; a few nanoseconds per block).
pub fn block_hashes(text: &[u8], max_blocks: usize) -> Vec<u64> {
    let key = seed();
    let mut out = Vec::with_capacity((text.len() / BLOCK_BYTES).min(max_blocks));
    let mut prev = 0u64;
    for block in text.chunks_exact(BLOCK_BYTES).take(max_blocks) {
        prev = block_hash(prev, block, key);
        out.push(prev);
    }
    out
}

/// Hashes the index's keys, which are already keyed block hashes: one fold.
#[derive(Default, Clone, Copy)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = fold(self.0 ^ u64::from(*b), K0);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = fold(self.0 ^ x, K1);
    }
    fn write_u8(&mut self, x: u8) {
        self.0 = fold(self.0 ^ u64::from(x), K0);
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Keys;

impl BuildHasher for Keys {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(seed())
    }
}
