//! Export of a trained network to the engine's `.mscl` format, through the engine's writer
//! (the one implementation of the format), written atomically.

use std::path::Path;

use msclam_engine::format::{keys, Dtype, ModelWriter};

use crate::error::Result;
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
    writer.write(path)?;
    Ok(())
}
