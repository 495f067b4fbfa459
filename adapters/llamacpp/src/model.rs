//! Model files and their identity: `sha256:<hex>` of the GGUF, computed once per file
//! and cached in a sidecar (`<file>.sha256`, keyed by size and mtime).

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {0} not found")]
    Missing(PathBuf),
    #[error("model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {0} is not a GGUF file")]
    NotGguf(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Check that `path` exists and starts with the GGUF magic.
pub fn check_gguf(path: &Path) -> Result<(), ModelError> {
    if !path.is_file() {
        return Err(ModelError::Missing(path.to_path_buf()));
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(io(path))?;
    if &magic != b"GGUF" {
        return Err(ModelError::NotGguf(path.to_path_buf()));
    }
    Ok(())
}

/// `sha256:<hex>` of the file, from the sidecar cache when it is still valid.
pub fn digest(path: &Path) -> Result<String, ModelError> {
    check_gguf(path)?;
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let key = format!("{} {}", meta.len(), mtime);
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".sha256");
    let sidecar = PathBuf::from(sidecar);
    if let Ok(text) = std::fs::read_to_string(&sidecar) {
        if let Some((k, d)) = text.trim().rsplit_once(' ') {
            if k == key && d.len() == 64 {
                return Ok(format!("sha256:{d}"));
            }
        }
    }
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    // best effort: an unwritable model directory only costs a re-hash next time
    let _ = std::fs::write(&sidecar, format!("{key} {hex}\n"));
    Ok(format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_caches() {
        let dir = std::env::temp_dir().join(format!("orch-model-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.gguf");
        std::fs::write(&p, b"GGUF rest of file").unwrap();
        let d1 = digest(&p).unwrap();
        assert!(d1.starts_with("sha256:") && d1.len() == 71);
        assert!(dir.join("m.gguf.sha256").exists());
        assert_eq!(digest(&p).unwrap(), d1);
        std::fs::write(dir.join("bad.gguf"), b"nope").unwrap();
        assert!(matches!(
            digest(&dir.join("bad.gguf")),
            Err(ModelError::NotGguf(_))
        ));
        assert!(matches!(
            digest(&dir.join("none.gguf")),
            Err(ModelError::Missing(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
