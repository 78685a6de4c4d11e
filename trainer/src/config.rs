//! Training configuration: every knob of the method, with the paper's reference values as
//! defaults. Read from a TOML file and/or command-line flags.

use msclam_engine::ModelSize;
use serde::{Deserialize, Serialize};

use crate::data::FeaturePrecision;
use crate::error::{Result, TrainError};
use crate::losses::{AttentionLossMode, ClassLoss};
use crate::model::ModelKind;
use crate::samplers::SamplerKind;

/// CLAM model size, for configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SizeName {
    /// 1024 / 512 / 256.
    Small,
    /// 1024 / 512 / 384.
    Big,
    /// 512 / 256 / 128.
    Tiny,
}

impl From<SizeName> for ModelSize {
    fn from(s: SizeName) -> ModelSize {
        match s {
            SizeName::Small => ModelSize::Small,
            SizeName::Big => ModelSize::Big,
            SizeName::Tiny => ModelSize::Tiny,
        }
    }
}

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// MS-CLAM or the CLAM-SB baseline.
    pub method: ModelKind,
    /// Model size (H and K; D comes from the data).
    pub size: SizeName,
    /// Gated attention (CLAM's default) or plain.
    pub gated: bool,
    /// Dropout 0.25 after the hidden layer and the attention branches.
    pub dropout: bool,
    /// Training epochs.
    pub epochs: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam L2 weight decay.
    pub weight_decay: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2 (0.99 per the paper; PyTorch's default is 0.999).
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Weight of the slide loss; the instance loss gets 1 - bag_weight.
    pub bag_weight: f64,
    /// Weight of the attention loss.
    pub att_weight: f64,
    /// Which attention-loss terms are used.
    pub attention_loss: AttentionLossMode,
    /// Slide-level loss.
    pub bag_loss: ClassLoss,
    /// Instance-level loss.
    pub inst_loss: ClassLoss,
    /// B+: tumor tiles drawn from an annotated slide.
    pub b_plus: usize,
    /// B-: top-attention tiles of an unannotated slide (CLAM's k_sample).
    pub b_minus: usize,
    /// Slide sampler.
    pub sampler: SamplerKind,
    /// EWSamp initial weight W.
    pub ew_weight: f64,
    /// EWSamp decay gamma.
    pub ew_gamma: f64,
    /// Early stopping on the validation slide loss.
    pub early_stopping: bool,
    /// Early stopping patience (epochs of strict worsening).
    pub patience: usize,
    /// Epochs before early stopping may stop.
    pub min_epochs: usize,
    /// Seed of every random choice (initialisation, dropout, sampling).
    pub seed: u64,
    /// CPU threads for libtorch (0: libtorch's default).
    pub threads: usize,
    /// Element type features are kept in.
    pub feature_precision: FeaturePrecision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: ModelKind::MsClam,
            size: SizeName::Small,
            gated: true,
            dropout: true,
            epochs: 90,
            lr: 2e-4,
            weight_decay: 1e-5,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            bag_weight: 0.6,
            att_weight: 1.0,
            attention_loss: AttentionLossMode::Total,
            bag_loss: ClassLoss::Ce,
            inst_loss: ClassLoss::Ce,
            b_plus: 1024,
            b_minus: 8,
            sampler: SamplerKind::Ew,
            ew_weight: 90.0,
            ew_gamma: 0.9,
            early_stopping: false,
            patience: 20,
            min_epochs: 50,
            seed: 1,
            threads: 0,
            feature_precision: FeaturePrecision::F32,
        }
    }
}

impl TrainConfig {
    /// The CLAM-SB baseline's settings: RandSamp, no attention loss, B = 8.
    pub fn clam_sb() -> Self {
        TrainConfig {
            method: ModelKind::ClamSb,
            sampler: SamplerKind::Rand,
            attention_loss: AttentionLossMode::Off,
            bag_weight: 0.7,
            ..TrainConfig::default()
        }
    }

    /// Reads a TOML file (missing keys keep their defaults; unknown keys are errors).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Config(m.to_owned()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr must be positive");
        }
        if !(0.0..=1.0).contains(&self.bag_weight) {
            return bad("bag_weight must be in [0, 1]");
        }
        if !(self.beta1 >= 0.0 && self.beta1 < 1.0 && self.beta2 >= 0.0 && self.beta2 < 1.0) {
            return bad("Adam betas must be in [0, 1)");
        }
        if self.b_minus == 0 || self.b_plus == 0 {
            return bad("b_plus and b_minus must be at least 1");
        }
        if self.ew_weight < 1.0 || !(0.0 < self.ew_gamma && self.ew_gamma <= 1.0) {
            return bad("ew_weight must be >= 1 and ew_gamma in (0, 1]");
        }
        Ok(())
    }
}
