//! Experiments: one fold's run ([`run_fold`]: load the fold onto the device, train, evaluate
//! the test slides, write the outputs), and what the commands build from it:
//!
//! - [`train`]: the `train` command's job (checkpoints, resumption, the exported model);
//! - [`demo`]: the whole product on a small generated cohort;
//! - [`ablation`]: the paper's grid of runs over folds; [`summary`]: the table over folds
//!   (written by the ablation, and by merging folds trained as separate jobs);
//! - [`engine_check`]: the demo's model streamed through the engine and exported at lower
//!   precision, against the trainer.

pub mod ablation;
pub mod demo;
pub mod engine_check;
pub mod summary;
pub mod train;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msclam_data::layout::ClamLayout;
use tch::Device;

use crate::config::TrainConfig;
use crate::data::{self, Annotated, Cohort, FeaturePrecision, SplitSpec, TUMOR};
use crate::error::{Result, TrainError};
use crate::model::Network;
use crate::report::{self, FoldMetrics};
use crate::synthetic::{self, SyntheticSpec};
use crate::training::{checkpoint_dir, EpochRecord, SlideEval, Trainer};
use crate::{checkpoint, memory, plots};

/// Where a fold's slides come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Fold `fold` of a cohort in the CLAM layout under `root`.
    Layout {
        /// The cohort's folder.
        root: PathBuf,
        /// The fold (`splits/splits_<fold>.csv`).
        fold: usize,
        /// Which tumor slides' tile labels are used.
        annotated: Annotated,
    },
    /// A generated cohort, split in memory.
    Synthetic {
        /// The cohort.
        spec: SyntheticSpec,
        /// Its split and annotated subset.
        split: SplitSpec,
    },
}

/// Loads a fold onto `device`, refusing first (from the files' shapes, or the generator's
/// largest sizes) a cohort that will not fit there. Returns the cohort and, for a CLAM-layout
/// cohort, the ids of the slides whose tile labels are used in training.
pub fn load(
    source: &Source,
    precision: FeaturePrecision,
    device: Device,
) -> Result<(Cohort, Option<Vec<String>>)> {
    match source {
        Source::Layout {
            root,
            fold,
            annotated,
        } => {
            let layout = ClamLayout::under(root);
            let (tiles, dim) = msclam_data::cohort::count_tiles(&layout, *fold)?;
            memory::check_device(tiles, dim, precision, device)?;
            let (cohort, annotated) = data::load(&layout, *fold, annotated, precision, device)?;
            Ok((cohort, Some(annotated)))
        }
        Source::Synthetic { spec, split } => {
            // The worst case of the +-50 % spread of tiles per slide.
            let expected_tiles = spec.slides * spec.tiles_per_slide * 3 / 2;
            memory::check_device(expected_tiles, spec.dim, precision, device)?;
            let slides = synthetic::generate(spec);
            Ok((
                data::cohort_from_synthetic(slides, split, precision, device)?,
                None,
            ))
        }
    }
}

/// What a fold run reports while it runs (the command line draws progress bars from it).
/// Every method does nothing unless implemented.
pub trait Progress {
    /// The fold is on the device, `elapsed` after the run began.
    fn loaded(&mut self, _cohort: &Cohort, _elapsed: Duration) {}
    /// Training of `run` begins, `done` of `epochs` epochs already done (after a resume).
    fn start(&mut self, _run: &str, _done: usize, _epochs: usize) {}
    /// An epoch of `steps` optimiser steps begins.
    fn epoch_start(&mut self, _steps: usize) {}
    /// A step ended.
    fn step(&mut self) {}
    /// An epoch ended.
    fn epoch_end(&mut self, _record: &EpochRecord) {}
    /// Training ended.
    fn finish(&mut self) {}
}

/// Reports nothing.
impl Progress for () {}

/// What a fold run writes into its folder besides the test evaluation (`test/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldOutputs {
    /// Checkpoints in `checkpoints/` (`last.ckpt` after every epoch, `best.ckpt` on
    /// improvement).
    pub checkpoints: bool,
    /// Continue from `checkpoints/last.ckpt` when it exists (needs `checkpoints`).
    pub resume: bool,
    /// `history.json` after every epoch and `training_curves.png` at the end.
    pub history: bool,
    /// `annotated_slides.txt`: the slides whose tile labels are used (CLAM-layout cohorts).
    pub annotated_list: bool,
    /// Heatmaps (`heatmaps/`) of the first this many tumor test slides...
    pub tumor_heatmaps: usize,
    /// ...and of the first this many normal test slides.
    pub normal_heatmaps: usize,
}

/// One fold's run.
#[derive(Debug, Clone)]
pub struct Fold<'a> {
    /// The run's name, for progress reports.
    pub name: &'a str,
    /// Where the slides come from.
    pub source: &'a Source,
    /// The training configuration.
    pub config: TrainConfig,
    /// Where to train.
    pub device: Device,
    /// The run's folder.
    pub out: &'a Path,
    /// What is written there.
    pub outputs: FoldOutputs,
}

/// A fold after its run.
#[derive(Debug)]
pub struct FoldRun {
    /// The fold's slides, on the device.
    pub cohort: Cohort,
    /// The ids of the slides whose tile labels were used (CLAM-layout cohorts).
    pub annotated: Option<Vec<String>>,
    /// The trained network (the best epoch's weights with early stopping).
    pub net: Network,
    /// Epochs trained.
    pub epochs: usize,
    /// Every epoch's record.
    pub history: Vec<EpochRecord>,
    /// The test slides' evaluation.
    pub evals: Vec<SlideEval>,
    /// The test metrics.
    pub metrics: FoldMetrics,
    /// The heatmap pictures written.
    pub heatmaps: Vec<PathBuf>,
}

/// Runs one fold: loads it onto the device, trains, evaluates the test slides and writes their
/// metrics, per-slide and per-tile tables and ROC curve into `<out>/test/`, with the heatmaps
/// and the other [`FoldOutputs`] asked for.
pub fn run_fold(fold: &Fold, progress: &mut dyn Progress) -> Result<FoldRun> {
    let started = Instant::now();
    let out = fold.out;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let (cohort, annotated) = load(fold.source, fold.config.feature_precision, fold.device)?;
    progress.loaded(&cohort, started.elapsed());
    if let (true, Some(ids)) = (fold.outputs.annotated_list, &annotated) {
        let list = out.join("annotated_slides.txt");
        std::fs::write(&list, ids.join("\n")).map_err(|e| TrainError::io(&list, e))?;
    }

    let mut trainer = Trainer::new(fold.config.clone(), &cohort, fold.device)?;
    let ckpt_dir = fold.outputs.checkpoints.then(|| checkpoint_dir(out));
    if let (true, Some(dir)) = (fold.outputs.resume, &ckpt_dir) {
        let last = dir.join("last.ckpt");
        if last.exists() {
            let state = checkpoint::load(&last, fold.device)?;
            trainer.restore(&state)?;
            log::info!(
                "resumed from {} after epoch {}",
                last.display(),
                trainer.epoch
            );
        }
    }
    progress.start(fold.name, trainer.epoch, fold.config.epochs);
    while !trainer.finished() {
        progress.epoch_start(trainer.steps_per_epoch());
        let record = trainer.train_epoch(ckpt_dir.as_deref(), |_, _| progress.step())?;
        progress.epoch_end(&record);
        if fold.outputs.history {
            write_json(&out.join("history.json"), &trainer.history)?;
        }
    }
    progress.finish();
    trainer.finish(ckpt_dir.as_deref())?;
    if fold.outputs.history {
        plots::write_training_curves_png(
            &out.join("training_curves.png"),
            &[("", &trainer.history)],
        )?;
    }

    // Test-set evaluation: the paper's metrics, per-slide and per-tile CSVs, heatmaps.
    let evals = trainer.evaluate(&cohort.test)?;
    let metrics = report::fold_metrics(&cohort.slides, &evals);
    report::write_fold(&out.join("test"), &cohort.slides, &evals, &metrics)?;
    let is_tumor = |e: &&SlideEval| cohort.slides[e.slide].label == TUMOR;
    let mut heatmaps = Vec::new();
    for e in evals
        .iter()
        .filter(is_tumor)
        .take(fold.outputs.tumor_heatmaps)
        .chain(
            evals
                .iter()
                .filter(|e| !is_tumor(e))
                .take(fold.outputs.normal_heatmaps),
        )
    {
        heatmaps.push(report::write_slide_heatmap(out, &cohort.slides, e)?);
    }
    let Trainer {
        net,
        epoch: epochs,
        history,
        ..
    } = trainer;
    Ok(FoldRun {
        cohort,
        annotated,
        net,
        epochs,
        history,
        evals,
        metrics,
        heatmaps,
    })
}

/// Writes `value` as pretty JSON to `path` atomically (a temporary file, renamed).
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| TrainError::Config(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}
