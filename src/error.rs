//! The library's error type: every fallible public function returns [`Result`].

/// What went wrong, phrased for the person who can fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A configuration value is impossible (zero sizes, k1 > k2, negative learning rate, …).
    #[error("{0}")]
    Config(String),
    /// A buffer handed to the library has the wrong number of elements.
    #[error("{what}: expected {expected} values, got {got}")]
    Shape {
        /// Which buffer.
        what: String,
        /// The length the configuration implies.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// Values in the data are out of range (a class id ≥ the output size, a negative mask, …).
    #[error("{0}")]
    Data(String),
    /// Bytes or text handed to a parser (a model, checkpoint or data file's contents) are
    /// malformed; [`Error::in_file`] names the file.
    #[error("{0}")]
    Malformed(String),
    /// A model or checkpoint file is malformed, truncated or inconsistent.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it and what to do.
        msg: String,
    },
    /// What was asked for needs more memory than the machine has available.
    #[error("{what} needs about {} but {} of memory are available", human(*needed), human(*available))]
    Memory {
        /// What would have been allocated.
        what: String,
        /// Its estimated size in bytes.
        needed: u64,
        /// The memory available now (MemAvailable), in bytes.
        available: u64,
    },
    /// Data-parallel training failed: a rank stopped answering.
    #[error("{0}")]
    Dist(String),
    /// The ranks of a data-parallel run were started with different settings or data
    /// ([`crate::dist::Group::agree`]); the message names what differs. Every rank gets it.
    #[error("{0}")]
    Disagree(String),
    /// Reading or writing a file failed.
    #[error("{path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        msg: String,
    },
}

impl Error {
    /// The error as it concerns the file `path`: a [`Error::Malformed`] becomes an
    /// [`Error::Format`] naming it; every other error is returned as it is.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Malformed(msg) => Error::Format { path: path.display().to_string(), msg },
            e => e,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), msg: e.to_string() }
    }
}

/// A byte count as MB / GB (or "more than 16 EB" for an overflowed estimate).
fn human(bytes: u64) -> String {
    match bytes {
        u64::MAX => "more than 16 EiB".into(),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns a [`Error::Shape`] unless `got == expected`.
pub(crate) fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got { Ok(()) } else { Err(Error::Shape { what: what.to_string(), expected, got }) }
}
