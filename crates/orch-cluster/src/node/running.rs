//! The tasks one leader's term runs, by id: the term adds a task when it hands it to
//! this instance's pool and removes it when its end is stored; cancels and live
//! status answers look tasks up here; a term that ends stops what is left.
//!
//! Owns: the set (behind one small lock, never held across an `await`).

use orch_domain::TaskId;
use orch_services::TaskRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One term's running tasks. Cheap to clone; clones share the set.
#[derive(Clone, Default)]
pub(super) struct Running(Arc<Mutex<HashMap<TaskId, Arc<TaskRecord>>>>);

impl Running {
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<TaskRecord>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, rec: Arc<TaskRecord>) {
        self.lock().insert(rec.id, rec);
    }

    pub fn remove(&self, id: TaskId) {
        self.lock().remove(&id);
    }

    pub fn get(&self, id: TaskId) -> Option<Arc<TaskRecord>> {
        self.lock().get(&id).cloned()
    }

    /// Everything left (the term ended).
    pub fn drain(&self) -> Vec<Arc<TaskRecord>> {
        self.lock().drain().map(|(_, r)| r).collect()
    }
}
