//! Export of a trained network to the engine's `.mscl` format, through the engine's writer
//! (the one implementation of the format), written atomically; and of a checkpoint
//! ([`export_checkpoint`]).

use std::path::Path;

use msclam_engine::format::{keys, Dtype, ModelWriter};
use msclam_engine::statistics::EmbeddingStatistics;

use crate::data::Cohort;
use crate::error::{Result, TrainError};
use crate::model::Network;

/// What the file records besides the weights.
#[derive(Debug, Clone, Default)]
pub struct ExportMetadata {
    /// Name of the tile embedder the model was trained on.
    pub embedder_name: String,
    /// Tile side in pixels, if known.
    pub tile_size_px: Option<u32>,
    /// Magnification, if known (e.g. `20x`).
    pub magnification: Option<String>,
    /// Training configuration, fold and validation metrics (JSON).
    pub training_summary: String,
    /// Element type of the three large matrices (`None`: f32). bf16 and f16 halve the bytes
    /// the engine reads per tile.
    pub dtype: Option<Dtype>,
    /// Statistics of the training embeddings ([`training_statistics`]): with them, sessions
    /// report the share of a slide's tiles that do not look like the training data.
    pub statistics: Option<EmbeddingStatistics>,
}

/// The embedding statistics of `slides` of `cohort` (its training slides), read from the
/// device one slide at a time.
pub fn training_statistics(cohort: &Cohort, slides: &[usize]) -> Result<EmbeddingStatistics> {
    EmbeddingStatistics::fit(cohort.dim, slides.len(), |i| {
        let features = cohort.slides[slides[i]].features_f32();
        Vec::<f32>::try_from(features.to_device(tch::Device::Cpu).view([-1]))
            .map_err(TrainError::from)
    })
}

/// Writes `net` (eval mode semantics: no dropout) to `path` as a `.mscl` model.
pub fn export(net: &Network, path: &Path, meta: &ExportMetadata) -> Result<()> {
    let weights = net.to_weights()?;
    let dim = weights.config.input_dim.to_string();
    let mut writer = ModelWriter::new(&weights)
        .matrix_dtype(meta.dtype.unwrap_or(Dtype::F32))
        .metadata(keys::EMBEDDER_NAME, &meta.embedder_name)?
        .metadata(keys::EMBEDDER_DIM, &dim)?
        .metadata(keys::TRAINING_SUMMARY, &meta.training_summary)?
        .metadata(
            keys::TOOL_VERSION,
            concat!("msclam-trainer ", env!("CARGO_PKG_VERSION")),
        )?;
    if let Some(px) = meta.tile_size_px {
        writer = writer.metadata(keys::TILE_SIZE_PX, &px.to_string())?;
    }
    if let Some(mag) = &meta.magnification {
        writer = writer.metadata(keys::TILE_MAGNIFICATION, mag)?;
    }
    if let Some(statistics) = &meta.statistics {
        writer = writer.embedding_statistics(statistics.clone());
    }
    writer.write(path)?;
    Ok(())
}

/// Exports the network of a checkpoint written by training (`<out>/checkpoints/*.ckpt`) to
/// `out`, its matrices as `dtype`; the model records the checkpoint's configuration, epoch and
/// last epoch's record. Returns the checkpoint's epoch.
pub fn export_checkpoint(
    checkpoint: &Path,
    out: &Path,
    embedder_name: &str,
    dtype: Dtype,
) -> Result<usize> {
    let state = crate::checkpoint::load(checkpoint, tch::Device::Cpu)?;
    let fc = state
        .names
        .iter()
        .position(|n| n == "fc.weight")
        .ok_or_else(|| TrainError::Config("checkpoint has no fc.weight".into()))?;
    let input_dim = state.params[fc].size()[1] as usize;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let arch = crate::model::architecture(
        state.config.method,
        state.config.size.into(),
        input_dim,
        state.config.gated,
    );
    let net = Network::new(&vs.root(), arch, false);
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    if vars.iter().map(|(n, _)| n).ne(state.names.iter()) {
        return Err(TrainError::Config(
            "the checkpoint's variables do not match the network".into(),
        ));
    }
    tch::no_grad(|| {
        for ((_, dst), src) in vars.iter_mut().zip(&state.params) {
            dst.copy_(src);
        }
    });
    let summary = serde_json::json!({ "config": state.config, "epoch": state.epoch, "last_epoch": state.history.last() });
    export(
        &net,
        out,
        &ExportMetadata {
            embedder_name: embedder_name.to_owned(),
            training_summary: summary.to_string(),
            dtype: Some(dtype),
            ..Default::default()
        },
    )?;
    Ok(state.epoch)
}
