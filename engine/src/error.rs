//! The engine's error type: every way loading a model or scoring a slide can fail.

use std::path::PathBuf;

/// Convenience alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine. Each variant carries enough context for a
/// person to understand what was wrong with the input; none of them is ever a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The bytes are shorter than the model file says it is (or than any model file can be).
    #[error("model file is truncated: expected {expected} bytes, found {actual}")]
    Truncated {
        /// Bytes the file should have.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },

    /// The bytes are longer than the model file says it is.
    #[error("model file has {actual} bytes but its header says {expected}: trailing data")]
    TrailingBytes {
        /// Bytes the header declares.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },

    /// The file does not start with the `.mscl` magic bytes: it is not an MS-CLAM model.
    #[error("not an .mscl model file (wrong magic bytes {found:02x?})")]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },

    /// The file's major format version is not one this engine reads.
    #[error("unsupported .mscl format version {major}.{minor} (this engine reads {supported}.x)")]
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
        /// Major version this engine supports.
        supported: u16,
    },

    /// The integrity checksum does not match: some byte of the file was changed or damaged.
    #[error(
        "model file is corrupted: checksum {computed:#010x} does not match stored {stored:#010x}"
    )]
    ChecksumMismatch {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum computed over the bytes.
        computed: u32,
    },

    /// A tensor uses an element type this engine cannot read yet.
    #[error("tensor {tensor} uses unsupported element type code {dtype}")]
    UnsupportedDtype {
        /// Name of the tensor.
        tensor: &'static str,
        /// The dtype code found.
        dtype: u8,
    },

    /// The model's structure is inconsistent (dimensions, tensor shapes, offsets, metadata).
    #[error("invalid model: {reason}")]
    InvalidModel {
        /// What is inconsistent, in words.
        reason: String,
    },

    /// An embedding buffer's length does not match the model's input dimension.
    #[error(
        "embedding buffer has {len} values, which is not a whole number of {dim}-dim tiles \
         (the model expects {dim} features per tile)"
    )]
    EmbeddingLength {
        /// Number of values given.
        len: usize,
        /// The model's input dimension.
        dim: usize,
    },

    /// Coordinates were given for a different number of tiles than embeddings.
    #[error("{coords} coordinate pairs given for {tiles} tiles")]
    CoordinateCount {
        /// Coordinate pairs given.
        coords: usize,
        /// Tiles in the push.
        tiles: usize,
    },

    /// Some pushes of a slide had coordinates and others had none.
    #[error(
        "coordinates must be given for every push of a slide or for none \
         (this slide {had} coordinates so far)"
    )]
    CoordinatesInconsistent {
        /// "had" or "had no", describing the slide so far.
        had: &'static str,
    },

    /// An embedding contains NaN or infinity. The whole push was rejected.
    #[error("tile {tile} of the push has a non-finite value ({value}) at feature {feature}")]
    NonFiniteInput {
        /// Index of the tile within the push.
        tile: usize,
        /// Feature index within the tile.
        feature: usize,
        /// The offending value.
        value: f32,
    },

    /// The computation overflowed (finite input, but weights × input exceed f32 range).
    #[error("numerical overflow while scoring tile {tile} of the push: result is not finite")]
    NumericalOverflow {
        /// Index of the tile within the push.
        tile: usize,
    },

    /// Pushing these tiles would exceed the session's capacity. The push was rejected.
    #[error(
        "session capacity exceeded: {len} tiles held, {requested} more pushed, capacity {capacity}"
    )]
    CapacityExceeded {
        /// Maximum number of tiles.
        capacity: usize,
        /// Tiles already held.
        len: usize,
        /// Tiles in the rejected push.
        requested: usize,
    },

    /// A slide result was asked for before any tile was pushed.
    #[error(
        "the session holds no tiles yet: push at least one tile before asking for a slide result"
    )]
    EmptySession,

    /// A caller-provided buffer is too small.
    #[error("buffer too small: {needed} {unit} needed, {given} given")]
    BufferTooSmall {
        /// Required size.
        needed: usize,
        /// Given size.
        given: usize,
        /// Unit of the sizes ("bytes", "tiles").
        unit: &'static str,
    },

    /// An array's memory layout is not one the engine reads in place.
    #[error("unsupported array layout: {reason}")]
    UnsupportedLayout {
        /// What is expected.
        reason: &'static str,
    },

    /// A configuration or argument is out of range.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong, in words.
        reason: String,
    },
}

impl Error {
    pub(crate) fn invalid_model(reason: impl Into<String>) -> Self {
        Error::InvalidModel {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_argument(reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            reason: reason.into(),
        }
    }
}
