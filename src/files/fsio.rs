//! Explicit file IO of the library: atomic writes (temp name, fsync, rename), bounded reads of
//! regular files, and the exclusive lock on a run folder.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a
/// partial one: write `.NAME.tmp` beside it, fsync, rename over `path`, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path)?;
    let result = File::create(&tmp).and_then(|mut f| f.write_all(bytes));
    match result {
        Ok(()) => commit(&tmp, path),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

/// The temp name beside `path` that [`write_atomic`] writes first: `.NAME.PID.tmp` (the process
/// id keeps two writers of one name — a plot beside a training run — from sharing it).
pub fn temp_path(path: &Path) -> Result<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io { path: path.display().to_string(), msg: "not a file name".into() })?;
    Ok(dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id())))
}

/// Finishes an atomic write of `path` from its fully written temp file `tmp`: fsync the temp
/// file, rename it over `path`, fsync the folder. On failure the temp file is removed.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let result = (|| {
        File::options().write(true).open(tmp)?.sync_all()?;
        fs::rename(tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(tmp);
        Error::io(path, e)
    })
}

/// Reads a whole regular file of at most `limit` bytes. Devices, pipes and sockets are refused
/// (their reported size is 0 whatever they hold), and the read itself stops after `limit` + 1
/// bytes, so a file that grows or lies about its size cannot exhaust memory.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let too_big = |size: String| Error::Format {
        path: path.display().to_string(),
        msg: format!("file is {size} bytes, more than the {limit} this reader accepts"),
    };
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::Io { path: path.display().to_string(), msg: "is a directory, not a file".into() });
    }
    if !meta.is_file() {
        return Err(Error::Io {
            path: path.display().to_string(),
            msg: "is not a regular file (a device, pipe or socket): save the data to a file first".into(),
        });
    }
    if meta.len() > limit {
        return Err(too_big(meta.len().to_string()));
    }
    let available = crate::kernels::machine::available_memory();
    if meta.len() > available {
        let what = format!("reading {}", path.display());
        return Err(Error::Memory { what, needed: meta.len(), available });
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(format!("over {limit}")));
    }
    Ok(bytes)
}

/// An exclusive claim on a run folder for the life of a process: the file `lock` in it, created
/// only if absent, holding the owner's pid and host. A lock whose process is gone (same host) is
/// stale and taken over. Dropping the claim removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Claims `dir` (which must exist) or says who holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join("lock");
        let me = format!("{} {}\n", std::process::id(), host());
        for _ in 0..3 {
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io(&path, e))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(&path).unwrap_or_default();
                    let mut words = owner.split_whitespace();
                    let (pid, owner_host) = (words.next().and_then(|p| p.parse::<u32>().ok()), words.next());
                    let alive = match (pid, owner_host) {
                        (Some(pid), Some(h)) if h == host() => running(pid),
                        (Some(_), Some(_)) => true, // another host's process: assume it runs
                        _ => false,                 // half-written by a process killed at once
                    };
                    if alive {
                        let who = owner.trim();
                        return Err(Error::Io {
                            path: dir.display().to_string(),
                            msg: format!(
                                "is in use by another bptt process (pid and host: {who}): wait for it to finish or \
                                 choose another --out"
                            ),
                        });
                    }
                    let _ = fs::remove_file(&path); // stale: its process is gone
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::Io { path: path.display().to_string(), msg: "could not be claimed: try again".into() })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// This machine's host name (for run locks), or "localhost".
fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".into())
}

/// Creates a fresh folder `base`, or `base-2`, `base-3`, … if taken (by another run started in
/// the same second); returns the one created.
pub fn create_unique_dir(base: &Path) -> Result<PathBuf> {
    if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    for k in 1..10_000 {
        let dir = if k == 1 { base.to_path_buf() } else { PathBuf::from(format!("{}-{k}", base.display())) };
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::Io { path: base.display().to_string(), msg: "too many run folders of this name".into() })
}

/// Reads a UTF-8 text file; an error names the problem (missing, empty, not UTF-8, binary).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bounded(path, 1 << 32)?;
    decode_text(bytes).map_err(|msg| Error::Format { path: path.display().to_string(), msg })
}

/// Checks and decodes the bytes of a text file: non-empty, UTF-8, no NUL (binary) bytes.
pub fn decode_text(bytes: Vec<u8>) -> std::result::Result<String, String> {
    if bytes.is_empty() {
        return Err("the text file is empty: give a file with some text".into());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (first bad byte at offset {}): convert it to UTF-8 first",
            e.utf8_error().valid_up_to()
        )
    })?;
    if let Some(pos) = text.find('\0') {
        return Err(format!("contains a NUL byte at offset {pos}: this looks like a binary file, not text"));
    }
    Ok(text)
}

/// True if process `pid` of this host runs: it exists and is not a zombie (a killed process
/// whose parent is gone stays a zombie in a container whose first process reaps nothing).
fn running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => Path::new(&format!("/proc/{pid}")).exists(),
    }
}
