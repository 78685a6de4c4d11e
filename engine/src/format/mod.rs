//! The `.mscl` model file format (specified byte by byte in `docs/FORMAT.md`).
//!
//! This module is the one implementation of the format: [`ModelWriter`] writes it (the trainer
//! and converters use it), [`parse`] reads and validates it (the engine's [`crate::Model`] uses
//! it). All integers are little-endian; every section starts at a multiple of 64 bytes so that
//! weights can be used in place from a memory map.

mod reader;
mod writer;

pub use reader::{parse, ParsedFile, TensorEntry};
pub use writer::ModelWriter;

/// The eight magic bytes every `.mscl` file starts with (`\x89MSCL\r\n\x1a`).
pub const MAGIC: [u8; 8] = [0x89, b'M', b'S', b'C', b'L', b'\r', b'\n', 0x1a];
/// Major version written and read by this engine; files of another major version are rejected.
pub const VERSION_MAJOR: u16 = 1;
/// Newest minor version this engine writes (1: the optional embedding statistics; files
/// without them are written as 1.0); newer minors of the same major are read (unknown tensors
/// and metadata keys are ignored).
pub const VERSION_MINOR: u16 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_BYTES: usize = 128;
/// Size of one tensor table entry in bytes.
pub const TENSOR_ENTRY_BYTES: usize = 64;
/// Alignment of every section (tensor table, metadata, each tensor's data).
pub const ALIGNMENT: usize = 64;
/// Byte range of the checksum field inside the header.
pub const CHECKSUM_RANGE: std::ops::Range<usize> = 24..28;
/// Longest metadata key in bytes.
pub const MAX_KEY_BYTES: usize = 255;
/// Most metadata entries a file may hold.
pub const MAX_METADATA_ENTRIES: usize = 4096;
/// Most tensor table entries a file may have (12 tensors are known today; the rest is room for
/// tensors that newer minor versions add).
pub const MAX_TENSOR_ENTRIES: usize = 64;
/// Longest metadata value in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 24;

/// Well-known metadata keys. Any other UTF-8 key may be stored too.
pub mod keys {
    /// Name of the tile embedder (e.g. `resnet50_trunc`, `uni`).
    pub const EMBEDDER_NAME: &str = "embedder.name";
    /// Embedding dimension the embedder produces (must equal the model's input dim).
    pub const EMBEDDER_DIM: &str = "embedder.dim";
    /// Tile side in pixels.
    pub const TILE_SIZE_PX: &str = "tile.size_px";
    /// Magnification the tiles were cut at (e.g. `20x`).
    pub const TILE_MAGNIFICATION: &str = "tile.magnification";
    /// Free-form training summary (configuration, fold, validation metrics).
    pub const TRAINING_SUMMARY: &str = "training.summary";
    /// Name and version of the tool that wrote the file (set by the writer).
    pub const TOOL_VERSION: &str = "tool.version";
}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16 (widened to f32 at load).
    F16,
    /// bfloat16 (widened to f32 at load).
    Bf16,
    /// Signed 8-bit integers with one f32 scale per row (output): `w = q x scale[row]`. Only
    /// for the three large matrices; run by integer kernels over inputs quantized per tile.
    Int8,
}

impl Dtype {
    /// The code stored in the tensor table.
    pub fn code(self) -> u8 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Bf16 => 2,
            Dtype::Int8 => 3,
        }
    }

    /// The dtype of a stored code, if this engine reads it.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Dtype::F32),
            1 => Some(Dtype::F16),
            2 => Some(Dtype::Bf16),
            3 => Some(Dtype::Int8),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::Int8 => 1,
        }
    }

    /// Whether tensors of this dtype carry per-row f32 scales.
    pub fn has_scales(self) -> bool {
        self == Dtype::Int8
    }

    /// Lower-case name (`f32`, `f16`, `bf16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        }
    }
}

/// How a matrix's elements are ordered in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `rows x cols`, row-major (PyTorch's `Linear.weight`).
    RowMajor,
    /// Column panels of [`crate::kernels::PANEL_WIDTH`] output rows, input-major inside each
    /// panel, zero-padded: the layout the matrix kernels read in place.
    Panel16,
}

impl Layout {
    /// The code stored in the tensor table.
    pub fn code(self) -> u8 {
        match self {
            Layout::RowMajor => 0,
            Layout::Panel16 => 1,
        }
    }

    /// The layout of a stored code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Layout::RowMajor),
            1 => Some(Layout::Panel16),
            _ => None,
        }
    }
}

/// The role of each tensor in the network; the numeric id is what the file stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum TensorId {
    /// First layer weight `W1`, `H x D`.
    FcWeight = 1,
    /// First layer bias, `H`.
    FcBias = 2,
    /// Attention `Va`, `K x H`.
    AttentionAWeight = 3,
    /// Attention `Va` bias, `K`.
    AttentionABias = 4,
    /// Attention gate `Ua`, `K x H` (gated attention only).
    AttentionBWeight = 5,
    /// Attention gate bias, `K` (gated attention only).
    AttentionBBias = 6,
    /// Attention output `Wa`, `1 x K`.
    AttentionCWeight = 7,
    /// Attention output bias, `1`.
    AttentionCBias = 8,
    /// Slide classifier `Wc`, `C x H`.
    ClassifierWeight = 9,
    /// Slide classifier bias, `C`.
    ClassifierBias = 10,
    /// Tile classifiers, `2T x H`.
    TileClassifierWeight = 11,
    /// Tile classifier biases, `2T`.
    TileClassifierBias = 12,
    /// Optional (format 1.1): mean of each embedding dimension over the training tiles, `D`.
    EmbeddingMean = 13,
    /// Optional (format 1.1): 1 / standard deviation of each embedding dimension over the
    /// training tiles, `D`.
    EmbeddingScale = 14,
    /// Optional (format 1.1): the range of an in-distribution tile's distance (its Mahalanobis
    /// distance under a PCA model; [`crate::statistics`]): the 0.1th and 99.9th percentiles
    /// over the training tiles, `2`.
    EmbeddingDistanceRange = 15,
    /// Optional (format 1.1): 16 principal directions of the standardized training
    /// embeddings, in the embeddings' space, dimension-major: `D x 16`.
    EmbeddingComponents = 16,
    /// Optional (format 1.1): per direction `(offset, 1 / variance)`, then `(0, 1 / variance)`
    /// of the rest, `17 x 2`.
    EmbeddingComponentTerms = 17,
}

impl TensorId {
    /// Every id, in file order.
    pub const ALL: [TensorId; 17] = [
        TensorId::FcWeight,
        TensorId::FcBias,
        TensorId::AttentionAWeight,
        TensorId::AttentionABias,
        TensorId::AttentionBWeight,
        TensorId::AttentionBBias,
        TensorId::AttentionCWeight,
        TensorId::AttentionCBias,
        TensorId::ClassifierWeight,
        TensorId::ClassifierBias,
        TensorId::TileClassifierWeight,
        TensorId::TileClassifierBias,
        TensorId::EmbeddingMean,
        TensorId::EmbeddingScale,
        TensorId::EmbeddingDistanceRange,
        TensorId::EmbeddingComponents,
        TensorId::EmbeddingComponentTerms,
    ];

    /// The id of a stored code, if known to this version.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|id| *id as u16 == code)
    }

    /// Position in [`TensorId::ALL`].
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The PyTorch-style name used in messages and in [`crate::ModelWeights::tensors`].
    pub fn name(self) -> &'static str {
        match self {
            TensorId::FcWeight => "fc.weight",
            TensorId::FcBias => "fc.bias",
            TensorId::AttentionAWeight => "attention_a.weight",
            TensorId::AttentionABias => "attention_a.bias",
            TensorId::AttentionBWeight => "attention_b.weight",
            TensorId::AttentionBBias => "attention_b.bias",
            TensorId::AttentionCWeight => "attention_c.weight",
            TensorId::AttentionCBias => "attention_c.bias",
            TensorId::ClassifierWeight => "classifier.weight",
            TensorId::ClassifierBias => "classifier.bias",
            TensorId::TileClassifierWeight => "tile_classifier.weight",
            TensorId::TileClassifierBias => "tile_classifier.bias",
            TensorId::EmbeddingMean => "embedding.mean",
            TensorId::EmbeddingScale => "embedding.scale",
            TensorId::EmbeddingDistanceRange => "embedding.distance_range",
            TensorId::EmbeddingComponents => "embedding.components",
            TensorId::EmbeddingComponentTerms => "embedding.component_terms",
        }
    }

    /// Whether a file may leave this tensor out (the embedding statistics: all or none).
    pub fn is_optional(self) -> bool {
        matches!(
            self,
            TensorId::EmbeddingMean
                | TensorId::EmbeddingScale
                | TensorId::EmbeddingDistanceRange
                | TensorId::EmbeddingComponents
                | TensorId::EmbeddingComponentTerms
        )
    }

    /// Whether this tensor is one of the large matrices stored in [`Layout::Panel16`] by default.
    pub fn is_large_matrix(self) -> bool {
        matches!(
            self,
            TensorId::FcWeight | TensorId::AttentionAWeight | TensorId::AttentionBWeight
        )
    }

    /// The `(rows, cols)` this tensor must have for `config`, or `None` if it must be absent.
    pub fn shape(self, config: &crate::ModelConfig) -> Option<(usize, usize)> {
        let (d, h, k, c) = (
            config.input_dim,
            config.hidden_dim,
            config.attention_dim,
            config.num_classes,
        );
        let t = config.num_tile_classifiers();
        let gated = config.attention == crate::AttentionKind::Gated;
        Some(match self {
            TensorId::FcWeight => (h, d),
            TensorId::FcBias => (h, 1),
            TensorId::AttentionAWeight => (k, h),
            TensorId::AttentionABias => (k, 1),
            TensorId::AttentionBWeight if gated => (k, h),
            TensorId::AttentionBBias if gated => (k, 1),
            TensorId::AttentionBWeight | TensorId::AttentionBBias => return None,
            TensorId::AttentionCWeight => (1, k),
            TensorId::AttentionCBias => (1, 1),
            TensorId::ClassifierWeight => (c, h),
            TensorId::ClassifierBias => (c, 1),
            TensorId::TileClassifierWeight => (2 * t, h),
            TensorId::TileClassifierBias => (2 * t, 1),
            TensorId::EmbeddingMean | TensorId::EmbeddingScale => (d, 1),
            TensorId::EmbeddingDistanceRange => (2, 1),
            TensorId::EmbeddingComponents => (d, crate::statistics::COMPONENTS),
            TensorId::EmbeddingComponentTerms => (crate::statistics::COMPONENTS + 1, 2),
        })
    }
}

/// Number of elements a `rows x cols` tensor occupies in `layout` (panels are zero-padded);
/// `None` if that overflows `usize` (possible on 32-bit targets).
pub fn stored_elements(layout: Layout, rows: usize, cols: usize) -> Option<usize> {
    match layout {
        Layout::RowMajor => rows.checked_mul(cols),
        Layout::Panel16 => crate::kernels::padded_rows(rows).checked_mul(cols),
    }
}

/// CRC-32 (IEEE 802.3 polynomial, as zlib) of `bytes` with the checksum field read as zeros.
/// `bytes` must hold at least the header.
pub fn compute_checksum(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let split = CHECKSUM_RANGE.start.min(bytes.len());
    hasher.update(&bytes[..split]);
    if bytes.len() >= CHECKSUM_RANGE.end {
        hasher.update(&[0u8; 4]);
        hasher.update(&bytes[CHECKSUM_RANGE.end..]);
    }
    hasher.finalize()
}

/// Recomputes and stores the checksum of a file image in place (for tools that patch files).
/// Does nothing if `bytes` is shorter than the header.
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_BYTES {
        let sum = compute_checksum(bytes);
        bytes[CHECKSUM_RANGE].copy_from_slice(&sum.to_le_bytes());
    }
}

pub(crate) fn align_up(offset: usize) -> usize {
    offset.div_ceil(ALIGNMENT) * ALIGNMENT
}
