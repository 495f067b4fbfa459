//! What one connection has proven: the accept loop (the binary) gives each connection
//! a [`ConnAuth`] as a request extension, and the auth layer marks it authenticated
//! the first time a request on it passes a key check. The accept loop counts
//! connections that have not (per peer address and in all, separately from the
//! authenticated ones), so clients without a key cannot hold every connection slot.
//!
//! Owns: the flag and the one-shot hook the accept loop runs when it flips.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Hook = Box<dyn FnOnce() + Send>;

/// One connection's authentication state (shared by its requests).
#[derive(Clone)]
pub struct ConnAuth(Arc<Inner>);

struct Inner {
    authenticated: AtomicBool,
    on_authenticated: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for ConnAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnAuth")
            .field("authenticated", &self.is_authenticated())
            .finish()
    }
}

impl ConnAuth {
    /// A new connection; `on_authenticated` runs once, when a request proves a key.
    pub fn new(on_authenticated: impl FnOnce() + Send + 'static) -> Self {
        Self(Arc::new(Inner {
            authenticated: AtomicBool::new(false),
            on_authenticated: Mutex::new(Some(Box::new(on_authenticated))),
        }))
    }

    pub fn is_authenticated(&self) -> bool {
        self.0.authenticated.load(Ordering::Acquire)
    }

    /// A request on this connection passed a key check (or needed one on a keyless
    /// server). Runs the hook the first time.
    pub fn authenticated(&self) {
        if self.0.authenticated.swap(true, Ordering::AcqRel) {
            return;
        }
        let hook = self
            .0
            .on_authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = hook {
            h();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_hook_runs_once() {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let c = ConnAuth::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!c.is_authenticated());
        c.clone().authenticated();
        c.authenticated();
        assert!(c.is_authenticated());
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
