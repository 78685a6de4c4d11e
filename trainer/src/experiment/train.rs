//! The `train` command's job: one fold run with checkpoints after every epoch (resumable),
//! the history, heatmaps, `test_metrics.json`, and the trained network exported as
//! `model.mscl` with its training summary and embedding statistics.

use std::path::PathBuf;

use tch::Device;

use super::{run_fold, write_json, Fold, FoldOutputs, Progress, Source};
use crate::config::TrainConfig;
use crate::error::Result;
use crate::export::{export, training_statistics, ExportMetadata};

/// A training job.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The training configuration.
    pub config: TrainConfig,
    /// Where to train.
    pub device: Device,
    /// Output folder: checkpoints/, history.json, model.mscl, test/, test_metrics.json.
    pub out: PathBuf,
    /// Continue from `<out>/checkpoints/last.ckpt` if it exists.
    pub resume: bool,
    /// Where the slides come from.
    pub source: Source,
    /// The fold, as recorded in `test_metrics.json` and the model's training summary.
    pub fold: usize,
    /// Name of the embedder, recorded in the exported model.
    pub embedder_name: String,
}

/// Runs a training job.
pub fn train(job: &TrainJob, progress: &mut dyn Progress) -> Result<()> {
    log::info!(
        "device {:?}, method {:?}, {} epochs, sampler {:?}",
        job.device,
        job.config.method,
        job.config.epochs,
        job.config.sampler
    );
    let out = &job.out;
    let run = run_fold(
        &Fold {
            name: "",
            source: &job.source,
            config: job.config.clone(),
            device: job.device,
            out,
            outputs: FoldOutputs {
                checkpoints: true,
                resume: job.resume,
                history: true,
                annotated_list: true,
                tumor_heatmaps: 4,
                normal_heatmaps: 2,
            },
        },
        progress,
    )?;
    log::info!(
        "test ({} slides): {}",
        run.evals.len(),
        serde_json::to_string(&run.metrics).unwrap_or_default()
    );
    log::info!(
        "wrote {}/test/ (metrics, slides.csv, tiles.csv, roc.png), {}/training_curves.png and {} heatmaps in {}/heatmaps/",
        out.display(),
        out.display(),
        run.heatmaps.len(),
        out.display()
    );
    let summary =
        serde_json::json!({ "fold": job.fold, "epochs": run.epochs, "test": run.metrics });
    write_json(&out.join("test_metrics.json"), &summary)?;

    let training_summary = serde_json::json!({
        "config": job.config,
        "fold": job.fold,
        "last_epoch": run.history.last(),
        "test": summary,
    });
    let model_path = out.join("model.mscl");
    export(
        &run.net,
        &model_path,
        &ExportMetadata {
            embedder_name: job.embedder_name.clone(),
            training_summary: training_summary.to_string(),
            statistics: Some(training_statistics(&run.cohort, &run.cohort.train)?),
            ..Default::default()
        },
    )?;
    log::info!("exported {}", model_path.display());
    Ok(())
}
