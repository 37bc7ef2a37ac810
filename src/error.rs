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
    /// A model or checkpoint file is malformed, truncated or inconsistent.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it and what to do.
        msg: String,
    },
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
    /// An [`Error::Io`] for `path`.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), msg: e.to_string() }
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns a [`Error::Shape`] unless `got == expected`.
pub(crate) fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got { Ok(()) } else { Err(Error::Shape { what: what.to_string(), expected, got }) }
}
