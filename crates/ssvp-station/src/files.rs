//! Content-addressed files: an image or a bank is stored under the SHA-256 of its bytes, so the
//! same bytes are stored once, a name can never be chosen by a request, and a file is either
//! whole or absent. A file is written to a temporary name in the same directory, flushed to
//! disk, renamed into place and the directory flushed, before the database row that names it
//! is committed: a kill at any moment leaves at most an unreferenced file, never a row that
//! names a partial one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use ssvp_detect::{Error, ErrorKind, Result};

/// The SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is a SHA-256 in lowercase hex (the only names the store reads).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A directory of files named by their SHA-256, fanned out by the first two hex digits.
#[derive(Clone, Debug)]
pub struct ContentStore {
    root: PathBuf,
    suffix: &'static str,
}

pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

impl ContentStore {
    /// The store under `root` (created when missing); files end in `suffix` (e.g. `.bank`).
    pub fn open(root: PathBuf, suffix: &'static str) -> Result<Self> {
        fs::create_dir_all(&root).map_err(|e| io_error("creating", &root, e))?;
        Ok(Self { root, suffix })
    }

    /// Where the file of `sha` lives. `sha` must be a SHA-256 (checked), so no value can point
    /// outside the store.
    pub fn path_of(&self, sha: &str) -> Result<PathBuf> {
        if !is_sha256_hex(sha) {
            return Err(Error::new(
                ErrorKind::Model,
                format!("`{sha}` is not a SHA-256 of the station's store"),
            ));
        }
        Ok(self
            .root
            .join(&sha[..2])
            .join(format!("{sha}{}", self.suffix)))
    }

    /// Stores `bytes` durably and answers their SHA-256. Bytes already stored are not written
    /// again.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let sha = sha256_hex(bytes);
        let path = self.path_of(&sha)?;
        if path.exists() {
            return Ok(sha);
        }
        let dir = path.parent().expect("a content path has a parent");
        fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        // Unique per write: two uploads of the same bytes at once each write their own
        // temporary file, and the second rename replaces the first with the same bytes.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{sha}.{}.{n}.tmp", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("storing", &path, e));
        }
        Ok(sha)
    }

    /// The bytes of `sha`, checked against their name.
    pub fn get(&self, sha: &str) -> Result<Vec<u8>> {
        let path = self.path_of(sha)?;
        let bytes = fs::read(&path).map_err(|e| io_error("reading", &path, e))?;
        if sha256_hex(&bytes) != sha {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{} does not hold the bytes it is named by", path.display()),
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_once_and_reads_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("images"), "").unwrap();
        let a = store.put(b"part one").unwrap();
        assert_eq!(a, sha256_hex(b"part one"));
        assert_eq!(store.put(b"part one").unwrap(), a);
        assert_eq!(store.get(&a).unwrap(), b"part one");
        // A corrupted file is refused, not served.
        fs::write(store.path_of(&a).unwrap(), b"other").unwrap();
        assert_eq!(store.get(&a).unwrap_err().kind(), ErrorKind::Io);
    }

    #[test]
    fn the_same_bytes_stored_at_once_from_many_threads_are_one_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("images"), "").unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let shas: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.put(&bytes).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(shas.iter().all(|s| *s == shas[0]));
        assert_eq!(store.get(&shas[0]).unwrap(), bytes);
        let leftovers = fs::read_dir(store.path_of(&shas[0]).unwrap().parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn names_are_only_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().to_path_buf(), ".bank").unwrap();
        for bad in [
            "../../etc/passwd",
            "",
            "AB",
            &"g".repeat(64),
            &"A".repeat(64),
        ] {
            assert!(store.path_of(bad).is_err(), "{bad}");
        }
    }
}
