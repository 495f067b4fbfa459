//! Where a config's account store lives, for the servers tests, benchmarks and
//! embedders start several of in one process.

use super::Config;

impl Config {
    /// The same config with the account store in a fresh directory under the system
    /// temp dir, when it names none: for tests, benchmarks and embedders that start
    /// several servers in one process (the store's lock keeps two out of one dir).
    pub fn with_temp_state(mut self) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if self.server.state_dir.is_none() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "orchestratord-state-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            self.server.state_dir = Some(dir.to_string_lossy().into_owned());
        }
        self
    }
}
