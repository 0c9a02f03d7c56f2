//! The library's typed errors: every failure names the file, key or module path it concerns.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    #[error("{path}: key `{key}`: {msg}")]
    Config {
        path: PathBuf,
        key: String,
        msg: String,
    },

    #[error("{path}: tensor `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },

    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },

    #[error("pattern {pattern} matches no module{hint}")]
    NoMatch { pattern: String, hint: String },

    #[error("{0}")]
    Msg(String),

    /// The run was cancelled (`crate::cancel`): never caught, it ends the run.
    #[error("cancelled")]
    Cancelled,

    #[error("{}", without_backtrace(&.0.to_string()))]
    Candle(#[from] candle_core::Error),
}

/// candle appends a captured backtrace to its messages when RUST_BACKTRACE is set: users get the
/// message only.
pub fn without_backtrace(s: &str) -> String {
    match s.find("\n   0: ") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }

    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            key: key.into(),
            msg: msg.into(),
        }
    }
}

/// `bail!("...")` for the library's error type.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Msg(format!($($arg)*)))
    };
}
