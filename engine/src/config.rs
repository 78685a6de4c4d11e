//! The architecture of an MS-CLAM / CLAM-SB network: dimensions and variants.

use crate::error::{Error, Result};

/// Largest input, hidden or attention dimension the format accepts.
pub const MAX_DIM: usize = 1 << 16;
/// Largest number of slide classes the format accepts.
pub const MAX_CLASSES: usize = 256;

/// How the attention logit of a tile is computed from its hidden vector `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// `s = Wa tanh(Va h)` (Ilse et al.'s plain attention).
    Plain,
    /// `s = Wa (tanh(Va h) * sigmoid(Ua h))` (gated attention, CLAM's default).
    Gated,
}

/// Which tile (instance) classifier the network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileClassifierKind {
    /// MS-CLAM: one binary classifier `Linear(H -> 2)`; output 1 is "tumor".
    SingleBinary,
    /// CLAM: one binary classifier per slide class; the tumor class's classifier gives the mask.
    PerClass,
}

/// The CLAM model sizes `(input D, hidden H, attention K)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelSize {
    /// 1024 / 512 / 256, CLAM's "small" (the paper's configuration).
    Small,
    /// 1024 / 512 / 384, CLAM's "big".
    Big,
    /// 512 / 256 / 128, CLAM's "tiny".
    Tiny,
}

impl ModelSize {
    /// The `(D, H, K)` dimensions of this size.
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            ModelSize::Small => (1024, 512, 256),
            ModelSize::Big => (1024, 512, 384),
            ModelSize::Tiny => (512, 256, 128),
        }
    }
}

/// Architecture of a network: everything needed to interpret its weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelConfig {
    /// Tile embedding dimension D.
    pub input_dim: usize,
    /// Hidden dimension H (output of the first fully connected layer).
    pub hidden_dim: usize,
    /// Attention dimension K.
    pub attention_dim: usize,
    /// Plain or gated attention.
    pub attention: AttentionKind,
    /// Number of slide classes C (2 for tumor / normal).
    pub num_classes: usize,
    /// MS-CLAM's single tile classifier or CLAM's per-class classifiers.
    pub tile_classifier: TileClassifierKind,
    /// Index of the "tumor" slide class (and, for per-class classifiers, whose classifier is used).
    pub tumor_class: usize,
    /// Tile probability at or above which a tile is in the tumor mask.
    pub threshold: f32,
}

impl ModelConfig {
    /// MS-CLAM with gated attention, two classes (0 normal, 1 tumor) and threshold 0.5.
    pub fn ms_clam(size: ModelSize) -> Self {
        let (d, h, k) = size.dims();
        ModelConfig {
            input_dim: d,
            hidden_dim: h,
            attention_dim: k,
            attention: AttentionKind::Gated,
            num_classes: 2,
            tile_classifier: TileClassifierKind::SingleBinary,
            tumor_class: 1,
            threshold: 0.5,
        }
    }

    /// The CLAM-SB baseline: like [`ModelConfig::ms_clam`] but with one tile classifier per class.
    pub fn clam_sb(size: ModelSize) -> Self {
        ModelConfig {
            tile_classifier: TileClassifierKind::PerClass,
            ..Self::ms_clam(size)
        }
    }

    /// The same architecture for embeddings of another dimension (e.g. 1536 for foundation models).
    pub fn with_input_dim(self, input_dim: usize) -> Self {
        ModelConfig { input_dim, ..self }
    }

    /// Number of binary tile classifiers stored (1 for MS-CLAM, C for CLAM).
    pub fn num_tile_classifiers(&self) -> usize {
        match self.tile_classifier {
            TileClassifierKind::SingleBinary => 1,
            TileClassifierKind::PerClass => self.num_classes,
        }
    }

    /// Index of the tile classifier whose output 1 is the tumor probability.
    pub fn tumor_tile_classifier(&self) -> usize {
        match self.tile_classifier {
            TileClassifierKind::SingleBinary => 0,
            TileClassifierKind::PerClass => self.tumor_class,
        }
    }

    /// Checks that every field is in range.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("input_dim", self.input_dim),
            ("hidden_dim", self.hidden_dim),
            ("attention_dim", self.attention_dim),
        ] {
            if v == 0 || v > MAX_DIM {
                return Err(Error::invalid_model(format!(
                    "{name} is {v}; it must be between 1 and {MAX_DIM}"
                )));
            }
        }
        if self.num_classes < 2 || self.num_classes > MAX_CLASSES {
            return Err(Error::invalid_model(format!(
                "num_classes is {}; it must be between 2 and {MAX_CLASSES}",
                self.num_classes
            )));
        }
        if self.tumor_class >= self.num_classes {
            return Err(Error::invalid_model(format!(
                "tumor_class {} is not one of the {} classes",
                self.tumor_class, self.num_classes
            )));
        }
        if !(self.threshold.is_finite() && (0.0..=1.0).contains(&self.threshold)) {
            return Err(Error::invalid_model(format!(
                "threshold {} is not a probability in [0, 1]",
                self.threshold
            )));
        }
        Ok(())
    }
}
