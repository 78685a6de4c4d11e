//! A slide's scores as HDF5, in the convention of CLAM's heatmap assets: `coords` (N x 2,
//! int64, level-0 pixels) and `attention_scores` (N x 1, float32, the raw attention logits
//! before the softmax, as CLAM saves `A_raw`), so CLAM users' heatmap scripts read it; plus
//! `attention` (N, the softmax over the slide), `tile_probabilities` (N) and `tile_mask` (N,
//! uint8), and `reference_mask` (N, uint8) when the input had tile labels. The file's attributes hold the slide-level summary, which also marks the file as
//! complete (it is written to a temporary name and renamed).

use std::path::Path;

use crate::error::{DataError, Result};

/// One scored slide: what the per-slide files and the `slides.csv` row hold.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideScores {
    /// Slide id.
    pub slide_id: String,
    /// Tile coordinates (level-0 pixels).
    pub coords: Vec<[u32; 2]>,
    /// Attention logit of each tile (before the softmax).
    pub attention_logits: Vec<f32>,
    /// Attention of each tile (softmax over the slide).
    pub attention: Vec<f32>,
    /// Tumor probability of each tile.
    pub tile_probabilities: Vec<f32>,
    /// Whether each tile is in the tumor mask.
    pub tile_mask: Vec<bool>,
    /// Slide tumor probability.
    pub tumor_probability: f32,
    /// Predicted class (index into the model's classes).
    pub predicted_class: usize,
    /// Side of a tile in level-0 pixels.
    pub tile_size: u32,
    /// The slide's label, when the input had one.
    pub label: Option<usize>,
    /// Reference tile labels, when the input had them.
    pub reference_mask: Option<Vec<bool>>,
    /// Share of the tiles whose embeddings do not look like the model's training data (a
    /// model with embedding statistics only; see `msclam_engine::statistics`).
    pub out_of_distribution: Option<f32>,
}

impl SlideScores {
    /// Tiles in the tumor mask.
    pub fn tumor_tiles(&self) -> usize {
        self.tile_mask.iter().filter(|m| **m).count()
    }
}

/// The slide-level summary stored in a scores file's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideSummary {
    /// Slide id.
    pub slide_id: String,
    /// Tiles scored.
    pub tiles: usize,
    /// Slide tumor probability.
    pub tumor_probability: f32,
    /// Predicted class.
    pub predicted_class: usize,
    /// Tiles in the tumor mask.
    pub tumor_tiles: usize,
    /// The slide's label, when known (-1 in the file otherwise).
    pub label: Option<usize>,
    /// Share of out-of-distribution tiles, when the model has embedding statistics (-1 in
    /// the file otherwise).
    pub out_of_distribution: Option<f32>,
}

impl From<&SlideScores> for SlideSummary {
    fn from(s: &SlideScores) -> Self {
        SlideSummary {
            slide_id: s.slide_id.clone(),
            tiles: s.coords.len(),
            tumor_probability: s.tumor_probability,
            predicted_class: s.predicted_class,
            tumor_tiles: s.tumor_tiles(),
            label: s.label,
            out_of_distribution: s.out_of_distribution,
        }
    }
}

fn h5_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::file(path, format!("HDF5: {e}"))
}

/// Writes `scores` to `path` atomically (a temporary file beside it, renamed).
pub fn write_scores(path: &Path, scores: &SlideScores) -> Result<()> {
    let tmp = crate::outputs::temporary_path(path);
    let n = scores.coords.len();
    let result = (|| -> hdf5::Result<()> {
        let file = hdf5::File::create(&tmp)?;
        crate::layout::write_coords(&file, &scores.coords)?;
        file.new_dataset::<f32>()
            .shape([n, 1])
            .create("attention_scores")?
            .write_raw(&scores.attention_logits)?;
        file.new_dataset::<f32>()
            .shape([n])
            .create("attention")?
            .write_raw(&scores.attention)?;
        file.new_dataset::<f32>()
            .shape([n])
            .create("tile_probabilities")?
            .write_raw(&scores.tile_probabilities)?;
        let mask: Vec<u8> = scores.tile_mask.iter().map(|m| u8::from(*m)).collect();
        file.new_dataset::<u8>()
            .shape([n])
            .create("tile_mask")?
            .write_raw(&mask)?;
        if let Some(reference) = &scores.reference_mask {
            let reference: Vec<u8> = reference.iter().map(|m| u8::from(*m)).collect();
            file.new_dataset::<u8>()
                .shape([n])
                .create("reference_mask")?
                .write_raw(&reference)?;
        }
        let slide_id: hdf5::types::VarLenUnicode = scores
            .slide_id
            .parse()
            .unwrap_or_else(|_| hdf5::types::VarLenUnicode::new());
        file.new_attr::<hdf5::types::VarLenUnicode>()
            .create("slide_id")?
            .write_scalar(&slide_id)?;
        file.new_attr::<f32>()
            .create("tumor_probability")?
            .write_scalar(&scores.tumor_probability)?;
        file.new_attr::<i64>()
            .create("predicted_class")?
            .write_scalar(&(scores.predicted_class as i64))?;
        file.new_attr::<i64>()
            .create("tumor_tiles")?
            .write_scalar(&(scores.tumor_tiles() as i64))?;
        file.new_attr::<i64>()
            .create("label")?
            .write_scalar(&scores.label.map_or(-1, |l| l as i64))?;
        file.new_attr::<i64>()
            .create("tile_size")?
            .write_scalar(&(scores.tile_size as i64))?;
        file.new_attr::<f32>()
            .create("out_of_distribution_fraction")?
            .write_scalar(&scores.out_of_distribution.unwrap_or(-1.0))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(h5_error(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// Reads the summary of a complete scores file (`None` if it is missing or incomplete).
pub fn read_summary(path: &Path) -> Option<SlideSummary> {
    let file = hdf5::File::open(path).ok()?;
    let slide_id: hdf5::types::VarLenUnicode = file.attr("slide_id").ok()?.read_scalar().ok()?;
    let tiles = file.dataset("coords").ok()?.shape().first().copied()?;
    let int = |name: &str| file.attr(name).ok()?.read_scalar::<i64>().ok();
    Some(SlideSummary {
        slide_id: slide_id.as_str().to_owned(),
        tiles,
        tumor_probability: file.attr("tumor_probability").ok()?.read_scalar().ok()?,
        predicted_class: usize::try_from(int("predicted_class")?).ok()?,
        tumor_tiles: usize::try_from(int("tumor_tiles")?).ok()?,
        label: usize::try_from(int("label")?).ok(),
        out_of_distribution: file
            .attr("out_of_distribution_fraction")
            .ok()
            .and_then(|a| a.read_scalar::<f32>().ok())
            .filter(|v| *v >= 0.0),
    })
}

/// The tile-level data of a complete scores file that has a reference mask (`None` otherwise),
/// for the tile metrics.
pub fn read_tile_truth(
    path: &Path,
    tumor_class: usize,
) -> Option<crate::outputs::tables::TileTruth> {
    let file = hdf5::File::open(path).ok()?;
    let reference = file.dataset("reference_mask").ok()?.read_raw::<u8>().ok()?;
    let probabilities = file
        .dataset("tile_probabilities")
        .ok()?
        .read_raw::<f32>()
        .ok()?;
    let predicted = file.dataset("tile_mask").ok()?.read_raw::<u8>().ok()?;
    let label = file.attr("label").ok()?.read_scalar::<i64>().ok()?;
    Some(crate::outputs::tables::TileTruth {
        probabilities,
        predicted: predicted.iter().map(|v| *v != 0).collect(),
        reference: reference.iter().map(|v| *v != 0).collect(),
        tumor_slide: label == tumor_class as i64,
    })
}
