//! `mock`: a scriptable in-process engine for tests and benchmarks.
//!
//! One [`MockEngine`] is one replica with `slots` concurrent decodes. Its output is a
//! deterministic function of its seed, the request seed and the token index; its pace
//! (`ttft_ms`, `tokens_per_sec`) and its faults (fail before the first token, fail
//! after N tokens, stall after N tokens) are set by [`MockConfig`]. It reports engine
//! `mock` in its properties, so every event and metric it feeds is labelled `mock`.

#[cfg(test)]
use adapter_api::Resume;
use adapter_api::{
    BoxFuture, EngineEnd, EngineEvent, EngineRequest, EventStream, Health, Properties, TokenCount,
    WorkerAdapter, WorkerError,
};
use futures_util::stream;
use orch_domain::{FinishReason, TaskId};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub mod launcher;
pub use launcher::MockLauncher;

pub const ENGINE: &str = "mock";

/// Knobs of one mock replica (also the `[pools.mock]` table of the config file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    pub slots: u32,
    /// Decode pace; 0 means as fast as possible.
    pub tokens_per_sec: f64,
    pub ttft_ms: u64,
    /// Tokens produced before an `eos` when `max_tokens` allows more.
    pub tokens: u32,
    pub fail_before_first_token: bool,
    pub fail_after_tokens: Option<u32>,
    pub stall_after_tokens: Option<u32>,
    pub seed: u64,
    pub ctx_max: u32,
    pub model: String,
    pub engine_version: String,
    /// A KV-cache model: prompt blocks (64 bytes) this replica has not seen recently
    /// cost this many ms each before the first token; seen ones are free and reported
    /// as cached tokens. 0 = no cache model.
    pub prefill_ms_per_block: u64,
    /// Prompt blocks the modelled KV cache holds; a prompt that would not fit empties
    /// it first (cache pressure in tests).
    pub kv_blocks: u32,
    /// The replica's process exits this long after each launch (a crash loop).
    pub crash_after_ms: Option<u64>,
    /// This long after its first launch a replica stops answering anything, health
    /// checks included, like a process under SIGSTOP (a restarted one answers).
    pub hang_after_ms: Option<u64>,
    /// The faults above (and `fail_*`, `stall_after_tokens`) apply only to these
    /// replica ids; absent = to every replica.
    pub faults_only_on: Option<Vec<String>>,
    /// Answer `count_tokens` with [`prompt_tokens`] (one per word, plus one), as an
    /// engine with a tokenizer endpoint does; off (default): it cannot count, as an
    /// engine behind an OpenAI-compatible API.
    pub tokenizer: bool,
    /// How long a count takes (a real engine's tokenizer: ~0.3 s for 256 KiB).
    pub count_ms: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            slots: 2,
            tokens_per_sec: 50.0,
            ttft_ms: 20,
            tokens: 16,
            fail_before_first_token: false,
            fail_after_tokens: None,
            stall_after_tokens: None,
            seed: 0,
            ctx_max: 4096,
            model: "mock-model".into(),
            engine_version: "mock-0.1.0".into(),
            prefill_ms_per_block: 0,
            kv_blocks: KV_BLOCKS,
            crash_after_ms: None,
            hang_after_ms: None,
            faults_only_on: None,
            tokenizer: false,
            count_ms: 0,
        }
    }
}

const WORDS: &[&str] = &[
    "amber", "brook", "cedar", "dawn", "ember", "fern", "glade", "harbor", "iris", "juniper",
    "kestrel", "lumen", "meadow", "north", "opal", "pine", "quill", "river", "stone", "thistle",
    "umber", "vale", "willow", "yarrow",
];

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn word_of(engine_seed: u64, req_seed: i64, i: u32) -> usize {
    let h = splitmix64(engine_seed ^ (req_seed as u64).rotate_left(21) ^ u64::from(i));
    (h % WORDS.len() as u64) as usize
}

/// The text of token `i` for the given engine and request seeds.
pub fn token_text(engine_seed: u64, req_seed: i64, i: u32) -> String {
    format!(" {}", WORDS[word_of(engine_seed, req_seed, i)])
}

/// The mock's id of token `i` (its word's place in the vocabulary, from 1).
pub fn token_id(engine_seed: u64, req_seed: i64, i: u32) -> u32 {
    word_of(engine_seed, req_seed, i) as u32 + 1
}

/// A stand-in digest for the mock model: 64 hex chars derived from the model name.
pub fn mock_digest(model: &str) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in model.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let parts: Vec<String> = (0..4)
        .map(|k| format!("{:016x}", splitmix64(h ^ k)))
        .collect();
    format!("sha256:{}", parts.concat())
}

/// One mock replica.
pub struct MockEngine {
    cfg: MockConfig,
    /// `ALIVE`, `HUNG` (answers nothing) or `DEAD` (its process exited).
    state: Arc<AtomicU8>,
    busy: Arc<AtomicU32>,
    ready: AtomicBool,
    running: Arc<Mutex<HashMap<TaskId, Arc<AtomicBool>>>>,
    /// Prompt blocks in this replica's modelled KV cache (bounded; cleared when full).
    kv: Mutex<std::collections::HashSet<u64>>,
}

const ALIVE: u8 = 0;
const HUNG: u8 = 1;
const DEAD: u8 = 2;

/// The mock's prompt length in tokens: one per whitespace-separated word, plus one
/// (the benchmarks' floor counts a prompt with it too, as an engine reads its prompt
/// whoever sends it).
pub fn prompt_tokens(prompt: &str) -> u32 {
    if !prompt.is_ascii() {
        return prompt.split_whitespace().count() as u32 + 1;
    }
    // the same count over ASCII, eight bytes at a time with plain integer operations
    // (a 256 KB prompt in a few tens of microseconds, so the mock's own work stays out
    // of what benchmarks measure): a word starts where a space is followed by a
    // non-space. Each byte's flag is its high bit; starts are summed per byte lane and
    // the lanes added up before any could overflow.
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let bytes = prompt.as_bytes();
    let (mut words, mut lanes, mut in_lanes) = (0u32, 0u64, 0u32);
    // the word before the first: all spaces
    let mut prev = HIGH;
    let eights = bytes.chunks_exact(8);
    // the last few bytes padded with spaces, which start no word
    let mut tail = [b' '; 8];
    tail[..eights.remainder().len()].copy_from_slice(eights.remainder());
    for w in eights.chain(std::iter::once(&tail[..])) {
        let sp = spaces(u64::from_le_bytes([
            w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
        ]));
        // byte i's flag: byte i - 1 is a space (byte 0: the last of the word before)
        let after_space = (sp << 8) | (prev >> 56);
        lanes += (!sp & after_space & HIGH) >> 7;
        prev = sp;
        in_lanes += 1;
        if in_lanes == 255 {
            words += lane_sum(lanes);
            (lanes, in_lanes) = (0, 0);
        }
    }
    words + lane_sum(lanes) + 1
}

/// The high bit of each of eight ASCII bytes (little-endian in `x`) that is one of
/// `split_whitespace`'s ASCII spaces: space, and tab through carriage return.
fn spaces(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // for a byte under 0x80, adding 0x80 - n sets its high bit exactly when it is >= n
    let at_least = |n: u64| x.wrapping_add((0x80 - n) * ONES) & HIGH;
    (at_least(0x09) & !at_least(0x0e)) | (at_least(0x20) & !at_least(0x21))
}

/// The sum of eight byte lanes.
fn lane_sum(lanes: u64) -> u32 {
    const EVERY_OTHER: u64 = 0x00ff_00ff_00ff_00ff;
    let pairs = (lanes & EVERY_OTHER) + ((lanes >> 8) & EVERY_OTHER);
    (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as u32
}

/// Blocks the modelled KV cache holds before it starts over.
const KV_BLOCKS: u32 = 65_536;

/// Chained hashes of a prompt's whole 64-byte blocks (a block's hash covers all
/// before it).
fn prompt_blocks(prompt: &str) -> Vec<u64> {
    let mut prev = 0xcbf2_9ce4_8422_2325u64;
    prompt
        .as_bytes()
        .chunks_exact(64)
        .map(|b| {
            for x in b {
                prev = (prev ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3);
            }
            prev = splitmix64(prev);
            prev
        })
        .collect()
}

impl MockEngine {
    pub fn new(cfg: MockConfig) -> Self {
        Self {
            cfg,
            state: Arc::new(AtomicU8::new(ALIVE)),
            busy: Arc::new(AtomicU32::new(0)),
            ready: AtomicBool::new(true),
            running: Arc::new(Mutex::new(HashMap::new())),
            kv: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Blocks of `prompt` already cached (leading run), caching the rest.
    /// (blocks served from the cache, blocks computed); `reuse` false (the request's
    /// `cache_prompt`, a client's `kv_hint: cold`) computes every block, as
    /// llama-server does.
    fn prefill(&self, prompt: &str, reuse: bool) -> (u64, u64) {
        let blocks = prompt_blocks(prompt);
        let Ok(mut kv) = self.kv.lock() else {
            return (0, blocks.len() as u64);
        };
        let cached = if reuse {
            blocks.iter().take_while(|b| kv.contains(b)).count() as u64
        } else {
            0
        };
        let new = blocks.iter().filter(|b| !kv.contains(b)).count();
        if kv.len() + new > self.cfg.kv_blocks as usize {
            kv.clear();
        }
        kv.extend(blocks.iter().copied());
        (cached, blocks.len() as u64 - cached)
    }

    pub fn config(&self) -> &MockConfig {
        &self.cfg
    }

    /// Slots currently decoding.
    pub fn busy_slots(&self) -> u32 {
        self.busy.load(Ordering::Acquire)
    }

    /// Stop answering anything (health checks and running streams wait forever).
    pub fn hang(&self) {
        self.state.store(HUNG, Ordering::Release);
    }

    /// The process died: health checks fail and running streams reset.
    pub fn die(&self) {
        self.state.store(DEAD, Ordering::Release);
    }

    /// Make `health` report loading (false) or ready (true).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// Frees the slot and forgets the cancel flag when the stream is dropped.
struct SlotGuard {
    busy: Arc<AtomicU32>,
    running: Arc<Mutex<HashMap<TaskId, Arc<AtomicBool>>>>,
    task: TaskId,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut m) = self.running.lock() {
            m.remove(&self.task);
        }
    }
}

struct Gen {
    cfg: MockConfig,
    state: Arc<AtomicU8>,
    req: EngineRequest,
    start: Instant,
    /// Prefill time of the uncached part of the prompt.
    prefill: Duration,
    tokens_cached: Option<u32>,
    /// The prompt's tokens (counted once).
    prompt_n: u32,
    /// The index this stream starts at (a continuation's tokens so far).
    first: u32,
    next: u32,
    total: u32,
    finish: FinishReason,
    canceled: Arc<AtomicBool>,
    done: bool,
    _guard: SlotGuard,
}

impl Gen {
    /// What the engine evaluates before generating: the prompt, and when continuing,
    /// the tokens generated so far.
    fn prompt_tokens(&self) -> u32 {
        self.prompt_n + self.first
    }

    fn due(&self, i: u32) -> Instant {
        let mut d = Duration::from_millis(self.cfg.ttft_ms) + self.prefill;
        if self.cfg.tokens_per_sec > 0.0 {
            d += Duration::from_secs_f64(f64::from(i - self.first) / self.cfg.tokens_per_sec);
        }
        self.start + d
    }

    /// One event. The generator is boxed: the stream moves its state into and out of
    /// this future on every token, so that move is a pointer, not the whole state.
    async fn step(mut self: Box<Self>) -> Option<(Result<EngineEvent, WorkerError>, Box<Self>)> {
        if self.done || self.canceled.load(Ordering::Acquire) {
            return None;
        }
        let i = self.next;
        let due = self.due(i);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        if self.canceled.load(Ordering::Acquire) {
            return None;
        }
        match self.state.load(Ordering::Acquire) {
            HUNG => std::future::pending::<()>().await,
            DEAD => {
                self.done = true;
                let e = WorkerError::Reset("mock: the replica's process exited".into());
                return Some((Err(e), self));
            }
            _ => {}
        }
        if i == 0 && self.cfg.fail_before_first_token {
            self.done = true;
            return Some((
                Err(WorkerError::Reset(
                    "mock: injected failure before first token".into(),
                )),
                self,
            ));
        }
        if self.cfg.fail_after_tokens == Some(i) {
            self.done = true;
            let msg = format!("mock: injected failure after {i} tokens");
            return Some((Err(WorkerError::Reset(msg)), self));
        }
        if self.cfg.stall_after_tokens == Some(i) {
            std::future::pending::<()>().await;
        }
        if i < self.total {
            self.next += 1;
            let text = token_text(self.cfg.seed, self.req.seed, i);
            let prompt_tokens = (i == self.first).then(|| self.prompt_tokens());
            return Some((
                Ok(EngineEvent::Token {
                    text,
                    index: i - self.first,
                    prompt_tokens,
                    ids: vec![token_id(self.cfg.seed, self.req.seed, i)],
                }),
                self,
            ));
        }
        self.done = true;
        let end = EngineEnd {
            tokens_in: self.prompt_tokens(),
            tokens_out: self.total - self.first,
            tokens_cached: self.tokens_cached,
            finish_reason: self.finish,
            decode_time_ms: self.start.elapsed().as_millis() as u64,
            slot: None,
        };
        Some((Ok(EngineEvent::End(end)), self))
    }
}

impl WorkerAdapter for MockEngine {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, WorkerError>> {
        let ready = self.ready.load(Ordering::Acquire);
        let state = self.state.load(Ordering::Acquire);
        Box::pin(async move {
            match state {
                HUNG => std::future::pending::<()>().await,
                DEAD => return Err(WorkerError::Reset("mock: process gone".into())),
                _ => {}
            }
            Ok(if ready {
                Health::Ready
            } else {
                Health::Loading
            })
        })
    }

    fn count_tokens(
        &self,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Option<TokenCount>, WorkerError>> {
        let n = self.cfg.tokenizer.then(|| prompt_tokens(&text));
        let delay = Duration::from_millis(self.cfg.count_ms);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            // a count without ids: the mock has no vocabulary
            Ok(n.map(|n| TokenCount { n, ids: None }))
        })
    }

    /// With the KV model on: the modelled cache's fill (blocks held / capacity);
    /// without it: the fraction of slots decoding (each holds its context).
    fn kv_cache_usage(&self) -> BoxFuture<'_, Result<Option<f64>, WorkerError>> {
        let ratio = if self.cfg.prefill_ms_per_block > 0 {
            self.kv.lock().map_or(0, |kv| kv.len()) as f64 / f64::from(self.cfg.kv_blocks.max(1))
        } else {
            f64::from(self.busy.load(Ordering::Acquire)) / f64::from(self.cfg.slots.max(1))
        };
        Box::pin(async move { Ok(Some(ratio)) })
    }

    fn properties(&self) -> BoxFuture<'_, Result<Properties, WorkerError>> {
        let p = Properties {
            engine: ENGINE.into(),
            engine_version: self.cfg.engine_version.clone(),
            model: self.cfg.model.clone(),
            model_digest: mock_digest(&self.cfg.model),
            model_fingerprint: None,
            slots: self.cfg.slots,
            ctx_max: self.cfg.ctx_max,
        };
        Box::pin(async move { Ok(p) })
    }

    fn submit(&self, mut req: EngineRequest) -> BoxFuture<'_, Result<EventStream, WorkerError>> {
        Box::pin(async move {
            if let Some(chat) = req.chat.take() {
                // the mock's own (fixed, documented) chat template
                req.prompt = mock_chat_template(&chat).into();
            }
            if !self.ready.load(Ordering::Acquire) {
                return Err(WorkerError::Unready("mock: loading".into()));
            }
            let claimed = self
                .busy
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    (b < self.cfg.slots).then_some(b + 1)
                })
                .is_ok();
            if !claimed {
                return Err(WorkerError::Busy);
            }
            let canceled = Arc::new(AtomicBool::new(false));
            if let Ok(mut m) = self.running.lock() {
                m.insert(req.task_id, canceled.clone());
            }
            let guard = SlotGuard {
                busy: self.busy.clone(),
                running: self.running.clone(),
                task: req.task_id,
            };
            // a continuation goes on from its tokens so far, which must be the ones
            // this model generates for the request (the engine's output is its function)
            let first = match &req.resume {
                Some(r) => {
                    let k = r.ids.len() as u32;
                    let ids: Vec<u32> = (0..k)
                        .map(|i| token_id(self.cfg.seed, req.seed, i))
                        .collect();
                    let text: String = (0..k)
                        .map(|i| token_text(self.cfg.seed, req.seed, i))
                        .collect();
                    if ids != r.ids || text != r.text {
                        return Err(WorkerError::Rejected(
                            "mock: the continuation's tokens are not the ones this model generated"
                                .into(),
                        ));
                    }
                    k
                }
                None => 0,
            };
            let (total, finish) = if first.saturating_add(req.max_tokens) <= self.cfg.tokens {
                (first + req.max_tokens, FinishReason::Length)
            } else {
                (self.cfg.tokens.max(first), FinishReason::Eos)
            };
            let prompt_n = prompt_tokens(&req.prompt);
            let (prefill, tokens_cached) = if self.cfg.prefill_ms_per_block > 0 {
                let (cached, fresh) = self.prefill(&req.prompt, req.cache_prompt);
                // the cached share of the prompt's tokens, as its share of the bytes
                let bytes = req.prompt.len().max(1) as u64;
                let tokens = u64::from(prompt_n) * (cached * 64).min(bytes) / bytes;
                (
                    Duration::from_millis(fresh * self.cfg.prefill_ms_per_block),
                    Some(tokens as u32),
                )
            } else {
                (Duration::ZERO, None)
            };
            let gen = Gen {
                cfg: self.cfg.clone(),
                state: self.state.clone(),
                req,
                start: Instant::now(),
                prefill,
                tokens_cached,
                prompt_n,
                first,
                next: first,
                total,
                finish,
                canceled,
                done: false,
                _guard: guard,
            };
            let s: EventStream = Box::pin(stream::unfold(Box::new(gen), Gen::step));
            Ok(s)
        })
    }

    fn continues(&self) -> bool {
        true
    }

    fn cancel(&self, task: TaskId) -> BoxFuture<'_, Result<(), WorkerError>> {
        if let Ok(m) = self.running.lock() {
            if let Some(flag) = m.get(&task) {
                flag.store(true, Ordering::Release);
            }
        }
        Box::pin(async { Ok(()) })
    }
}

/// The mock engine's chat template: `<|role|>\ncontent\n` per message, then
/// `<|assistant|>\n`. (Real engines apply the model's own template.)
pub fn mock_chat_template(chat: &[orch_domain::ChatMessage]) -> String {
    let mut out = String::new();
    for m in chat {
        out.push_str(&format!("<|{}|>\n{}\n", m.role, m.content));
    }
    out.push_str("<|assistant|>\n");
    out
}

#[cfg(test)]
mod tests;
