//! Explicit file IO for the char-LM: atomic writes (temp name, fsync, rename) and bounded reads.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a
/// partial one: write `.NAME.tmp` beside it, fsync, rename over `path`, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io { path: path.display().to_string(), msg: "not a file name".into() })?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Reads a whole file, refusing anything larger than `limit` bytes before reading it.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::Io { path: path.display().to_string(), msg: "is a directory, not a file".into() });
    }
    if meta.len() > limit {
        return Err(Error::Format {
            path: path.display().to_string(),
            msg: format!("file is {} bytes, more than the {} this reader accepts", meta.len(), limit),
        });
    }
    fs::read(path).map_err(|e| Error::io(path, e))
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
