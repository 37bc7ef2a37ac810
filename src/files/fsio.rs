//! Explicit file IO of the library: atomic writes (temp name, fsync, rename) that replace only
//! regular files, bounded reads of regular files, and the exclusive lock on a run folder.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a
/// partial one: write `.NAME.tmp` beside it, fsync, rename over `path`, fsync the folder.
///
/// Only a new name or an existing regular file is replaced. A symbolic link is written
/// through, on purpose: the file it points to is replaced and the link stays (as `>` in a shell
/// would). A folder, a device, a pipe or a socket is refused with an error naming it (renaming
/// over a device node as root would replace it with a plain file), as is a link to one or a
/// link to nothing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let path = &writable(path)?;
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
    let path = &writable(path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io { path: path.display().to_string(), msg: "not a file name".into() })?;
    Ok(dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id())))
}

/// Finishes an atomic write of `path` from its fully written temp file `tmp`: fsync the temp
/// file, rename it over `path`, fsync the folder. On failure the temp file is removed.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    let path = &match writable(path) {
        Ok(p) => p,
        Err(e) => {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
    };
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

/// The path an atomic write of `path` replaces: `path` itself when it is new or a regular file,
/// the file a symbolic link points to, or an error naming what is there instead.
pub fn writable(path: &Path) -> Result<PathBuf> {
    let refuse = |what: &str| Error::Io {
        path: path.display().to_string(),
        msg: format!("{what}: bptt writes only regular files, and will not replace it; choose another file name"),
    };
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(Error::io(path, e)),
        Ok(m) => m,
    };
    if meta.is_file() {
        return Ok(path.to_path_buf());
    }
    if meta.is_dir() {
        return Err(refuse("is a folder"));
    }
    if !meta.file_type().is_symlink() {
        return Err(refuse("is a device, pipe or socket, not a regular file"));
    }
    match fs::canonicalize(path) {
        Ok(target) if fs::metadata(&target).is_ok_and(|m| m.is_file()) => Ok(target),
        Ok(target) => Err(refuse(&format!("is a link to {}, which is not a regular file", target.display()))),
        Err(_) => Err(refuse("is a link to nothing (or a loop of links)")),
    }
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
/// stale and taken over; one held on another host can be taken over on purpose
/// ([`RunLock::take_over`], `--force-unlock`). Dropping the claim removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Claims `dir` (which must exist) or says who holds it and how to take it over.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        Self::claim(dir, false)
    }

    /// Claims `dir` even when its lock names a process on another host (a run whose machine,
    /// container or pod is gone: this host cannot tell whether it still runs). A lock held by a
    /// live process on this host is still refused: two writers would corrupt the run.
    pub fn take_over(dir: &Path) -> Result<RunLock> {
        Self::claim(dir, true)
    }

    fn claim(dir: &Path, force: bool) -> Result<RunLock> {
        let path = dir.join("lock");
        let me = format!("{} {}\n", std::process::id(), host());
        let held = |msg: String| Err(Error::Io { path: dir.display().to_string(), msg });
        for _ in 0..3 {
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io(&path, e))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Bounded, and only a regular file: a lock that is a FIFO or a link to a
                    // device is not ours to read (it would hang or grow without end).
                    let owner = match read_bounded(&path, 4096) {
                        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        Err(e) => {
                            return held(format!(
                                "has a lock file that bptt did not write ({e}); remove {} by hand if no run uses \
                                 the folder",
                                path.display()
                            ));
                        }
                    };
                    let mut words = owner.split_whitespace();
                    let (pid, owner_host) = (words.next().and_then(|p| p.parse::<u32>().ok()), words.next());
                    match (pid, owner_host) {
                        (Some(pid), Some(h)) if h == host() && running(pid) => {
                            let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                            let name = name.trim();
                            let what = if name.is_empty() { String::new() } else { format!(" ({name})") };
                            return held(format!(
                                "is in use by process {pid}{what} on this host (lock file {}): wait for it to \
                                 finish or stop it, or choose another `out` folder",
                                path.display()
                            ));
                        }
                        (Some(pid), Some(h)) if h != host() && !force => {
                            return held(format!(
                                "is locked by process {pid} on host {h} (lock file {}): if that run is gone (its \
                                 machine or container was removed), take the folder over with `force_unlock`; \
                                 otherwise wait for it or choose another `out` folder",
                                path.display()
                            ));
                        }
                        // Stale (this host, process gone), half-written by a process killed at
                        // once, or another host's taken over on purpose.
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
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
    decode_text(bytes).map_err(|e| e.in_file(path))
}

/// Checks and decodes the bytes of a text file: non-empty, UTF-8, no NUL (binary) bytes.
pub fn decode_text(bytes: Vec<u8>) -> Result<String> {
    text_of(bytes).map_err(Error::Malformed)
}

fn text_of(bytes: Vec<u8>) -> std::result::Result<String, String> {
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
