//! Accounts: keys made at runtime, the durable usage ledger, and token budgets.
//!
//! Owns: the [`Accounts`] handle (its [`ManagedKeys`], [`Budgets`] and the ledger's
//! channel) and the one flusher task that writes the ledger. A task's end hands its
//! counts to [`Accounts::record`], which only sends them down an unbounded channel:
//! the hot path never waits on the database. The flusher sums them per
//! (hour, tenant, key, pool, model) and writes the sums in one transaction at least
//! every second, with the keys' last-use times; a failed write is kept and written
//! with the next batch. [`Accounts::flush`] writes everything at once (reports and
//! shutdown call it).
//! Never: calls the store on an async thread (always `spawn_blocking`).

pub mod budget;
pub mod calendar;
pub mod keys;
pub mod store;

pub use budget::{BudgetHold, BudgetLimits, Budgets};
pub use keys::ManagedKeys;
pub use store::{AccountStore, StoreError, StoredKey, UsageKey, UsageQuery};

use orch_domain::accounts::{UsageCounts, UsageReport, UsageRow};
use orch_domain::OrchError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the ledger is written at least.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

enum Msg {
    Add(UsageKey, UsageCounts),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// Keys, ledger and budgets over one store. Cheap to share (`Arc`).
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    keys: Arc<ManagedKeys>,
    budgets: Arc<Budgets>,
    tx: mpsc::UnboundedSender<Msg>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(store.clone(), keys.clone(), rx));
        Ok(Arc::new(Self {
            store,
            keys,
            budgets,
            tx,
        }))
    }

    pub fn keys(&self) -> &ManagedKeys {
        &self.keys
    }

    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    /// Count a task's use (never waits).
    pub fn record(&self, key: UsageKey, counts: UsageCounts) {
        if self.tx.send(Msg::Add(key, counts)).is_err() {
            tracing::error!("the usage ledger's flusher is gone; a task's usage was not recorded");
        }
    }

    /// Write everything recorded so far.
    pub async fn flush(&self) -> Result<(), OrchError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
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

type Pending = HashMap<UsageKey, UsageCounts>;

async fn flusher(
    store: Arc<dyn AccountStore>,
    keys: Arc<ManagedKeys>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut pending: Pending = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Add(k, c)) => pending.entry(k).or_default().add(&c),
                Some(Msg::Flush(done)) => {
                    // take what is already queued, so a flush covers every record
                    // sent before it
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Msg::Add(k, c) => pending.entry(k).or_default().add(&c),
                            Msg::Flush(other) => { let _ = other.send(Ok(())); }
                        }
                    }
                    let r = write(&store, &keys, &mut pending).await;
                    let _ = done.send(r);
                }
                None => {
                    // every handle is gone: write what is left and stop
                    let _ = write(&store, &keys, &mut pending).await;
                    return;
                }
            },
            _ = tick.tick() => {
                let _ = write(&store, &keys, &mut pending).await;
            }
        }
    }
}

/// Write `pending` and the keys' last uses; on failure keep `pending` for the next
/// write.
async fn write(
    store: &Arc<dyn AccountStore>,
    keys: &Arc<ManagedKeys>,
    pending: &mut Pending,
) -> Result<(), StoreError> {
    let touched = keys.take_touched();
    if pending.is_empty() && touched.is_empty() {
        return Ok(());
    }
    let batch: Vec<(UsageKey, UsageCounts)> = std::mem::take(pending).into_iter().collect();
    let s = store.clone();
    let r = tokio::task::spawn_blocking(move || {
        let r = if batch.is_empty() {
            Ok(())
        } else {
            s.add_usage(&batch)
        };
        let t = if touched.is_empty() {
            Ok(())
        } else {
            s.touch_keys(&touched)
        };
        (r.map(|()| batch.len()).map_err(|e| (e, batch)), t)
    })
    .await;
    match r {
        Ok((Ok(rows), t)) => {
            crate::metrics::ledger_flushed(true, rows);
            if let Err(e) = t {
                tracing::warn!(error = %e, "could not record when keys were last used");
            }
            Ok(())
        }
        Ok((Err((e, batch)), _)) => {
            tracing::error!(error = %e, rows = batch.len(), "usage ledger write failed; kept for the next write");
            crate::metrics::ledger_flushed(false, 0);
            for (k, c) in batch {
                pending.entry(k).or_default().add(&c);
            }
            Err(e)
        }
        Err(e) => {
            crate::metrics::ledger_flushed(false, 0);
            Err(StoreError::Failed(format!("ledger writer: {e}")))
        }
    }
}
