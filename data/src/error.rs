//! The data layer's error type: every message names the file or the slide.

use std::path::PathBuf;

/// Convenience alias.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What can go wrong reading or writing a cohort's files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A slide's data is unusable.
    #[error("slide {slide}: {reason}")]
    Slide {
        /// The slide.
        slide: String,
        /// What is wrong.
        reason: String,
    },
    /// A table or layout file (dataset CSV, split CSV) is malformed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The engine reported an error (loading a model, scoring a slide).
    #[error(transparent)]
    Engine(#[from] msclam_engine::Error),
}

impl DataError {
    /// A problem with slide `slide`.
    pub fn slide(slide: &str, reason: impl Into<String>) -> Self {
        DataError::Slide {
            slide: slide.to_owned(),
            reason: reason.into(),
        }
    }

    /// A problem with the file at `path`.
    pub fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        DataError::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
