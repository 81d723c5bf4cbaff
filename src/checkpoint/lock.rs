//! [`RunLock`]: exclusive use of a run directory by one process, as an OS file lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::CheckpointError;
use super::format::LOCK_FILE;
use super::meta::io;

/// Exclusive use of a run directory by this process, released when dropped or when the
/// process ends in any way (a crash or `SIGKILL` included).
///
/// The lock is an exclusive OS lock (`flock` on Unix, `LockFileEx` on Windows) on the file
/// `run.lock`, held for the lock's lifetime. The file also holds the holder's process id and
/// host name, for the error a second process gets; it is never deleted, so there is no window
/// in which two processes can each believe they hold it, and no liveness guess about process
/// ids (which fails across PID namespaces). File systems without locks (some network
/// mounts) make [`acquire`](Self::acquire) an error rather than an unguarded run.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

impl RunLock {
    /// Takes the lock of `run_dir` (created if missing), or fails at once if another process
    /// holds it.
    ///
    /// # Errors
    /// [`CheckpointError::Locked`] naming the holder, [`CheckpointError::Io`].
    pub fn acquire(run_dir: &Path) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&mut file).take(256).read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(CheckpointError::Locked {
                    run_dir: run_dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(CheckpointError::Io {
                    path,
                    source: std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot lock the run directory ({e}): does this file system support file locks?"
                        ),
                    ),
                });
            }
        }
        let me = format!("pid {} on {}", std::process::id(), host_name());
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()))
            .map_err(io(&path))?;
        Ok(Self { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // The holder's name goes, the file stays (deleting it would let a process lock a file
        // that another is about to replace); closing the file releases the lock.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}
