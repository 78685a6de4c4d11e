//! `msclam-train`: trains MS-CLAM or CLAM-SB and exports `.mscl` models.
//!
//! The command line only: the argument structures, their conversion into the library's
//! settings, progress bars, and dispatch to `msclam_trainer::experiment` (and `export`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use msclam_trainer::config::{SizeName, TrainConfig};
use msclam_trainer::data::{Annotated, Cohort, FeaturePrecision, SplitSpec};
use msclam_trainer::experiment::ablation::{self, AblationSpec};
use msclam_trainer::experiment::demo::{self, DemoSpec};
use msclam_trainer::experiment::train::{self, TrainJob};
use msclam_trainer::experiment::{summary, Progress, Source};
use msclam_trainer::export::export_checkpoint;
use msclam_trainer::losses::AttentionLossMode;
use msclam_trainer::model::ModelKind;
use msclam_trainer::samplers::SamplerKind;
use msclam_trainer::synthetic::{self, Profile, SyntheticSpec};
use msclam_trainer::training::EpochRecord;
use msclam_trainer::{layout, select_device, DeviceChoice, Result, TrainError};

#[derive(Parser)]
#[command(
    name = "msclam-train",
    version,
    about = "Train MS-CLAM / CLAM-SB and export .mscl models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a cohort, evaluate it on the test split and export it.
    Train(Box<TrainArgs>),
    /// Export a checkpoint to a .mscl model.
    Export(ExportArgs),
    /// Write a generated cohort in the CLAM layout (dataset.csv, h5_files/, tile_labels/,
    /// splits/).
    Generate(GenerateArgs),
    /// Merge the test metrics of folds trained as separate jobs into mean / SD / SE and a
    /// table like the paper's.
    Merge(MergeArgs),
    /// The whole product on a small generated cohort: train CLAM-SB and MS-CLAM, export
    /// MS-CLAM, stream the test slides through the engine, print the comparison.
    Demo(DemoArgs),
    /// The paper's ablation grid over folds of a CLAM-layout cohort: annotation percentages,
    /// with and without the attention loss, the three samplers, and the CLAM-SB baseline.
    /// Folds already done (test/metrics.json present) are skipped, so it can be resumed.
    Ablation(AblationArgs),
}

#[derive(Args)]
struct AblationArgs {
    /// Cohort in the CLAM layout (with splits/splits_<k>.csv for every fold).
    #[arg(long)]
    cohort: PathBuf,
    /// Output folder: <out>/<run>/fold<k>/, summary.md, summary.json.
    #[arg(long)]
    out: PathBuf,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Epochs per run.
    #[arg(long, default_value_t = 90)]
    epochs: usize,
    /// `full`: every annotation % with and without attention loss, three samplers, CLAM-SB;
    /// `small`: CLAM-SB, MS-CLAM at 0/12/100 %, 12 % without attention loss, 12 % with
    /// RandSamp and DoubleSamp; `baseline`: CLAM-SB only (for calibrating a cohort).
    #[arg(long, default_value = "full")]
    grid: String,
    /// B+ (the paper: 1024 for Camelyon16).
    #[arg(long, default_value_t = 1024)]
    b_plus: usize,
    /// Model size.
    #[arg(long, value_enum, default_value = "small")]
    size: SizeName,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Slides in the generated cohort.
    #[arg(long, default_value_t = 90)]
    slides: usize,
    /// Mean tiles per slide.
    #[arg(long, default_value_t = 600)]
    tiles: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Training epochs per method.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// k for MS-CLAM's annotated slides (10: the paper's "12 %" run).
    #[arg(long, default_value_t = 10.0)]
    annotated_percent: f64,
    /// Tiles per strip when streaming through the engine.
    #[arg(long, default_value_t = 64)]
    strip: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct MergeArgs {
    /// Run folders (each written by `train`), grouped into table rows by their parent folder.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write summary.json and summary.md.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct GenerateArgs {
    /// Folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Number of slides.
    #[arg(long, default_value_t = 100)]
    slides: usize,
    /// Mean tiles per slide.
    #[arg(long, default_value_t = 1000)]
    tiles: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 1024)]
    dim: usize,
    /// Tumor fraction profile.
    #[arg(long, value_enum, default_value = "camelyon16")]
    profile: Profile,
    /// Tumor signal strength (the difficulty knob).
    #[arg(long, default_value_t = SyntheticSpec::default().signal)]
    signal: f64,
    /// Fraction of normal tiles that carry part of the tumor signal.
    #[arg(long, default_value_t = SyntheticSpec::default().mimic_fraction)]
    mimic_fraction: f64,
    /// Fraction of slides with a tumor-like region of normal tissue.
    #[arg(long, default_value_t = SyntheticSpec::default().mimic_region_fraction)]
    mimic_region_fraction: f64,
    /// Mean share of a slide's tiles that a tumor-like region covers.
    #[arg(long, default_value_t = SyntheticSpec::default().mimic_region_size)]
    mimic_region_size: f64,
    /// Fraction of tumor slides whose annotation covers only part of the tumor (listed in
    /// exclusions.csv).
    #[arg(long, default_value_t = SyntheticSpec::default().incomplete_fraction)]
    incomplete_fraction: f64,
    /// Number of scanning centres.
    #[arg(long, default_value_t = SyntheticSpec::default().centres)]
    centres: usize,
    /// Per-slide stain shift (standard deviation of each feature's offset).
    #[arg(long, default_value_t = SyntheticSpec::default().slide_shift)]
    slide_shift: f64,
    /// Per-slide tissue composition spread (offset of the shared low-rank factors).
    #[arg(long, default_value_t = SyntheticSpec::default().composition_spread)]
    composition_spread: f64,
    /// Number of cross-validation folds (split files).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct TrainArgs {
    /// TOML file with training settings (flags given here override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder: checkpoints/, history.json, model.mscl, test_metrics.json.
    #[arg(long)]
    out: PathBuf,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Continue from <out>/checkpoints/last.ckpt if it exists (bit-identical to an
    /// uninterrupted run on the CPU with --threads 1).
    #[arg(long)]
    resume: bool,
    /// Method to train.
    #[arg(long, value_enum)]
    method: Option<ModelKind>,
    /// Model size.
    #[arg(long, value_enum)]
    size: Option<SizeName>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Slide sampler.
    #[arg(long, value_enum)]
    sampler: Option<SamplerKind>,
    /// Attention loss terms.
    #[arg(long, value_enum)]
    attention_loss: Option<AttentionLossMode>,
    /// Turn dropout off.
    #[arg(long)]
    no_dropout: bool,
    /// Early stopping on the validation slide loss.
    #[arg(long)]
    early_stopping: bool,
    /// B+ (tumor tiles drawn from an annotated slide).
    #[arg(long)]
    b_plus: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// CPU threads for libtorch.
    #[arg(long)]
    threads: Option<usize>,
    /// Keep features as f32 or f16 in memory.
    #[arg(long, value_enum)]
    feature_precision: Option<FeaturePrecisionArg>,
    /// k: tile labels are used for round(k / 100 x tumor slides of train + val) training tumor
    /// slides (the method notes' rule; the paper's 12/25/62/100 % runs are k = 10/20/50/80).
    #[arg(long, default_value_t = 10.0)]
    annotated_percent: f64,
    /// A cohort in the CLAM layout (dataset.csv, h5_files/, tile_labels/, splits/); without
    /// it a cohort is generated from the --synthetic-* settings.
    #[arg(long)]
    cohort: Option<PathBuf>,
    /// Fold to train (splits/splits_<fold>.csv).
    #[arg(long, default_value_t = 0)]
    fold: usize,
    /// File listing the slides whose tile labels are used (one slide id per line), instead of
    /// --annotated-percent.
    #[arg(long)]
    annotated_list: Option<PathBuf>,
    /// Generated cohort: number of slides.
    #[arg(long, default_value_t = 60)]
    synthetic_slides: usize,
    /// Generated cohort: mean tiles per slide.
    #[arg(long, default_value_t = 400)]
    synthetic_tiles: usize,
    /// Generated cohort: embedding dimension.
    #[arg(long, default_value_t = 1024)]
    synthetic_dim: usize,
    /// Generated cohort: tumor fraction profile.
    #[arg(long, value_enum, default_value = "camelyon16")]
    synthetic_profile: Profile,
    /// Generated cohort: tumor signal strength.
    #[arg(long, default_value_t = SyntheticSpec::default().signal)]
    synthetic_signal: f64,
    /// Name of the embedder, recorded in the exported model.
    #[arg(long, default_value = "synthetic")]
    embedder_name: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FeaturePrecisionArg {
    F32,
    F16,
}

#[derive(Args)]
struct ExportArgs {
    /// Checkpoint written by `train` (e.g. <out>/checkpoints/last.ckpt).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The .mscl file to write.
    #[arg(long)]
    out: PathBuf,
    /// Name of the embedder the model was trained on.
    #[arg(long)]
    embedder_name: String,
    /// Element type of the large matrices: f32, or bf16 or f16 (half the bytes the engine
    /// reads per tile; f16 keeps 11 significant bits, bf16 8 but f32's range), or int8 (a
    /// quarter of the bytes, a scale per output row; the engine quantizes each tile's inputs
    /// to 8 bits and runs integer kernels).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
    Int8,
}

impl From<DtypeArg> for msclam_engine::format::Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Self::F32,
            DtypeArg::F16 => Self::F16,
            DtypeArg::Bf16 => Self::Bf16,
            DtypeArg::Int8 => Self::Int8,
        }
    }
}

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,msclam_engine=warn"),
    )
    .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(*args),
        Command::Export(args) => export_model(args),
        Command::Generate(args) => generate_cohort(args),
        Command::Merge(args) => summary::merge(&args.runs, &args.out),
        Command::Demo(args) => demo(args),
        Command::Ablation(args) => ablation(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn config_from(args: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &args.config {
        Some(path) => TrainConfig::from_toml(
            &std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?,
        )?,
        None => TrainConfig::default(),
    };
    if let Some(m) = args.method {
        if m == ModelKind::ClamSb && args.config.is_none() {
            c = TrainConfig {
                seed: c.seed,
                ..TrainConfig::clam_sb()
            };
        }
        c.method = m;
    }
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = args.$field { c.$field = v; })* };
    }
    set!(
        size,
        epochs,
        lr,
        sampler,
        attention_loss,
        b_plus,
        seed,
        threads
    );
    if args.no_dropout {
        c.dropout = false;
    }
    if args.early_stopping {
        c.early_stopping = true;
    }
    if let Some(p) = args.feature_precision {
        c.feature_precision = match p {
            FeaturePrecisionArg::F32 => FeaturePrecision::F32,
            FeaturePrecisionArg::F16 => FeaturePrecision::F16,
        };
    }
    c.validate()?;
    Ok(c)
}

/// Where `train`'s slides come from: a CLAM-layout cohort's fold, or a generated cohort
/// (seeded, like its split and annotated subset, with the configuration's seed).
fn source_from(args: &TrainArgs, config: &TrainConfig) -> Result<Source> {
    Ok(match &args.cohort {
        Some(root) => Source::Layout {
            root: root.clone(),
            fold: args.fold,
            annotated: match &args.annotated_list {
                Some(list) => Annotated::read_list(list)?,
                None => Annotated::Percent(args.annotated_percent, config.seed),
            },
        },
        None => Source::Synthetic {
            spec: SyntheticSpec {
                slides: args.synthetic_slides,
                tiles_per_slide: args.synthetic_tiles,
                dim: args.synthetic_dim,
                profile: args.synthetic_profile,
                signal: args.synthetic_signal,
                seed: config.seed,
                ..SyntheticSpec::default()
            },
            split: SplitSpec {
                val_fraction: 0.2,
                test_fraction: 0.2,
                annotated_percent: args.annotated_percent,
                seed: config.seed,
            },
        },
    })
}

fn train(args: TrainArgs) -> Result<()> {
    let config = config_from(&args)?;
    let device = select_device(args.device)?;
    let job = TrainJob {
        source: source_from(&args, &config)?,
        config,
        device,
        out: args.out,
        resume: args.resume,
        fold: args.fold,
        embedder_name: args.embedder_name,
    };
    train::train(&job, &mut TrainBars::default())
}

/// `train`'s progress: a bar of epochs and a bar of the epoch's steps, and a log line per
/// epoch.
#[derive(Default)]
struct TrainBars {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
}

impl Progress for TrainBars {
    fn loaded(&mut self, cohort: &Cohort, elapsed: Duration) {
        let annotated = cohort
            .train
            .iter()
            .filter(|&&i| cohort.slides[i].tile_labels.is_some())
            .count();
        log::info!(
            "cohort: {} slides ({} train, {} val, {} test), {} tiles, D = {}, {annotated} training slides with tile labels, made in {:.1} s",
            cohort.slides.len(),
            cohort.train.len(),
            cohort.val.len(),
            cohort.test.len(),
            cohort.tiles(&(0..cohort.slides.len()).collect::<Vec<_>>()),
            cohort.dim,
            elapsed.as_secs_f64()
        );
    }

    fn start(&mut self, _run: &str, done: usize, epochs: usize) {
        let bars = MultiProgress::new();
        let epoch_bar = bars.add(ProgressBar::new(epochs as u64));
        epoch_bar.set_style(
            ProgressStyle::with_template("epochs {bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        epoch_bar.set_position(done as u64);
        let step_bar = bars.add(ProgressBar::new(0));
        step_bar.set_style(
            ProgressStyle::with_template("steps  {bar:30} {pos}/{len} {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bars = Some((bars, epoch_bar, step_bar));
    }

    fn epoch_start(&mut self, steps: usize) {
        if let Some((_, _, step_bar)) = &self.bars {
            step_bar.set_length(steps as u64);
            step_bar.set_position(0);
        }
    }

    fn step(&mut self) {
        if let Some((_, _, step_bar)) = &self.bars {
            step_bar.inc(1);
        }
    }

    fn epoch_end(&mut self, record: &EpochRecord) {
        if let Some((_, epoch_bar, _)) = &self.bars {
            epoch_bar.inc(1);
            epoch_bar.set_message(format!(
                "val loss {:.4} AUC {:.3}",
                record.val_loss, record.val_auc
            ));
        }
        log::info!(
            "epoch {:>3}: train loss {:.4} ({:.1} s), val loss {:.4}, val AUC {:.3}, val error {:.3}, Latt normal {:.3}, tumor {:.3}",
            record.epoch,
            record.train_loss,
            record.train_seconds,
            record.val_loss,
            record.val_auc,
            record.val_error,
            record.val_att_normal,
            record.val_att_tumor
        );
    }

    fn finish(&mut self) {
        if let Some((_, epoch_bar, step_bar)) = self.bars.take() {
            step_bar.finish_and_clear();
            epoch_bar.finish();
        }
    }
}

/// The demo's progress: a bar of epochs per method, cleared when it is trained.
#[derive(Default)]
struct DemoBar {
    bar: Option<ProgressBar>,
}

impl Progress for DemoBar {
    fn start(&mut self, run: &str, _done: usize, epochs: usize) {
        let bar = ProgressBar::new(epochs as u64);
        bar.set_style(
            ProgressStyle::with_template("      {msg:28} {bar:30} {pos}/{len} epochs")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(run.to_owned());
        self.bar = Some(bar);
    }

    fn epoch_end(&mut self, _record: &EpochRecord) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn demo(args: DemoArgs) -> Result<()> {
    let spec = DemoSpec {
        out: args.out,
        slides: args.slides,
        tiles: args.tiles,
        dim: args.dim,
        epochs: args.epochs,
        annotated_percent: args.annotated_percent,
        strip: args.strip,
        seed: args.seed,
    };
    demo::demo(
        &spec,
        select_device(DeviceChoice::Auto)?,
        &mut DemoBar::default(),
    )
}

fn ablation(args: AblationArgs) -> Result<()> {
    let spec = AblationSpec {
        cohort: args.cohort,
        out: args.out,
        folds: args.folds,
        epochs: args.epochs,
        grid: args.grid,
        b_plus: args.b_plus,
        size: args.size,
        seed: args.seed,
    };
    ablation::ablation(&spec, select_device(DeviceChoice::Auto)?)
}

fn generate_cohort(args: GenerateArgs) -> Result<()> {
    let spec = SyntheticSpec {
        slides: args.slides,
        tiles_per_slide: args.tiles,
        dim: args.dim,
        profile: args.profile,
        signal: args.signal,
        mimic_fraction: args.mimic_fraction,
        mimic_region_fraction: args.mimic_region_fraction,
        mimic_region_size: args.mimic_region_size,
        incomplete_fraction: args.incomplete_fraction,
        centres: args.centres,
        slide_shift: args.slide_shift,
        composition_spread: args.composition_spread,
        seed: args.seed,
        ..SyntheticSpec::default()
    };
    let slides = synthetic::generate(&spec);
    layout::write_synthetic(&args.out, &slides, args.folds, args.seed)?;
    println!(
        "wrote {} slides in the CLAM layout to {}",
        slides.len(),
        args.out.display()
    );
    Ok(())
}

fn export_model(args: ExportArgs) -> Result<()> {
    let epoch = export_checkpoint(
        &args.checkpoint,
        &args.out,
        &args.embedder_name,
        args.dtype.into(),
    )?;
    println!("exported {} (epoch {epoch})", args.out.display());
    Ok(())
}
