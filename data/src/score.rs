//! Scoring new slides with the engine, as a batch job: one model shared by worker threads, one
//! engine session per thread, per-slide outputs written atomically ([`crate::outputs`]), bad
//! slides reported and skipped, finished slides skipped on a re-run, and deterministic shards
//! for cluster array jobs ([`Shard`], [`merge_shards`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use msclam_engine::{Model, SlideSession};

use crate::error::{DataError, Result};
use crate::layout::{self, ClamLayout};
use crate::outputs::h5::{self as scores_h5, SlideScores, SlideSummary};
use crate::outputs::tables::{self, Failure};
use crate::outputs::{geojson, heatmap, write_atomic};
use crate::NORMAL;

/// One of `count` deterministic parts of a slide list: the slides at positions `index`,
/// `index + count`, ... of the list sorted by slide id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which part, from 0.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// `I/N`, with `0 <= I < N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected I/N, e.g. 0/8"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}`: expected I/N"))
        };
        let (index, count) = (parse(i)?, parse(n)?);
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// File-name tag of this shard's tables (`3-of-8`).
    pub fn tag(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

/// A slide to score.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideInput {
    /// Slide id (the features file's stem).
    pub slide_id: String,
    /// Its features file: CLAM's `.h5`, or a `torch.save` tensor (`.pt`, no coordinates).
    pub features: PathBuf,
    /// Its class, when the input is a labelled CLAM cohort.
    pub label: Option<usize>,
    /// Its tile-label file, when the cohort has one.
    pub tile_labels: Option<PathBuf>,
}

/// The slides under `input`, sorted by id: a CLAM cohort (`dataset.csv` and `h5_files/` or
/// `pt_files/`: every slide of the dataset, with labels), a folder holding `h5_files/` or
/// `pt_files/`, or a folder of `.h5` or `.pt` files. A slide with both is read from its `.h5`
/// (which has the coordinates).
pub fn find_slides(input: &Path) -> Result<Vec<SlideInput>> {
    let layout = ClamLayout::under(input);
    let mut slides = Vec::new();
    let features_of = |id: &str| {
        let h5 = layout.h5_dir.join(format!("{id}.h5"));
        match &layout.pt_dir {
            Some(pt_dir) if !h5.exists() && pt_dir.join(format!("{id}.pt")).exists() => {
                pt_dir.join(format!("{id}.pt"))
            }
            _ => h5,
        }
    };
    if layout.dataset_csv.exists() && (layout.h5_dir.is_dir() || layout.pt_dir.is_some()) {
        for row in layout::read_dataset_csv(&layout.dataset_csv, &layout.label_map)? {
            slides.push(SlideInput {
                features: features_of(&row.slide_id),
                label: Some(row.label),
                tile_labels: layout
                    .tile_labels_dir
                    .as_ref()
                    .and_then(|d| layout::find_tile_label_file(d, &row.slide_id)),
                slide_id: row.slide_id,
            });
        }
    } else {
        let mut dirs = Vec::new();
        if layout.h5_dir.is_dir() {
            dirs.push(layout.h5_dir.clone());
        }
        dirs.extend(layout.pt_dir.clone());
        if dirs.is_empty() {
            dirs.push(input.to_path_buf());
        }
        for dir in dirs {
            let entries = std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| DataError::io(&dir, e))?.path();
                let extension = path.extension().and_then(|e| e.to_str());
                if matches!(extension, Some("h5") | Some("pt")) {
                    let slide_id = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .ok_or_else(|| DataError::file(&path, "file name is not UTF-8"))?
                        .to_owned();
                    slides.push(SlideInput {
                        slide_id,
                        features: path,
                        label: None,
                        tile_labels: None,
                    });
                }
            }
        }
        // The .h5 of a slide that also has a .pt (it has the coordinates).
        slides.sort_by(|a, b| {
            let is_pt = |s: &SlideInput| s.features.extension().is_some_and(|e| e == "pt");
            (&a.slide_id, is_pt(a)).cmp(&(&b.slide_id, is_pt(b)))
        });
        slides.dedup_by(|later, first| later.slide_id == first.slide_id);
    }
    slides.sort_by(|a, b| a.slide_id.cmp(&b.slide_id));
    if let Some(w) = slides.windows(2).find(|w| w[0].slide_id == w[1].slide_id) {
        return Err(DataError::slide(&w[0].slide_id, "listed twice"));
    }
    Ok(slides)
}

/// The slides of `shard` (all of them for `None`).
pub fn shard_slides(slides: Vec<SlideInput>, shard: Option<Shard>) -> Vec<SlideInput> {
    match shard {
        None => slides,
        Some(s) => slides
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % s.count == s.index)
            .map(|(_, v)| v)
            .collect(),
    }
}

/// What to score and how.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// The `.mscl` model.
    pub model: PathBuf,
    /// A CLAM cohort or a folder of `.h5` or `.pt` files ([`find_slides`]).
    pub input: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// Worker threads (one engine session each).
    pub threads: usize,
    /// Only this part of the slides.
    pub shard: Option<Shard>,
    /// Tile side in level-0 pixels, overriding the HDF5 attributes.
    pub tile_size: Option<u32>,
    /// Whether to draw the PNG pictures.
    pub pictures: bool,
}

/// How a run went.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every slide of the run that has scores (scored now or found done), sorted by id.
    pub slides: Vec<SlideSummary>,
    /// Of those, how many were already done.
    pub already_done: usize,
    /// Slides that could not be scored.
    pub failures: Vec<Failure>,
    /// Tiles scored now.
    pub tiles_scored: usize,
    /// Seconds spent reading features, summed over threads.
    pub read_seconds: f64,
    /// Seconds spent in the engine, summed over threads.
    pub engine_seconds: f64,
    /// Seconds spent writing outputs, summed over threads.
    pub write_seconds: f64,
}

/// Per-slide output paths.
pub fn output_paths(out: &Path, slide_id: &str) -> [PathBuf; 3] {
    ["h5", "geojson", "png"].map(|ext| out.join(format!("{slide_id}.{ext}")))
}

/// Tile side when neither a flag nor the file gives it: the smallest positive step between
/// tile coordinates (tiles lie on a grid), else 256.
pub fn inferred_tile_size(coords: &[[u32; 2]]) -> u32 {
    let mut step = u32::MAX;
    for axis in 0..2 {
        let mut values: Vec<u32> = coords.iter().map(|c| c[axis]).collect();
        values.sort_unstable();
        values.dedup();
        for w in values.windows(2) {
            step = step.min(w[1] - w[0]);
        }
    }
    if step == u32::MAX {
        256
    } else {
        step
    }
}

/// Scores one slide with `session` (recreated larger if the slide does not fit).
fn score_slide(
    model: &Arc<Model>,
    session: &mut Option<SlideSession<'static>>,
    input: &SlideInput,
    options: &ScoreOptions,
    outcome: &mut Outcome,
) -> Result<SlideScores> {
    let started = std::time::Instant::now();
    let mut file = layout::read_features_file(&input.features, &input.slide_id)?;
    if input.features.extension().is_some_and(|e| e == "pt") {
        // The reading-order grid is laid out with 256-pixel steps: at the tile size asked for.
        if let Some(size) = options.tile_size.filter(|&t| t != 256) {
            for c in &mut file.coords {
                *c = c.map(|v| (v / 256).saturating_mul(size));
            }
        }
        log::warn!(
            "{}: a torch.save tensor has no tile coordinates: the tiles are placed in reading \
             order on a square grid, and the GeoJSON and picture show that grid",
            input.slide_id
        );
    }
    let n = file.coords.len();
    let dim = model.config().input_dim;
    if file.dim != dim {
        return Err(DataError::slide(
            &input.slide_id,
            format!(
                "{}: features have D = {}, the model expects {dim}",
                input.features.display(),
                file.dim
            ),
        ));
    }
    let reference = match (&file.tile_labels, &input.tile_labels) {
        (Some(t), _) => Some(t.iter().map(|v| *v != 0).collect()),
        (None, Some(path)) => Some(
            layout::read_tile_label_file(path, &input.slide_id, n)?
                .iter()
                .map(|v| *v != 0)
                .collect(),
        ),
        (None, None) if input.label == Some(NORMAL) => Some(vec![false; n]),
        (None, None) => None,
    };
    outcome.read_seconds += started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    if session.as_ref().is_none_or(|s| s.capacity() < n) {
        *session = Some(SlideSession::new(model.clone(), n)?);
    }
    let s = session.as_mut().expect("created above");
    s.reset();
    let engine_error = |e: msclam_engine::Error| {
        DataError::slide(
            &input.slide_id,
            format!("{}: {e}", input.features.display()),
        )
    };
    s.push(&file.features, Some(&file.coords))
        .map_err(engine_error)?;
    let r = s.finalize().map_err(engine_error)?;
    let scores = SlideScores {
        slide_id: input.slide_id.clone(),
        coords: file.coords.clone(),
        attention_logits: r.attention_logits.to_vec(),
        attention: r.attention.to_vec(),
        tile_probabilities: r.tile_probabilities.to_vec(),
        tile_mask: r.tile_mask.iter().map(|m| *m != 0).collect(),
        tumor_probability: r.tumor_probability,
        predicted_class: r.predicted_class,
        tile_size: options
            .tile_size
            .or(file.tile_size)
            .unwrap_or_else(|| inferred_tile_size(&file.coords)),
        label: input.label,
        reference_mask: reference,
        out_of_distribution: r.out_of_distribution_fraction,
    };
    if let Some(share) = r.out_of_distribution_fraction {
        if share > msclam_engine::statistics::UNTRUSTED_FRACTION {
            log::warn!(
                "{}: {:.0} % of the tiles do not look like the model's training data \
                 (another encoder, magnification, stain or scale?): do not trust its scores",
                input.slide_id,
                100.0 * share
            );
        }
    }
    outcome.engine_seconds += started.elapsed().as_secs_f64();
    outcome.tiles_scored += n;
    Ok(scores)
}

/// Writes one slide's GeoJSON, picture and HDF5 (last: its presence marks the slide done).
fn write_outputs(out: &Path, scores: &SlideScores, pictures: bool) -> Result<()> {
    let [h5, geo, png] = output_paths(out, &scores.slide_id);
    let polygons = geojson::mask_polygons(&scores.coords, &scores.tile_mask, scores.tile_size);
    let text = geojson::feature_collection(&scores.slide_id, &polygons).to_string();
    write_atomic(&geo, text.as_bytes())?;
    if pictures {
        heatmap::write_heatmap(&png, scores)?;
    }
    scores_h5::write_scores(&h5, scores)
}

/// Scores the slides of `options` (see the module documentation), calling `progress` after
/// each slide with its id. Slides whose scores file is already complete are not scored again.
/// Errors only for what stops the whole run (an unreadable model, an output folder that
/// cannot be created, an unreadable slide list); a bad slide is a [`Failure`] in the outcome.
pub fn score_slides(options: &ScoreOptions, progress: &(dyn Fn(&str) + Sync)) -> Result<Outcome> {
    let model = Arc::new(Model::load(&options.model)?);
    std::fs::create_dir_all(&options.out).map_err(|e| DataError::io(&options.out, e))?;
    let slides = shard_slides(find_slides(&options.input)?, options.shard);
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Outcome::default());
    let threads = options.threads.clamp(1, slides.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut mine = Outcome::default();
                let mut session = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(input) = slides.get(i) else { break };
                    let h5 = &output_paths(&options.out, &input.slide_id)[0];
                    if let Some(done) = scores_h5::read_summary(h5) {
                        mine.slides.push(done);
                        mine.already_done += 1;
                    } else {
                        let result = score_slide(&model, &mut session, input, options, &mut mine)
                            .and_then(|scores| {
                                let started = std::time::Instant::now();
                                write_outputs(&options.out, &scores, options.pictures)?;
                                mine.write_seconds += started.elapsed().as_secs_f64();
                                Ok(SlideSummary::from(&scores))
                            });
                        match result {
                            Ok(summary) => mine.slides.push(summary),
                            Err(e) => {
                                log::warn!("{e}");
                                mine.failures.push(Failure {
                                    slide_id: input.slide_id.clone(),
                                    path: input.features.display().to_string(),
                                    reason: e.to_string(),
                                });
                            }
                        }
                    }
                    progress(&input.slide_id);
                }
                let mut t = total.lock().unwrap_or_else(|p| p.into_inner());
                t.slides.append(&mut mine.slides);
                t.failures.append(&mut mine.failures);
                t.already_done += mine.already_done;
                t.tiles_scored += mine.tiles_scored;
                t.read_seconds += mine.read_seconds;
                t.engine_seconds += mine.engine_seconds;
                t.write_seconds += mine.write_seconds;
            });
        }
    });
    let mut outcome = total.into_inner().unwrap_or_else(|p| p.into_inner());
    outcome.slides.sort_by(|a, b| a.slide_id.cmp(&b.slide_id));
    outcome.failures.sort_by(|a, b| a.slide_id.cmp(&b.slide_id));
    match options.shard {
        None => write_tables(&options.out, &outcome.slides, &outcome.failures, &model)?,
        Some(shard) => {
            let dir = options.out.join("shards");
            std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
            let tag = shard.tag();
            tables::write_slides_csv(&dir.join(format!("slides-{tag}.csv")), &outcome.slides)?;
            tables::write_failures_csv(
                &dir.join(format!("failures-{tag}.csv")),
                &outcome.failures,
            )?;
        }
    }
    Ok(outcome)
}

/// Writes `slides.csv`, `failures.csv` and, where slides have labels, `metrics.json`.
fn write_tables(
    out: &Path,
    slides: &[SlideSummary],
    failures: &[Failure],
    model: &Model,
) -> Result<()> {
    tables::write_slides_csv(&out.join("slides.csv"), slides)?;
    tables::write_failures_csv(&out.join("failures.csv"), failures)?;
    let tumor_class = model.config().tumor_class;
    let tiles: Vec<_> = slides
        .iter()
        .filter(|s| s.label.is_some())
        .filter_map(|s| scores_h5::read_tile_truth(&output_paths(out, &s.slide_id)[0], tumor_class))
        .collect();
    if let Some(m) = tables::metrics_json(slides, &tiles, tumor_class) {
        let text = serde_json::to_string_pretty(&m).unwrap_or_default();
        write_atomic(&out.join("metrics.json"), text.as_bytes())?;
    }
    Ok(())
}

/// Combines the tables of `count` shards in `out/shards/` into `out/slides.csv`,
/// `out/failures.csv` and `out/metrics.json`, as one unsharded run writes them. Errors if a
/// shard's tables are missing.
pub fn merge_shards(out: &Path, model: &Path) -> Result<(Vec<SlideSummary>, Vec<Failure>)> {
    let dir = out.join("shards");
    let entries = std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))?;
    let mut tags = Vec::new();
    for entry in entries {
        let name = entry.map_err(|e| DataError::io(&dir, e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(tag) = name
            .strip_prefix("slides-")
            .and_then(|n| n.strip_suffix(".csv"))
        {
            let (i, n) = tag
                .split_once("-of-")
                .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
                .ok_or_else(|| DataError::file(dir.join(&*name), "not a shard table"))?;
            tags.push((i, n));
        }
    }
    let count = tags
        .first()
        .map(|t| t.1)
        .ok_or_else(|| DataError::file(&dir, "no shard tables (slides-I-of-N.csv) to merge"))?;
    if let Some(other) = tags.iter().find(|t| t.1 != count) {
        return Err(DataError::file(
            &dir,
            format!("shards of {count} and of {} runs mixed", other.1),
        ));
    }
    let (mut slides, mut failures) = (Vec::new(), Vec::new());
    for index in 0..count {
        let tag = Shard { index, count }.tag();
        let path = dir.join(format!("slides-{tag}.csv"));
        if !path.exists() {
            return Err(DataError::file(
                &path,
                format!("shard {index} of {count} has not finished"),
            ));
        }
        slides.extend(tables::read_slides_csv(&path)?);
        failures.extend(tables::read_failures_csv(
            &dir.join(format!("failures-{tag}.csv")),
        )?);
    }
    slides.sort_by(|a, b| a.slide_id.cmp(&b.slide_id));
    failures.sort_by(|a, b| a.slide_id.cmp(&b.slide_id));
    let model = Model::load(model)?;
    write_tables(out, &slides, &failures, &model)?;
    Ok((slides, failures))
}
