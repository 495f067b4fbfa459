//! Engines left behind by an earlier orchestratord (one that died before its children
//! could follow it, or an old version): every spawned replica has a pid file
//! `<pid_dir>/<owner pid>-<replica>.pid` holding `pid owner-pid binary-path`, removed
//! when it stops. At start, [`reap`] stops each engine a pid file names if its owner is
//! gone (another live orchestratord sharing the cache dir keeps its engines), it is not
//! a child of this process (a second server embedded in the same process keeps the
//! first one's), and the process still runs the same binary (a recycled pid is never
//! killed), and removes the file.

use std::path::{Path, PathBuf};

/// Record a running replica; the path of its pid file.
pub(crate) fn write_pid_file(
    dir: &Path,
    replica_id: &str,
    pid: u32,
    binary: &Path,
) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let owner = std::process::id();
    let f = dir.join(format!("{owner}-{replica_id}.pid"));
    std::fs::write(&f, format!("{pid} {owner} {}\n", binary.display())).ok()?;
    Some(f)
}

/// The executable a live process runs (`/proc/<pid>/exe`), if it runs.
fn exe_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The parent pid of a live process (`/proc/<pid>/stat`, the field after the state).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces and parentheses: read after the last ')'
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Stop engines named by pid files in `dir`; returns the pids stopped.
pub fn reap(dir: &Path) -> Vec<u32> {
    let mut stopped = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return stopped;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "pid") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut parts = text.trim().splitn(3, ' ');
        let pid: Option<u32> = parts.next().and_then(|p| p.parse().ok());
        let owner: Option<u32> = parts.next().and_then(|p| p.parse().ok());
        let binary = parts.next().map(PathBuf::from);
        if owner.is_some_and(|o| o != std::process::id() && exe_of(o).is_some()) {
            continue; // a live orchestratord's engine: not ours to stop
        }
        if pid.is_some_and(|p| parent_of(p) == Some(std::process::id())) {
            // our own child: another server embedded in this process runs it
            continue;
        }
        if let (Some(pid), Some(binary)) = (pid, binary) {
            let same = exe_of(pid).is_some_and(|exe| {
                exe == binary || std::fs::canonicalize(&binary).is_ok_and(|b| b == exe)
            });
            if same {
                // the engine leads its own process group: stop the group
                #[cfg(unix)]
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                tracing::warn!(pid, binary = %binary.display(), pid_file = %path.display(),
                    "stopped an engine left by an earlier orchestratord");
                stopped.push(pid);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_this_process_runs_is_kept_and_a_dead_ones_file_removed() {
        let dir = std::env::temp_dir().join(format!("orch-orphans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let exe = exe_of(child.id()).expect("the child runs");
        let ours = write_pid_file(&dir, "r0", child.id(), &exe).expect("pid file");
        // a file whose engine has exited: nothing to stop, the file goes
        let gone = write_pid_file(&dir, "r1", u32::MAX - 1, &exe).expect("pid file");
        let stopped = reap(&dir);
        let still_running = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        assert!(stopped.is_empty(), "stopped {stopped:?}");
        assert!(still_running, "our own child was left running");
        assert!(ours.exists(), "our child's pid file is kept");
        assert!(!gone.exists(), "a dead engine's file is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
