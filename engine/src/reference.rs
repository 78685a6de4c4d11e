//! A plain f64 implementation of the whole-slide forward pass, straight from the method's
//! equations, for tests: no packing, no blocking, no streaming, no tricks.

use crate::config::AttentionKind;
use crate::weights::ModelWeights;

/// Everything the network computes for one slide, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceOutput {
    /// Slide class logits `Wc M + bc`.
    pub slide_logits: Vec<f64>,
    /// Softmax of the slide logits.
    pub slide_probabilities: Vec<f64>,
    /// Attention logit of each tile.
    pub attention_logits: Vec<f64>,
    /// Softmax of the attention logits over the slide.
    pub attention: Vec<f64>,
    /// Tumor probability of each tile: softmax output 1 of the tumor tile classifier.
    pub tile_probabilities: Vec<f64>,
}

fn linear(w: &[f32], b: &[f32], x: &[f64], rows: usize) -> Vec<f64> {
    let cols = x.len();
    (0..rows)
        .map(|o| {
            b[o] as f64
                + (0..cols)
                    .map(|i| w[o * cols + i] as f64 * x[i])
                    .sum::<f64>()
        })
        .collect()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Runs the network over a whole slide (`embeddings` is `n x D` row-major, `n >= 1`).
pub fn forward(weights: &ModelWeights, embeddings: &[f32]) -> ReferenceOutput {
    let c = &weights.config;
    let (d, h, k, nc) = (c.input_dim, c.hidden_dim, c.attention_dim, c.num_classes);
    let n = embeddings.len() / d;
    let t = c.tumor_tile_classifier();
    let mut hidden = Vec::with_capacity(n);
    let mut attention_logits = Vec::with_capacity(n);
    let mut tile_probabilities = Vec::with_capacity(n);
    for tile in 0..n {
        let x: Vec<f64> = embeddings[tile * d..(tile + 1) * d]
            .iter()
            .map(|v| *v as f64)
            .collect();
        let hk: Vec<f64> = linear(&weights.fc_weight, &weights.fc_bias, &x, h)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let a: Vec<f64> = linear(
            &weights.attention_a_weight,
            &weights.attention_a_bias,
            &hk,
            k,
        )
        .into_iter()
        .map(f64::tanh)
        .collect();
        let gated: Vec<f64> = match c.attention {
            AttentionKind::Gated => {
                let b = linear(
                    &weights.attention_b_weight,
                    &weights.attention_b_bias,
                    &hk,
                    k,
                );
                a.iter()
                    .zip(b)
                    .map(|(a, b)| a / (1.0 + (-b).exp()))
                    .collect()
            }
            AttentionKind::Plain => a,
        };
        attention_logits.push(
            linear(
                &weights.attention_c_weight,
                &weights.attention_c_bias,
                &gated,
                1,
            )[0],
        );
        let tile_w = &weights.tile_classifier_weight[2 * t * h..(2 * t + 2) * h];
        let tile_b = &weights.tile_classifier_bias[2 * t..2 * t + 2];
        tile_probabilities.push(softmax(&linear(tile_w, tile_b, &hk, 2))[1]);
        hidden.push(hk);
    }
    let attention = softmax(&attention_logits);
    let mut pooled = vec![0.0f64; h];
    for (a, hk) in attention.iter().zip(&hidden) {
        for (m, v) in pooled.iter_mut().zip(hk) {
            *m += a * v;
        }
    }
    let slide_logits = linear(
        &weights.classifier_weight,
        &weights.classifier_bias,
        &pooled,
        nc,
    );
    ReferenceOutput {
        slide_probabilities: softmax(&slide_logits),
        slide_logits,
        attention_logits,
        attention,
        tile_probabilities,
    }
}
