//! Errors of the ONNX paths; each names the file or what did not match.

/// Convenience alias.
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;

/// What can go wrong loading or running an ONNX tile encoder.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The encoder file could not be loaded or prepared by tract.
    #[error("{path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What tract said.
        reason: String,
    },
    /// The encoder's embeddings have another dimension than the model's input.
    #[error("the encoder gives {encoder}-dimensional embeddings; the model expects {model}")]
    Dimension {
        /// The encoder's output dimension.
        encoder: usize,
        /// The model's input dimension.
        model: usize,
    },
    /// The encoder is another embedder than the one the model was trained on.
    #[error("{0}")]
    Mismatch(String),
    /// Bad arguments (buffer sizes).
    #[error("{0}")]
    InvalidArgument(String),
    /// tract failed while running the encoder.
    #[error("running the encoder: {0}")]
    Run(String),
    /// The engine refused the embeddings.
    #[error(transparent)]
    Engine(#[from] msclam_engine::Error),
}
