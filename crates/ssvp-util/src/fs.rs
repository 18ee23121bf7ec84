//! File writes that never leave a half-written file in place of a good one.
//!
//! Every result file of ssvp (reports, run-directory state, feature-cache entries, maps) is
//! written to a temporary file in the target's own directory and renamed over the target: a
//! rename within one file system is atomic, so a reader (or a process killed mid-write) sees the
//! old file or the new one, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary files of concurrent writers within one process (threads of a
/// server, a parallel cache warm-up); the process id distinguishes processes.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary sibling `.<name>.<pid>.<n>.tmp` of `path`, in the same directory so that the
/// final rename never crosses file systems.
pub fn temp_sibling(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent_dir(path).join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically, creating missing parent folders. The data is flushed to
/// disk before the rename, so a crash after this returns cannot leave an empty file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Runs `write(tmp)` to produce the file at a temporary path, then renames it to `path`
/// (creating missing parent folders first). On any error the temporary file is removed and the
/// previous `path`, if any, is untouched.
///
/// The file gets the permissions of a newly created file (on Unix `0666` less the umask, so
/// `0644` usually), whatever `write` created it with: writers that go through a private
/// temporary file of their own (safetensors' `serialize_to_file`, `0600`) leave results that
/// the rest of a team can read, like every other output.
pub fn write_atomic_with<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    std::fs::create_dir_all(parent_dir(path))?;
    let tmp = temp_sibling(path)?;
    let result = write(&tmp)
        .and_then(|()| new_file_permissions(&tmp).map_err(E::from))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(E::from));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Gives `file` the permission bits a newly created file gets (`0666` less the umask).
#[cfg(unix)]
fn new_file_permissions(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let wanted = 0o666 & !umask();
    let mode = std::fs::metadata(file)?.permissions().mode() & 0o777;
    if mode != wanted {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(wanted))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn new_file_permissions(_file: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The process's umask, read once: from `/proc/self/status` on Linux (reading it through
/// `umask(2)` would set it, racing with threads that create files meanwhile), else the usual
/// `022`.
#[cfg(unix)]
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_creates_parents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/report.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.json")]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"good").unwrap();
        let err = write_atomic_with(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A writer that makes a private file (as safetensors' own temporary file is) still leaves
    /// a result with the mode of a plain new file: 0644 under the usual umask.
    #[cfg(unix)]
    #[test]
    fn results_get_the_mode_of_a_new_file() {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.json");
        std::fs::write(&plain, b"{}").unwrap();
        let path = dir.path().join("bank.safetensors");
        write_atomic_with(&path, |tmp| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)?;
            f.write_all(b"tensors")
        })
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
        assert_eq!(mode(&path), 0o666 & !umask());
        // And the same through write_atomic.
        write_atomic(&plain, b"[]").unwrap();
        assert_eq!(mode(&plain), 0o666 & !umask());
    }

    #[test]
    fn a_directory_is_not_a_file_path() {
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
