//! The network: CLAM-SB with gated or plain attention, MS-CLAM's single tile classifier or
//! CLAM's per-class tile classifiers, Xavier-normal initialisation, switchable dropout 0.25.

use msclam_engine::{AttentionKind, ModelConfig, ModelWeights, TileClassifierKind};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Dropout probability when dropout is on (CLAM's 0.25).
pub const DROPOUT: f64 = 0.25;

/// A value is kept when its random byte is below this: `(1 - DROPOUT) * 256`, exactly.
const KEEP_BELOW: i64 = 192;
const _: () = assert!((1.0 - DROPOUT) * 256.0 == KEEP_BELOW as f64);

/// Inverted dropout with [`DROPOUT`] (training) or the identity (`train` false or `on` false).
///
/// The same distribution as `torch.nn.functional.dropout`, drawn more cheaply: each value's
/// keep/drop comes from one byte of full-range random 64-bit words (eight values per draw),
/// kept when the byte is below [`KEEP_BELOW`], so with probability exactly 3/4. libtorch's
/// `bernoulli_` draws one number per value: on one CPU thread it took 22 ms for a
/// 4,200 x 512 mask, these bytes 3 ms (docs/PERFORMANCE.md, trainer profile). Reproducible
/// from torch's seed like any other draw.
pub fn dropout(x: &Tensor, on: bool, train: bool) -> Tensor {
    if !(on && train) {
        return x.shallow_clone();
    }
    let n = x.numel() as i64;
    let bytes = Tensor::empty([(n + 7) / 8], (Kind::Int64, x.device()))
        .random_from_(i64::MIN, None)
        .view_dtype(Kind::Uint8)
        .narrow(0, 0, n)
        .view(x.size().as_slice());
    let mask = bytes.lt(KEEP_BELOW).to_kind(x.kind()) * (1.0 / (1.0 - DROPOUT));
    x * mask
}

/// What a forward pass over one slide gives.
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
        let drop = |x: Tensor| dropout(&x, self.dropout, train);
        let hidden = drop(self.fc.forward(features).relu());
        let a = drop(self.attention_a.forward(&hidden).tanh());
        let gated = match &self.attention_b {
            Some(b) => a * drop(b.forward(&hidden).sigmoid()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keeps_three_quarters_scaled_by_four_thirds() {
        tch::manual_seed(7);
        let x = Tensor::ones([4200, 512], (Kind::Float, tch::Device::Cpu));
        let y = dropout(&x, true, true);
        let values: Vec<f32> = Vec::try_from(&y.view([-1])).unwrap();
        let kept = values.iter().filter(|&&v| v != 0.0).count();
        assert!(values.iter().all(|&v| v == 0.0 || v == 4.0 / 3.0));
        // Binomial(2,150,400, 3/4): standard deviation 3e-4 of the fraction.
        let fraction = kept as f64 / values.len() as f64;
        assert!((fraction - 0.75).abs() < 3e-3, "{fraction}");
        // Every byte of the random words is used alike (a biased top bit would show here).
        for lane in 0..8 {
            let lane_kept = values.iter().skip(lane).step_by(8).filter(|&&v| v != 0.0);
            let f = lane_kept.count() as f64 / (values.len() / 8) as f64;
            assert!((f - 0.75).abs() < 6e-3, "byte {lane}: {f}");
        }
        // The same seed gives the same mask; eval mode and dropout off are the identity.
        tch::manual_seed(7);
        assert!(dropout(&x, true, true).equal(&y));
        assert!(dropout(&x, true, false).equal(&x) && dropout(&x, false, true).equal(&x));
    }
}
