//! A network's parameters in PyTorch's layout (`Linear.weight` is `out x in`, row-major).
//!
//! This is what a trainer or converter hands to the [`crate::format::ModelWriter`], and what the
//! [`crate::reference`] implementation computes with. The engine itself runs from the packed
//! layout of a loaded [`crate::Model`].

use crate::config::{AttentionKind, ModelConfig};
use crate::error::{Error, Result};

/// All parameters of an MS-CLAM / CLAM-SB network, row-major, `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelWeights {
    /// Architecture the tensors below must match.
    pub config: ModelConfig,
    /// First layer `W1`, `H x D`.
    pub fc_weight: Vec<f32>,
    /// First layer bias, `H`.
    pub fc_bias: Vec<f32>,
    /// Attention `Va` (the tanh branch), `K x H`.
    pub attention_a_weight: Vec<f32>,
    /// Attention `Va` bias, `K`.
    pub attention_a_bias: Vec<f32>,
    /// Attention `Ua` (the sigmoid gate), `K x H`; empty for plain attention.
    pub attention_b_weight: Vec<f32>,
    /// Attention `Ua` bias, `K`; empty for plain attention.
    pub attention_b_bias: Vec<f32>,
    /// Attention output `Wa`, `1 x K`.
    pub attention_c_weight: Vec<f32>,
    /// Attention output bias, `1`.
    pub attention_c_bias: Vec<f32>,
    /// Slide classifier `Wc`, `C x H`.
    pub classifier_weight: Vec<f32>,
    /// Slide classifier bias, `C`.
    pub classifier_bias: Vec<f32>,
    /// Tile classifiers stacked, `(2 T) x H` where `T` is 1 (MS-CLAM) or C (CLAM); rows `2t`
    /// and `2t + 1` are classifier `t`'s "not tumor" and "tumor" outputs.
    pub tile_classifier_weight: Vec<f32>,
    /// Tile classifier biases, `2 T`.
    pub tile_classifier_bias: Vec<f32>,
}

impl ModelWeights {
    /// All-zero parameters of the right shapes for `config`.
    pub fn zeros(config: ModelConfig) -> Self {
        let (d, h, k, c) = (
            config.input_dim,
            config.hidden_dim,
            config.attention_dim,
            config.num_classes,
        );
        let t = config.num_tile_classifiers();
        let gated = config.attention == AttentionKind::Gated;
        ModelWeights {
            config,
            fc_weight: vec![0.0; h * d],
            fc_bias: vec![0.0; h],
            attention_a_weight: vec![0.0; k * h],
            attention_a_bias: vec![0.0; k],
            attention_b_weight: if gated { vec![0.0; k * h] } else { Vec::new() },
            attention_b_bias: if gated { vec![0.0; k] } else { Vec::new() },
            attention_c_weight: vec![0.0; k],
            attention_c_bias: vec![0.0; 1],
            classifier_weight: vec![0.0; c * h],
            classifier_bias: vec![0.0; c],
            tile_classifier_weight: vec![0.0; 2 * t * h],
            tile_classifier_bias: vec![0.0; 2 * t],
        }
    }

    /// The tensor of the network stored under `id`; `None` for the optional embedding
    /// statistics, which are not weights.
    pub(crate) fn tensor_mut(&mut self, id: crate::format::TensorId) -> Option<&mut Vec<f32>> {
        use crate::format::TensorId as T;
        Some(match id {
            T::FcWeight => &mut self.fc_weight,
            T::FcBias => &mut self.fc_bias,
            T::AttentionAWeight => &mut self.attention_a_weight,
            T::AttentionABias => &mut self.attention_a_bias,
            T::AttentionBWeight => &mut self.attention_b_weight,
            T::AttentionBBias => &mut self.attention_b_bias,
            T::AttentionCWeight => &mut self.attention_c_weight,
            T::AttentionCBias => &mut self.attention_c_bias,
            T::ClassifierWeight => &mut self.classifier_weight,
            T::ClassifierBias => &mut self.classifier_bias,
            T::TileClassifierWeight => &mut self.tile_classifier_weight,
            T::TileClassifierBias => &mut self.tile_classifier_bias,
            _ => return None,
        })
    }

    /// Every tensor with its name and expected `(rows, cols)`, in file order.
    pub fn tensors(&self) -> Vec<(&'static str, &[f32], (usize, usize))> {
        let c = &self.config;
        let (d, h, k, nc) = (c.input_dim, c.hidden_dim, c.attention_dim, c.num_classes);
        let t = c.num_tile_classifiers();
        let mut out = vec![
            ("fc.weight", self.fc_weight.as_slice(), (h, d)),
            ("fc.bias", self.fc_bias.as_slice(), (h, 1)),
            (
                "attention_a.weight",
                self.attention_a_weight.as_slice(),
                (k, h),
            ),
            ("attention_a.bias", self.attention_a_bias.as_slice(), (k, 1)),
        ];
        if c.attention == AttentionKind::Gated {
            out.push((
                "attention_b.weight",
                self.attention_b_weight.as_slice(),
                (k, h),
            ));
            out.push(("attention_b.bias", self.attention_b_bias.as_slice(), (k, 1)));
        }
        out.extend([
            (
                "attention_c.weight",
                self.attention_c_weight.as_slice(),
                (1, k),
            ),
            ("attention_c.bias", self.attention_c_bias.as_slice(), (1, 1)),
            (
                "classifier.weight",
                self.classifier_weight.as_slice(),
                (nc, h),
            ),
            ("classifier.bias", self.classifier_bias.as_slice(), (nc, 1)),
            (
                "tile_classifier.weight",
                self.tile_classifier_weight.as_slice(),
                (2 * t, h),
            ),
            (
                "tile_classifier.bias",
                self.tile_classifier_bias.as_slice(),
                (2 * t, 1),
            ),
        ]);
        out
    }

    /// Checks the configuration, every tensor's length and that every value is finite.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.config.attention == AttentionKind::Plain
            && !(self.attention_b_weight.is_empty() && self.attention_b_bias.is_empty())
        {
            return Err(Error::invalid_model(
                "plain attention has no gate: attention_b tensors must be empty",
            ));
        }
        for (name, data, (rows, cols)) in self.tensors() {
            if data.len() != rows * cols {
                return Err(Error::invalid_model(format!(
                    "{name} has {} values, expected {rows} x {cols} = {}",
                    data.len(),
                    rows * cols
                )));
            }
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::invalid_model(format!(
                    "{name} has a non-finite value ({}) at index {i}",
                    data[i]
                )));
            }
        }
        Ok(())
    }
}
