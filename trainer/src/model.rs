//! The network: CLAM-SB with gated or plain attention, MS-CLAM's single tile classifier or
//! CLAM's per-class tile classifiers, Xavier-normal initialisation, switchable dropout 0.25.

use msclam_engine::{AttentionKind, ModelConfig, ModelWeights, TileClassifierKind};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Dropout probability when dropout is on (CLAM's 0.25).
pub const DROPOUT: f64 = 0.25;

/// What a forward pass over one slide (or a pair of slides) gives.
#[derive(Debug)]
pub struct Forward {
    /// Hidden vectors `h`, `N x H`.
    pub hidden: Tensor,
    /// Attention logits, `N`.
    pub attention_logits: Tensor,
}

/// The trainable network.
#[derive(Debug)]
pub struct Network {
    /// Architecture (the engine's description, exported as is).
    pub config: ModelConfig,
    /// Whether dropout is applied in training mode.
    pub dropout: bool,
    fc: nn::Linear,
    attention_a: nn::Linear,
    attention_b: Option<nn::Linear>,
    attention_c: nn::Linear,
    classifier: nn::Linear,
    tile_classifier: nn::Linear,
}

fn xavier(vs: nn::Path, name: &str, fan_in: usize, fan_out: usize) -> nn::Linear {
    let std = (2.0 / (fan_in + fan_out) as f64).sqrt();
    nn::linear(
        vs / name,
        fan_in as i64,
        fan_out as i64,
        nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

impl Network {
    /// Creates the network's variables under `vs`, initialised from torch's RNG.
    pub fn new(vs: &nn::Path, config: ModelConfig, dropout: bool) -> Network {
        let (d, h, k, c) = (
            config.input_dim,
            config.hidden_dim,
            config.attention_dim,
            config.num_classes,
        );
        let t = config.num_tile_classifiers();
        Network {
            config,
            dropout,
            fc: xavier(vs.clone(), "fc", d, h),
            attention_a: xavier(vs.clone(), "attention_a", h, k),
            attention_b: (config.attention == AttentionKind::Gated)
                .then(|| xavier(vs.clone(), "attention_b", h, k)),
            attention_c: xavier(vs.clone(), "attention_c", k, 1),
            classifier: xavier(vs.clone(), "classifier", h, c),
            // T binary classifiers stacked: rows 2t, 2t+1 are classifier t. Each Linear(H, 2)
            // of CLAM is initialised with its own fan-out of 2, as here block by block.
            tile_classifier: {
                let lin = xavier(vs.clone(), "tile_classifier", h, 2 * t);
                tch::no_grad(|| {
                    let std = (2.0 / (h + 2) as f64).sqrt();
                    let _ = lin.ws.shallow_clone().normal_(0.0, std);
                });
                lin
            },
        }
    }

    /// Hidden vectors and attention logits for `features` (`N x D`, f32).
    pub fn forward(&self, features: &Tensor, train: bool) -> Forward {
        let p = if self.dropout { DROPOUT } else { 0.0 };
        let hidden = self.fc.forward(features).relu().dropout(p, train);
        let a = self.attention_a.forward(&hidden).tanh().dropout(p, train);
        let gated = match &self.attention_b {
            Some(b) => a * b.forward(&hidden).sigmoid().dropout(p, train),
            None => a,
        };
        let attention_logits = self.attention_c.forward(&gated).squeeze_dim(1);
        Forward {
            hidden,
            attention_logits,
        }
    }

    /// Slide logits (`C`) from hidden vectors and softmax attention (`N`).
    pub fn slide_logits(&self, hidden: &Tensor, attention: &Tensor) -> Tensor {
        let pooled = attention.unsqueeze(0).matmul(hidden); // 1 x H
        self.classifier.forward(&pooled).squeeze_dim(0)
    }

    /// Logits (`n x 2`) of tile classifier `index` for the given hidden vectors.
    pub fn tile_logits(&self, hidden: &Tensor, index: usize) -> Tensor {
        let i = index as i64;
        let w = self.tile_classifier.ws.narrow(0, 2 * i, 2);
        let b = self
            .tile_classifier
            .bs
            .as_ref()
            .map(|b| b.narrow(0, 2 * i, 2));
        hidden.linear(&w, b.as_ref())
    }

    /// Tumor probability of every tile (eval: the tumor tile classifier's softmax output 1).
    pub fn tile_probabilities(&self, hidden: &Tensor) -> Tensor {
        self.tile_logits(hidden, self.config.tumor_tile_classifier())
            .softmax(1, Kind::Float)
            .select(1, 1)
    }

    /// The parameters as the engine's row-major f32 weights, for export.
    pub fn to_weights(&self) -> crate::Result<ModelWeights> {
        let host = |t: &Tensor| -> crate::Result<Vec<f32>> {
            let flat = t
                .detach()
                .to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view([-1]);
            Ok(Vec::<f32>::try_from(&flat)?)
        };
        let bias = |l: &nn::Linear| -> crate::Result<Vec<f32>> {
            l.bs.as_ref().map_or(Ok(Vec::new()), &host)
        };
        let mut w = ModelWeights::zeros(self.config);
        w.fc_weight = host(&self.fc.ws)?;
        w.fc_bias = bias(&self.fc)?;
        w.attention_a_weight = host(&self.attention_a.ws)?;
        w.attention_a_bias = bias(&self.attention_a)?;
        if let Some(b) = &self.attention_b {
            w.attention_b_weight = host(&b.ws)?;
            w.attention_b_bias = bias(b)?;
        }
        w.attention_c_weight = host(&self.attention_c.ws)?;
        w.attention_c_bias = bias(&self.attention_c)?;
        w.classifier_weight = host(&self.classifier.ws)?;
        w.classifier_bias = bias(&self.classifier)?;
        w.tile_classifier_weight = host(&self.tile_classifier.ws)?;
        w.tile_classifier_bias = bias(&self.tile_classifier)?;
        Ok(w)
    }
}

/// The architecture for a model kind, size, input dimension and attention variant.
pub fn architecture(
    kind: ModelKind,
    size: msclam_engine::ModelSize,
    input_dim: usize,
    gated: bool,
) -> ModelConfig {
    let base = match kind {
        ModelKind::MsClam => ModelConfig::ms_clam(size),
        ModelKind::ClamSb => ModelConfig::clam_sb(size),
    };
    ModelConfig {
        attention: if gated {
            AttentionKind::Gated
        } else {
            AttentionKind::Plain
        },
        ..base.with_input_dim(input_dim)
    }
}

/// Which method is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// MS-CLAM: single tile classifier, mixed supervision, attention loss, paired batches.
    MsClam,
    /// The CLAM-SB baseline: per-class tile classifiers, attention pseudo-labels only.
    ClamSb,
}

impl ModelKind {
    /// The tile classifier layout of this method.
    pub fn tile_classifier(self) -> TileClassifierKind {
        match self {
            ModelKind::MsClam => TileClassifierKind::SingleBinary,
            ModelKind::ClamSb => TileClassifierKind::PerClass,
        }
    }
}
