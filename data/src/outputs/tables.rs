//! The run's tables: `slides.csv` (one row per scored slide), `failures.csv` (slides that
//! could not be scored, with the reason) and `metrics.json` (the paper's metrics, where the
//! slides have labels).

use std::path::Path;

use serde_json::json;

use crate::error::{DataError, Result};
use crate::metrics::{self, Confusion};
use crate::outputs::h5::SlideSummary;
use crate::outputs::write_atomic;

/// A slide that could not be scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Slide id.
    pub slide_id: String,
    /// Its features file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Header of `slides.csv`.
const SLIDES_HEADER: [&str; 7] = [
    "slide_id",
    "tiles",
    "tumor_probability",
    "predicted_class",
    "tumor_tiles",
    "label",
    "out_of_distribution",
];

/// Writes `slides` (sorted by slide id) as CSV at `path`.
pub fn write_slides_csv(path: &Path, slides: &[SlideSummary]) -> Result<()> {
    let mut sorted: Vec<&SlideSummary> = slides.iter().collect();
    sorted.sort_by(|a, b| a.slide_id.cmp(&b.slide_id));
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| DataError::file(path, e);
    w.write_record(SLIDES_HEADER).map_err(err)?;
    for s in sorted {
        w.write_record([
            s.slide_id.clone(),
            s.tiles.to_string(),
            s.tumor_probability.to_string(),
            s.predicted_class.to_string(),
            s.tumor_tiles.to_string(),
            s.label.map_or(String::new(), |l| l.to_string()),
            s.out_of_distribution
                .map_or(String::new(), |f| f.to_string()),
        ])
        .map_err(err)?;
    }
    let bytes = w.into_inner().map_err(|e| DataError::file(path, e))?;
    write_atomic(path, &bytes)
}

/// Reads a `slides.csv` written by [`write_slides_csv`].
pub fn read_slides_csv(path: &Path) -> Result<Vec<SlideSummary>> {
    let mut r = csv::Reader::from_path(path).map_err(|e| DataError::file(path, e))?;
    let mut out = Vec::new();
    for record in r.records() {
        let record = record.map_err(|e| DataError::file(path, e))?;
        let field = |i: usize| record.get(i).unwrap_or("");
        let bad = |what: &str| DataError::file(path, format!("bad {what} `{}`", field(0)));
        out.push(SlideSummary {
            slide_id: field(0).to_owned(),
            tiles: field(1).parse().map_err(|_| bad("tile count of"))?,
            tumor_probability: field(2).parse().map_err(|_| bad("probability of"))?,
            predicted_class: field(3).parse().map_err(|_| bad("class of"))?,
            tumor_tiles: field(4).parse().map_err(|_| bad("tumor tiles of"))?,
            label: match field(5) {
                "" => None,
                v => Some(v.parse().map_err(|_| bad("label of"))?),
            },
            out_of_distribution: match field(6) {
                "" => None,
                v => Some(v.parse().map_err(|_| bad("out-of-distribution share of"))?),
            },
        });
    }
    Ok(out)
}

/// Writes `failures` (sorted by slide id) as CSV at `path`.
pub fn write_failures_csv(path: &Path, failures: &[Failure]) -> Result<()> {
    let mut sorted: Vec<&Failure> = failures.iter().collect();
    sorted.sort_by(|a, b| a.slide_id.cmp(&b.slide_id));
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| DataError::file(path, e);
    w.write_record(["slide_id", "path", "reason"])
        .map_err(err)?;
    for f in sorted {
        w.write_record([&f.slide_id, &f.path, &f.reason])
            .map_err(err)?;
    }
    let bytes = w.into_inner().map_err(|e| DataError::file(path, e))?;
    write_atomic(path, &bytes)
}

/// Reads a `failures.csv` written by [`write_failures_csv`].
pub fn read_failures_csv(path: &Path) -> Result<Vec<Failure>> {
    let mut r = csv::Reader::from_path(path).map_err(|e| DataError::file(path, e))?;
    let mut out = Vec::new();
    for record in r.records() {
        let record = record.map_err(|e| DataError::file(path, e))?;
        let field = |i: usize| record.get(i).unwrap_or("").to_owned();
        out.push(Failure {
            slide_id: field(0),
            path: field(1),
            reason: field(2),
        });
    }
    Ok(out)
}

/// Tile-level data of one labelled slide, for the tile metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct TileTruth {
    /// Tumor probability of each tile.
    pub probabilities: Vec<f32>,
    /// Predicted mask.
    pub predicted: Vec<bool>,
    /// Reference mask.
    pub reference: Vec<bool>,
    /// Whether the slide is a tumor slide.
    pub tumor_slide: bool,
}

/// The paper's metrics over the labelled slides (`label` known): slide AUC, accuracy and F1
/// (class `tumor_class` as positive); and over slides with reference masks: Dice on tumor
/// slides, specificity on normal slides, tile AUC and average precision pooled. `None` when
/// no slide has a label.
pub fn metrics_json(
    slides: &[SlideSummary],
    tiles: &[TileTruth],
    tumor_class: usize,
) -> Option<serde_json::Value> {
    let labelled: Vec<&SlideSummary> = slides.iter().filter(|s| s.label.is_some()).collect();
    if labelled.is_empty() {
        return None;
    }
    let truth: Vec<bool> = labelled
        .iter()
        .map(|s| s.label == Some(tumor_class))
        .collect();
    let predicted: Vec<bool> = labelled
        .iter()
        .map(|s| s.predicted_class == tumor_class)
        .collect();
    let scores: Vec<f64> = labelled
        .iter()
        .map(|s| s.tumor_probability as f64)
        .collect();
    let confusion = Confusion::of(&predicted, &truth);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let (mut dice, mut specificity, mut pooled, mut pooled_truth) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in tiles {
        if t.tumor_slide {
            dice.extend(Confusion::of(&t.predicted, &t.reference).f1());
        } else {
            specificity.extend(Confusion::of(&t.predicted, &t.reference).specificity());
        }
        pooled.extend(t.probabilities.iter().map(|p| *p as f64));
        pooled_truth.extend(t.reference.iter().copied());
    }
    Some(json!({
        "slides": labelled.len(),
        "slide_auc": metrics::roc_auc(&scores, &truth),
        "accuracy": confusion.accuracy(),
        "f1": confusion.f1(),
        "slides_with_reference_masks": tiles.len(),
        "dice_tumor": mean(&dice),
        "specificity_normal": mean(&specificity),
        "tile_auc": metrics::roc_auc(&pooled, &pooled_truth),
        "tile_ap": metrics::average_precision(&pooled, &pooled_truth),
    }))
}
