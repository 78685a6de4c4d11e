//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use msclam::random_weights;
use msclam_engine::format::{Dtype, ModelWriter};
use msclam_engine::{Model, ModelConfig, ModelWeights};

/// The weight variants a session runs, as `(dtype, bf16 dot products, embedding statistics)`:
/// every weight dtype; bf16 also through its dot-product kernels where the CPU has them; f32
/// also with embedding statistics (the out-of-distribution count).
pub const WEIGHT_VARIANTS: [(Dtype, bool, bool); 6] = [
    (Dtype::F32, false, false),
    (Dtype::F32, false, true),
    (Dtype::F16, false, false),
    (Dtype::Bf16, false, false),
    (Dtype::Bf16, true, false),
    (Dtype::Int8, false, false),
];

/// Writes `weights` with the engine's writer and loads the bytes back.
pub fn model_of(weights: &ModelWeights) -> Arc<Model> {
    let bytes = ModelWriter::new(weights).to_bytes().expect("valid weights");
    Arc::new(Model::from_bytes(&bytes).expect("freshly written model loads"))
}

/// Random weights for `config` and the loaded model.
pub fn random_model(config: ModelConfig, seed: u64) -> (ModelWeights, Arc<Model>) {
    let weights = random_weights(config, seed);
    let model = model_of(&weights);
    (weights, model)
}

/// `|got - want| <= rel * |want|` (plus a denormal-sized floor), with a message.
pub fn assert_rel(got: f64, want: f64, rel: f64, what: &str) {
    let tol = rel * want.abs() + 1e-30;
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:e}, reference {want:e}, relative error {:e} > {rel:e}",
        ((got - want) / want).abs()
    );
}

/// Cuts `n` tiles into strips whose sizes cycle through `sizes` (each at least 1).
pub fn strips(n: usize, sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while start < n {
        let len = sizes[i % sizes.len()].max(1).min(n - start);
        out.push(start..start + len);
        start += len;
        i += 1;
    }
    out
}
