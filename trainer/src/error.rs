//! The trainer's error type.

use std::path::PathBuf;

/// Convenience alias.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Everything that can stop training, with a message naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A slide's data is unusable.
    #[error("slide {slide}: {reason}")]
    Data {
        /// The slide.
        slide: String,
        /// What is wrong.
        reason: String,
    },
    /// The cohort will not fit in memory; raised before training starts.
    #[error("the cohort does not fit: {needed_gib:.2} GiB of features needed, {usable_gib:.2} GiB usable on {place}")]
    DoesNotFit {
        /// Bytes needed, in GiB.
        needed_gib: f64,
        /// Bytes usable, in GiB.
        usable_gib: f64,
        /// Which memory, and a hint.
        place: String,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint is unusable.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The engine (model format) reported an error.
    #[error(transparent)]
    Engine(#[from] msclam_engine::Error),
}

impl From<msclam_data::DataError> for TrainError {
    fn from(e: msclam_data::DataError) -> Self {
        use msclam_data::DataError;
        match e {
            DataError::Slide { slide, reason } => TrainError::Data { slide, reason },
            DataError::File { path, reason } => {
                TrainError::Config(format!("{}: {reason}", path.display()))
            }
            DataError::Io { path, source } => TrainError::Io { path, source },
            DataError::Engine(e) => TrainError::Engine(e),
        }
    }
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
