//! tract-onnx over the same ONNX graph that ONNX Runtime runs, one optimised plan per strip
//! size (tract runs fastest with concrete shapes).

use std::path::Path;
use std::time::Instant;

use tract_onnx::prelude::*;

/// The head as a tract plan for strips of one size.
pub struct TractHead {
    plan: Arc<TypedSimplePlan>,
    strip: usize,
    dim: usize,
}

impl TractHead {
    /// Loads `onnx` with its input fixed to `[strip, dim]` and optimises it.
    pub fn load(onnx: &Path, strip: usize, dim: usize) -> TractResult<TractHead> {
        let plan = tract_onnx::onnx()
            .model_for_path(onnx)?
            .with_input_fact(0, f32::fact([strip, dim]).into())?
            .into_optimized()?
            .into_runnable()?;
        Ok(TractHead { plan, strip, dim })
    }

    /// Seconds to stream `embeddings` (a whole number of strips) through the head, keeping the
    /// slide's online softmax across strips as the engine does.
    pub fn time(&self, embeddings: &[f32]) -> TractResult<f64> {
        let strips: Vec<Tensor> = embeddings
            .chunks_exact(self.strip * self.dim)
            .map(|s| Tensor::from_shape(&[self.strip, self.dim], s))
            .collect::<TractResult<_>>()?;
        let start = Instant::now();
        let (mut max, mut weight_sum, mut hidden_sum) = (f64::NEG_INFINITY, 0.0f64, Vec::new());
        for strip in strips {
            let out = self.plan.run(tvec!(strip.into_tvalue()))?;
            let strip_max = first(&out[2])? as f64;
            let strip_weight = first(&out[3])? as f64;
            let strip_hidden = out[4].view().as_slice::<f32>()?;
            let new_max = max.max(strip_max);
            let (old_scale, new_scale) = ((max - new_max).exp(), (strip_max - new_max).exp());
            hidden_sum.resize(strip_hidden.len(), 0.0);
            for (acc, v) in hidden_sum.iter_mut().zip(strip_hidden) {
                *acc = *acc * old_scale + *v as f64 * new_scale;
            }
            weight_sum = weight_sum * old_scale + strip_weight * new_scale;
            max = new_max;
        }
        std::hint::black_box((weight_sum, &hidden_sum));
        Ok(start.elapsed().as_secs_f64())
    }

    /// Tile probabilities of the first strip of `embeddings`.
    pub fn tile_probabilities(&self, embeddings: &[f32]) -> TractResult<Vec<f32>> {
        let input = Tensor::from_shape(
            &[self.strip, self.dim],
            &embeddings[..self.strip * self.dim],
        )?;
        let out = self.plan.run(tvec!(input.into_tvalue()))?;
        Ok(out[1].view().as_slice::<f32>()?.to_vec())
    }
}

/// The first value of an f32 output (a scalar or a one-element tensor).
fn first(t: &TValue) -> TractResult<f32> {
    t.view()
        .as_slice::<f32>()?
        .first()
        .copied()
        .ok_or_else(|| TractError::msg("empty output"))
}
