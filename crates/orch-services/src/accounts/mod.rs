//! Accounts: keys made at runtime, the durable usage ledger, and token budgets.
//!
//! Owns: the [`Accounts`] handle (its [`ManagedKeys`], [`Budgets`] and the ledger's
//! sums not yet written) and the one flusher task that writes the ledger. A task's
//! end hands its counts to [`Accounts::record`], which adds them to the sums per
//! (hour, tenant, key, pool, model) under a short lock: the hot path never waits on
//! the database and wakes nothing. The flusher swaps the sums out and writes them in
//! one transaction at least every second, with the keys' last-use times and any
//! revocation the store refused before; a failed write is kept and written with the
//! next. [`Accounts::flush`] writes everything at once (reports and shutdown call
//! it; every caller hears the outcome of a write that covers its records).
//! Never: calls the store on an async thread (always `spawn_blocking`).

pub mod budget;
pub mod calendar;
pub mod keys;
pub mod store;

pub use budget::{BudgetHold, BudgetLimits, Budgets};
pub use keys::{KeyReplica, ManagedKeys};
pub use store::{AccountStore, StoreError, StoredKey, UsageKey, UsageQuery};

use orch_domain::accounts::{UsageCounts, UsageReport, UsageRow};
use orch_domain::OrchError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the ledger is written at least.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

type Pending = HashMap<UsageKey, UsageCounts>;

/// Counts not yet written: tasks' ends add to it under a short lock (no allocation
/// but a new grain's entry, no wake-up); the flusher swaps it out.
#[derive(Default)]
struct Sums(Mutex<Pending>);

impl Sums {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }

    fn merge(&self, batch: Vec<(UsageKey, UsageCounts)>) {
        let mut p = self.lock();
        for (k, c) in batch {
            p.entry(k).or_default().add(&c);
        }
    }
}

/// Keys, ledger and budgets over one store. Cheap to share (`Arc`).
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    keys: Arc<ManagedKeys>,
    budgets: Arc<Budgets>,
    sums: Arc<Sums>,
    /// Asks the flusher to write now (each asker hears the write's outcome).
    flush_tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), StoreError>>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("keys", &self.keys)
            .finish()
    }
}

impl Accounts {
    /// Read the keys and this month's spend from `store` (blocking: call at start)
    /// and start the flusher (needs a tokio runtime).
    pub fn open(store: Arc<dyn AccountStore>) -> Result<Arc<Self>, StoreError> {
        let keys = Arc::new(ManagedKeys::load(store.clone())?);
        let now = calendar::now_ms();
        let month = store.tokens_by_tenant(calendar::month_bounds(now).0)?;
        let today = store.tokens_by_tenant(calendar::day_bounds(now).0)?;
        let budgets = Arc::new(Budgets::starting_at(month, today));
        let sums = Arc::new(Sums::default());
        let (flush_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(store.clone(), keys.clone(), sums.clone(), rx));
        Ok(Arc::new(Self {
            store,
            keys,
            budgets,
            sums,
            flush_tx,
        }))
    }

    pub fn keys(&self) -> &ManagedKeys {
        &self.keys
    }

    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    /// Count a task's use (never waits on the store).
    pub fn record(&self, key: UsageKey, counts: UsageCounts) {
        self.sums.lock().entry(key).or_default().add(&counts);
    }

    /// Write everything recorded so far.
    pub async fn flush(&self) -> Result<(), OrchError> {
        let (tx, rx) = oneshot::channel();
        self.flush_tx
            .send(tx)
            .map_err(|_| OrchError::internal("the usage ledger's flusher is gone"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "usage ledger flush failed");
                Err(OrchError::internal(
                    "the usage ledger could not be written; the server log says why",
                ))
            }
            Err(_) => Err(OrchError::internal("the usage ledger's flusher is gone")),
        }
    }

    /// The ledger for `q`, with everything recorded so far written first.
    pub async fn report(&self, q: UsageQuery) -> Result<UsageReport, OrchError> {
        self.flush().await?;
        let store = self.store.clone();
        let q2 = q.clone();
        let rows = tokio::task::spawn_blocking(move || store.usage(&q2))
            .await
            .map_err(|e| OrchError::internal(format!("usage query: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "usage query failed");
                OrchError::internal("the usage ledger could not be read; the server log says why")
            })?;
        let mut total = UsageCounts::default();
        let rows: Vec<UsageRow> = rows
            .into_iter()
            .map(|(group, counts)| {
                total.add(&counts);
                UsageRow { group, counts }
            })
            .collect();
        Ok(UsageReport {
            from: calendar::rfc3339(q.from_ms),
            to: calendar::rfc3339(q.to_ms),
            group_by: q.group_by,
            tenant: q.tenant,
            rows,
            total,
        })
    }
}

/// Writes the sums every [`FLUSH_INTERVAL`] and whenever asked; ends after a last
/// write when every handle to the accounts is gone.
async fn flusher(
    store: Arc<dyn AccountStore>,
    keys: Arc<ManagedKeys>,
    sums: Arc<Sums>,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), StoreError>>>,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut waiting = Vec::new();
        let last = tokio::select! {
            asked = rx.recv() => match asked {
                Some(done) => {
                    waiting.push(done);
                    // everyone who asked by now hears this write's outcome
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
        };
        let r = write(&store, &keys, &sums).await;
        for w in waiting {
            let _ = w.send(r.clone());
        }
        if last {
            return;
        }
    }
}

/// Write the sums, the keys' last uses and revocations not yet stored; on failure
/// keep the sums for the next write.
async fn write(
    store: &Arc<dyn AccountStore>,
    keys: &Arc<ManagedKeys>,
    sums: &Arc<Sums>,
) -> Result<(), StoreError> {
    let pending = sums.take();
    let touched = keys.take_touched();
    let revokes = keys.take_unstored_revokes();
    if pending.is_empty() && touched.is_empty() && revokes.is_empty() {
        return Ok(());
    }
    let batch: Vec<(UsageKey, UsageCounts)> = pending.into_iter().collect();
    let s = store.clone();
    let k = keys.clone();
    let back = sums.clone();
    let r = tokio::task::spawn_blocking(move || {
        for (fp, at) in revokes {
            if let Err(e) = s.revoke_key(&fp, at) {
                tracing::error!(key = %fp, error = %e, "a revocation is still not stored; retried next second");
                k.revoke_unstored(&fp, at);
            }
        }
        let r = if batch.is_empty() {
            Ok(0)
        } else {
            s.add_usage(&batch).map(|()| batch.len())
        };
        if let Err(e) = &r {
            tracing::error!(error = %e, rows = batch.len(), "usage ledger write failed; kept for the next write");
            back.merge(batch);
        }
        if !touched.is_empty() {
            if let Err(e) = s.touch_keys(&touched) {
                tracing::warn!(error = %e, "could not record when keys were last used");
            }
        }
        r
    })
    .await;
    match r {
        Ok(Ok(rows)) => {
            crate::metrics::ledger_flushed(true, rows);
            Ok(())
        }
        Ok(Err(e)) => {
            crate::metrics::ledger_flushed(false, 0);
            Err(e)
        }
        Err(e) => {
            crate::metrics::ledger_flushed(false, 0);
            Err(StoreError::Failed(format!("ledger writer: {e}")))
        }
    }
}
