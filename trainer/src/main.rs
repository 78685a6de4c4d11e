//! `msclam-train`: trains MS-CLAM or CLAM-SB and exports `.mscl` models.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use msclam_trainer::config::{SizeName, TrainConfig};
use msclam_trainer::data::{self, FeaturePrecision, SplitSpec, TUMOR};
use msclam_trainer::export::{export, training_statistics, ExportMetadata};
use msclam_trainer::losses::AttentionLossMode;
use msclam_trainer::model::ModelKind;
use msclam_trainer::samplers::SamplerKind;
use msclam_trainer::synthetic::{self, Profile, SyntheticSpec};
use msclam_trainer::training::{checkpoint_dir, Trainer};
use msclam_trainer::{
    checkpoint, cohort, plots, report, select_device, DeviceChoice, Result, TrainError,
};

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
        Command::Export(args) => export_checkpoint(args),
        Command::Generate(args) => generate_cohort(args),
        Command::Merge(args) => merge(args),
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

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| TrainError::Config(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn train(args: TrainArgs) -> Result<()> {
    let config = config_from(&args)?;
    let device = select_device(args.device)?;
    log::info!(
        "device {device:?}, method {:?}, {} epochs, sampler {:?}",
        config.method,
        config.epochs,
        config.sampler
    );
    std::fs::create_dir_all(&args.out).map_err(|e| TrainError::io(&args.out, e))?;

    let started = Instant::now();
    let cohort = match &args.cohort {
        Some(root) => {
            let annotated = match &args.annotated_list {
                Some(list) => cohort::Annotated::List(
                    std::fs::read_to_string(list)
                        .map_err(|e| TrainError::io(list, e))?
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ),
                None => cohort::Annotated::Percent(args.annotated_percent, config.seed),
            };
            let layout = cohort::ClamLayout::under(root);
            let (tiles, dim) = cohort::count_tiles(&layout, args.fold)?;
            check_memory(tiles, dim, config.feature_precision, device)?;
            let (cohort, annotated) = cohort::load(
                &layout,
                args.fold,
                &annotated,
                config.feature_precision,
                device,
            )?;
            let list = args.out.join("annotated_slides.txt");
            std::fs::write(&list, annotated.join("\n")).map_err(|e| TrainError::io(&list, e))?;
            cohort
        }
        None => synthetic_cohort(&args, &config, device)?,
    };
    train_on(args, config, device, cohort, started)
}

/// Refuses, before anything is loaded, a cohort that will not fit on the training device.
fn check_memory(
    tiles: usize,
    dim: usize,
    precision: FeaturePrecision,
    device: tch::Device,
) -> Result<()> {
    let place = match device {
        tch::Device::Cuda(i) => format!("GPU {i}"),
        _ => "this machine's memory".to_owned(),
    };
    match data::device_available_bytes(device) {
        Some(available) => data::check_fits(tiles, dim, precision, available, &place),
        None => {
            log::warn!("cannot read the free memory of {place}: not checking that the cohort fits");
            Ok(())
        }
    }
}

fn synthetic_cohort(
    args: &TrainArgs,
    config: &TrainConfig,
    device: tch::Device,
) -> Result<data::Cohort> {
    let spec = SyntheticSpec {
        slides: args.synthetic_slides,
        tiles_per_slide: args.synthetic_tiles,
        dim: args.synthetic_dim,
        profile: args.synthetic_profile,
        signal: args.synthetic_signal,
        seed: config.seed,
        ..SyntheticSpec::default()
    };
    let expected_tiles = spec.slides * spec.tiles_per_slide * 3 / 2; // worst case of the +-50 % spread
    check_memory(expected_tiles, spec.dim, config.feature_precision, device)?;
    let slides = synthetic::generate(&spec);
    let split = SplitSpec {
        val_fraction: 0.2,
        test_fraction: 0.2,
        annotated_percent: args.annotated_percent,
        seed: config.seed,
    };
    data::cohort_from_synthetic(slides, &split, config.feature_precision, device)
}

fn train_on(
    args: TrainArgs,
    config: TrainConfig,
    device: tch::Device,
    cohort: data::Cohort,
    started: Instant,
) -> Result<()> {
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
        started.elapsed().as_secs_f64()
    );

    let mut trainer = Trainer::new(config.clone(), &cohort, device)?;
    let ckpt_dir = checkpoint_dir(&args.out);
    let last = ckpt_dir.join("last.ckpt");
    if args.resume && last.exists() {
        let state = checkpoint::load(&last, device)?;
        trainer.restore(&state)?;
        log::info!(
            "resumed from {} after epoch {}",
            last.display(),
            trainer.epoch
        );
    }

    let bars = MultiProgress::new();
    let epoch_bar = bars.add(ProgressBar::new(config.epochs as u64));
    epoch_bar.set_style(
        ProgressStyle::with_template("epochs {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    epoch_bar.set_position(trainer.epoch as u64);
    let step_bar = bars.add(ProgressBar::new(0));
    step_bar.set_style(
        ProgressStyle::with_template("steps  {bar:30} {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while !trainer.finished() {
        step_bar.set_length(trainer.steps_per_epoch() as u64);
        step_bar.set_position(0);
        let record = trainer.train_epoch(Some(&ckpt_dir), |_, _| step_bar.inc(1))?;
        epoch_bar.inc(1);
        epoch_bar.set_message(format!(
            "val loss {:.4} AUC {:.3}",
            record.val_loss, record.val_auc
        ));
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
        write_json(&args.out.join("history.json"), &trainer.history)?;
    }
    step_bar.finish_and_clear();
    epoch_bar.finish();
    trainer.finish(Some(&ckpt_dir))?;
    plots::write_training_curves_png(
        &args.out.join("training_curves.png"),
        &[("", &trainer.history)],
    )?;

    // Test-set evaluation: the paper's metrics, per-slide and per-tile CSVs, heatmaps.
    let evals = trainer.evaluate(&cohort.test)?;
    let fold_metrics = report::fold_metrics(&cohort.slides, &evals);
    report::write_fold(
        &args.out.join("test"),
        &cohort.slides,
        &evals,
        &fold_metrics,
    )?;
    let mut pictures = 0;
    for e in evals
        .iter()
        .filter(|e| cohort.slides[e.slide].label == TUMOR)
        .take(4)
        .chain(
            evals
                .iter()
                .filter(|e| cohort.slides[e.slide].label != TUMOR)
                .take(2),
        )
    {
        report::write_slide_heatmap(&args.out, &cohort.slides, e)?;
        pictures += 1;
    }
    log::info!(
        "test ({} slides): {}",
        evals.len(),
        serde_json::to_string(&fold_metrics).unwrap_or_default()
    );
    log::info!(
        "wrote {}/test/ (metrics, slides.csv, tiles.csv, roc.png), {}/training_curves.png and {pictures} heatmaps in {}/heatmaps/",
        args.out.display(),
        args.out.display(),
        args.out.display()
    );
    let summary =
        serde_json::json!({ "fold": args.fold, "epochs": trainer.epoch, "test": fold_metrics });
    write_json(&args.out.join("test_metrics.json"), &summary)?;

    let training_summary = serde_json::json!({
        "config": config,
        "fold": args.fold,
        "last_epoch": trainer.history.last(),
        "test": summary,
    });
    let model_path = args.out.join("model.mscl");
    export(
        &trainer.net,
        &model_path,
        &ExportMetadata {
            embedder_name: args.embedder_name.clone(),
            training_summary: training_summary.to_string(),
            statistics: Some(training_statistics(&cohort, &cohort.train)?),
            ..Default::default()
        },
    )?;
    log::info!("exported {}", model_path.display());
    Ok(())
}

fn demo(args: DemoArgs) -> Result<()> {
    let total = Instant::now();
    let device = select_device(DeviceChoice::Auto)?;
    println!("msclam demo: {} slides x ~{} tiles x {} features (Camelyon16-like tumor fractions), device {device:?}", args.slides, args.tiles, args.dim);
    println!("(1 fold and {} epochs per method instead of the paper's 5 folds and 90 epochs, to finish in minutes on a CPU)\n", args.epochs);

    // 1. A cohort in the CLAM layout.
    let root = args.out.join("cohort");
    let spec = SyntheticSpec {
        slides: args.slides,
        tiles_per_slide: args.tiles,
        dim: args.dim,
        seed: args.seed,
        ..SyntheticSpec::default()
    };
    cohort::write_synthetic(&root, &synthetic::generate(&spec), 1, args.seed)?;
    println!(
        "[1/4] wrote the cohort in the CLAM layout to {}",
        root.display()
    );

    // 2. Train both methods on fold 0 and evaluate them on the test split.
    let layout = cohort::ClamLayout::under(&root);
    let mut rows = Vec::new();
    let mut finished = Vec::new();
    for (name, config, percent) in [
        (
            "CLAM-SB (weak supervision)",
            TrainConfig {
                epochs: args.epochs,
                size: SizeName::Small,
                threads: 0,
                seed: args.seed,
                ..TrainConfig::clam_sb()
            },
            0.0,
        ),
        (
            "MS-CLAM",
            TrainConfig {
                epochs: args.epochs,
                size: SizeName::Small,
                b_plus: 256,
                seed: args.seed,
                ..TrainConfig::default()
            },
            args.annotated_percent,
        ),
    ] {
        let started = Instant::now();
        let (data, annotated) = cohort::load(
            &layout,
            0,
            &cohort::Annotated::Percent(percent, args.seed),
            config.feature_precision,
            device,
        )?;
        let mut trainer = Trainer::new(config, &data, device)?;
        let bar = ProgressBar::new(args.epochs as u64);
        bar.set_style(
            ProgressStyle::with_template("      {msg:28} {bar:30} {pos}/{len} epochs")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(name.to_owned());
        trainer.train(None, |_| bar.inc(1))?;
        bar.finish_and_clear();
        let evals = trainer.evaluate(&data.test)?;
        let m = report::fold_metrics(&data.slides, &evals);
        let dir = args
            .out
            .join(if percent > 0.0 { "ms-clam" } else { "clam-sb" });
        report::write_fold(&dir.join("test"), &data.slides, &evals, &m)?;
        let mut written = Vec::new();
        for e in evals
            .iter()
            .filter(|e| data.slides[e.slide].label == TUMOR)
            .take(3)
        {
            written.push(report::write_slide_heatmap(&dir, &data.slides, e)?);
        }
        println!(
            "[2/4] {name}: trained {} epochs on {} slides ({} with tile labels) in {:.0} s; test slide AUC {:.3}, tile Dice {:.3}",
            args.epochs,
            data.train.len(),
            annotated.len(),
            started.elapsed().as_secs_f64(),
            m.slide_auc,
            m.dice_tumor
        );
        for p in &written {
            println!("      heatmap: {}", p.display());
        }
        let tumor_train = data
            .train
            .iter()
            .filter(|&&i| data.slides[i].label == TUMOR)
            .count();
        rows.push((
            format!(
                "{name}, {} of {tumor_train} training tumor slides annotated",
                annotated.len()
            ),
            vec![m],
        ));
        if percent > 0.0 {
            stream_through_engine(&trainer.net, &data, &evals, &dir, args.strip)?;
        }
        let short = name.split(' ').next().unwrap_or(name);
        finished.push((short, trainer.history.clone(), data, evals));
    }
    let roc_path = args.out.join("roc.png");
    let runs: Vec<(&str, &[data::Slide], &[_])> = finished
        .iter()
        .map(|(name, _, data, evals)| (*name, data.slides.as_slice(), evals.as_slice()))
        .collect();
    report::write_roc(&roc_path, &runs)?;
    let curves_path = args.out.join("training_curves.png");
    let histories: Vec<(&str, &[_])> = finished
        .iter()
        .map(|(name, history, _, _)| (*name, history.as_slice()))
        .collect();
    plots::write_training_curves_png(&curves_path, &histories)?;
    println!(
        "      ROC curves: {}\n      training curves: {}",
        roc_path.display(),
        curves_path.display()
    );

    // 4. The comparison.
    println!("\n[4/4] test split of fold 0:\n");
    println!("{}", report::table(&rows));
    println!(
        "demo finished in {:.0} s; outputs in {}",
        total.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// Step 3 of the demo: export MS-CLAM and stream the test slides through the engine, strip
/// by strip, checking the engine against the trainer.
fn stream_through_engine(
    net: &msclam_trainer::model::Network,
    data: &data::Cohort,
    evals: &[msclam_trainer::training::SlideEval],
    dir: &Path,
    strip_tiles: usize,
) -> Result<()> {
    use msclam_engine::{Model, SlideSession};
    let model_path = dir.join("model.mscl");
    export(
        net,
        &model_path,
        &ExportMetadata {
            embedder_name: "synthetic".into(),
            training_summary: "msclam demo".into(),
            statistics: Some(training_statistics(data, &data.train)?),
            ..Default::default()
        },
    )?;
    let model = std::sync::Arc::new(Model::load(&model_path)?);
    let capacity = data
        .test
        .iter()
        .map(|&i| data.slides[i].num_tiles)
        .max()
        .unwrap_or(1);
    let mut session = SlideSession::new(model, capacity)?;
    let (mut streamed, mut worst) = (0usize, 0.0f64);
    let mut outside: Vec<f32> = Vec::new();
    let stream_started = Instant::now();
    for (k, e) in evals.iter().enumerate() {
        let s = &data.slides[e.slide];
        let features =
            Vec::<f32>::try_from(s.features_f32().to_device(tch::Device::Cpu).view([-1]))?;
        session.reset();
        let mut scores = Vec::new();
        for (strip, coords) in features
            .chunks(strip_tiles * data.dim)
            .zip(s.coords.chunks(strip_tiles))
        {
            scores.extend(session.push(strip, Some(coords))?.slide_tumor_probability);
        }
        let r = session.finalize()?;
        outside.extend(r.out_of_distribution_fraction);
        worst = worst.max((r.tumor_probability as f64 - e.probabilities[TUMOR]).abs());
        for (a, b) in r.tile_probabilities.iter().zip(&e.tile_probabilities) {
            worst = worst.max((a - b).abs() as f64);
        }
        streamed += s.num_tiles;
        if k == 0 {
            let shown: Vec<String> = scores.iter().map(|p| format!("{p:.3}")).collect();
            println!("[3/4] engine, slide {} (label {}), slide P(tumor) after each strip of {strip_tiles}: {}", s.id, s.label, shown.join(" "));
        }
    }
    let secs = stream_started.elapsed().as_secs_f64();
    println!(
        "      streamed {} test slides ({streamed} tiles) through {} in {secs:.2} s ({:.0} tiles/s); largest difference from the trainer: {worst:.1e}",
        evals.len(),
        model_path.display(),
        streamed as f64 / secs
    );
    if !outside.is_empty() {
        let mean = outside.iter().sum::<f32>() / outside.len() as f32;
        let max = outside.iter().copied().fold(0.0f32, f32::max);
        println!(
            "      out-of-distribution tiles (embedding statistics of the training slides): mean share {mean:.4}, largest {max:.4} (scores are not to be trusted above {})",
            msclam_engine::statistics::UNTRUSTED_FRACTION
        );
    }
    compare_half_precision(net, data, evals, dir, &model_path, capacity)
}

/// The demo's MS-CLAM exported with bf16, f16 and int8 matrices, against the f32 export on
/// every test slide: largest differences, tiles that change side of the mask threshold,
/// slides that change class. bf16 with both kernels where the CPU has them (widened; AVX-512
/// BF16 dot products).
fn compare_half_precision(
    net: &msclam_trainer::model::Network,
    data: &data::Cohort,
    evals: &[msclam_trainer::training::SlideEval],
    dir: &Path,
    f32_path: &Path,
    capacity: usize,
) -> Result<()> {
    use msclam_engine::{format::Dtype, Model, SessionOptions, SlideSession};
    let f32_model = std::sync::Arc::new(Model::load(f32_path)?);
    let mut reference = SlideSession::new(f32_model, capacity)?;
    for (dtype, name, bf16_dot) in [
        (Dtype::Bf16, "bf16", false),
        (Dtype::Bf16, "bf16", true),
        (Dtype::F16, "f16", false),
        (Dtype::Int8, "int8", false),
    ] {
        let path = dir.join(format!("model_{name}.mscl"));
        export(
            net,
            &path,
            &ExportMetadata {
                embedder_name: "synthetic".into(),
                training_summary: format!("msclam demo ({name})"),
                dtype: Some(dtype),
                ..Default::default()
            },
        )?;
        let model = std::sync::Arc::new(Model::load(&path)?);
        let options = SessionOptions {
            bf16_dot,
            ..SessionOptions::default()
        };
        let mut session = SlideSession::with_options(model, capacity, options)?;
        if session.uses_bf16_dot() != bf16_dot {
            continue;
        }
        let (mut tile_worst, mut slide_worst, mut flips, mut class_changes, mut tiles) =
            (0.0f64, 0.0f64, 0usize, 0usize, 0usize);
        for e in evals {
            let s = &data.slides[e.slide];
            let features =
                Vec::<f32>::try_from(s.features_f32().to_device(tch::Device::Cpu).view([-1]))?;
            reference.reset();
            reference.push(&features, None)?;
            session.reset();
            session.push(&features, None)?;
            let (a, b) = (reference.finalize()?, session.finalize()?);
            slide_worst = slide_worst.max((a.tumor_probability - b.tumor_probability).abs() as f64);
            class_changes += usize::from(a.predicted_class != b.predicted_class);
            for ((p, q), (m, n)) in a
                .tile_probabilities
                .iter()
                .zip(b.tile_probabilities)
                .zip(a.tile_mask.iter().zip(b.tile_mask))
            {
                tile_worst = tile_worst.max((p - q).abs() as f64);
                flips += usize::from(m != n);
            }
            tiles += s.num_tiles;
        }
        let kernels = match (dtype, bf16_dot) {
            (Dtype::Int8, _) => "integer kernels, inputs quantized per tile",
            (_, true) => "AVX-512 BF16 dot products",
            _ => "widened to f32",
        };
        println!(
            "      {name} weights ({kernels}) against f32 on the {} test slides: largest tile probability difference {tile_worst:.1e}, slide {slide_worst:.1e}; {flips} of {tiles} tiles change side of the mask threshold; {class_changes} slides change class",
            evals.len()
        );
    }
    Ok(())
}

/// The runs of an ablation grid: (name, configuration, annotation percentage).
fn ablation_grid(grid: &str, base: &TrainConfig) -> Result<Vec<(String, TrainConfig, f64)>> {
    let ms = |sampler: SamplerKind, att: AttentionLossMode| TrainConfig {
        sampler,
        attention_loss: att,
        ..base.clone()
    };
    let clam = TrainConfig {
        epochs: base.epochs,
        size: base.size,
        seed: base.seed,
        ..TrainConfig::clam_sb()
    };
    let mut runs = vec![("clam-sb".to_owned(), clam, 0.0)];
    if grid == "baseline" {
        // CLAM-SB alone: what the synthetic cohort's difficulty is calibrated on.
        return Ok(runs);
    }
    // The paper labels runs by the share of a fold's training tumor slides that are annotated
    // (0/6/12/25/62/100 %); the method notes' selection rule takes k % of the tumor slides of
    // train + val, so those labels are k = 0/5/10/20/50/80 (Camelyon16: 111 tumor slides in
    // train + val, 89 in a fold's training part).
    let labelled: &[(u32, f64)] = match grid {
        "full" => &[
            (0, 0.0),
            (6, 5.0),
            (12, 10.0),
            (25, 20.0),
            (62, 50.0),
            (100, 80.0),
        ],
        "small" => &[(0, 0.0), (12, 10.0), (100, 80.0)],
        other => {
            return Err(TrainError::Config(format!(
                "unknown grid `{other}` (full, small or baseline)"
            )))
        }
    };
    for &(label, k) in labelled {
        runs.push((
            format!("ms-clam-{label}pct"),
            ms(SamplerKind::Ew, AttentionLossMode::Total),
            k,
        ));
    }
    let no_att: &[(u32, f64)] = if grid == "full" {
        labelled
    } else {
        &[(12, 10.0)]
    };
    for &(label, k) in no_att {
        runs.push((
            format!("ms-clam-{label}pct-no-att"),
            ms(SamplerKind::Ew, AttentionLossMode::Off),
            k,
        ));
    }
    runs.push((
        "ms-clam-12pct-randsamp".to_owned(),
        ms(SamplerKind::Rand, AttentionLossMode::Total),
        10.0,
    ));
    runs.push((
        "ms-clam-12pct-doublesamp".to_owned(),
        ms(SamplerKind::Double, AttentionLossMode::Total),
        10.0,
    ));
    Ok(runs)
}

fn ablation(args: AblationArgs) -> Result<()> {
    let device = select_device(DeviceChoice::Auto)?;
    let base = TrainConfig {
        epochs: args.epochs,
        size: args.size,
        b_plus: args.b_plus,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let runs = ablation_grid(&args.grid, &base)?;
    let layout = cohort::ClamLayout::under(&args.cohort);
    let started = Instant::now();
    let mut rows = Vec::new();
    for (name, config, percent) in &runs {
        let mut folds = Vec::new();
        for fold in 0..args.folds {
            let dir = args.out.join(name).join(format!("fold{fold}"));
            let metrics_path = dir.join("test").join("metrics.json");
            if let Ok(text) = std::fs::read_to_string(&metrics_path) {
                if let Ok(m) = serde_json::from_str::<report::FoldMetrics>(&text) {
                    folds.push(m);
                    continue;
                }
            }
            let t = Instant::now();
            let (data, annotated) = cohort::load(
                &layout,
                fold,
                &cohort::Annotated::Percent(*percent, args.seed + fold as u64),
                config.feature_precision,
                device,
            )?;
            let mut trainer = Trainer::new(config.clone(), &data, device)?;
            trainer.train(None, |_| {})?;
            let evals = trainer.evaluate(&data.test)?;
            let m = report::fold_metrics(&data.slides, &evals);
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
            write_json(&dir.join("history.json"), &trainer.history)?;
            plots::write_training_curves_png(
                &dir.join("training_curves.png"),
                &[("", &trainer.history)],
            )?;
            let list = dir.join("annotated_slides.txt");
            std::fs::write(&list, annotated.join("\n")).map_err(|e| TrainError::io(&list, e))?;
            report::write_fold(&dir.join("test"), &data.slides, &evals, &m)?;
            println!(
                "{name} fold {fold}: slide AUC {:.3}, Dice {:.3}, tile AUC {:.3} ({:.0} s; {:.0} s so far)",
                m.slide_auc,
                m.dice_tumor,
                m.tile_auc,
                t.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            folds.push(m);
        }
        rows.push((name.clone(), folds));
    }
    write_summary(&args.out, &rows)?;
    println!(
        "ablation: {} runs x {} folds in {:.0} s",
        rows.len(),
        args.folds,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes `summary.json` (per-fold metrics, mean, SD, SE) and `summary.md` (the paper-shaped
/// table) into `out`, and prints the table.
fn write_summary(out: &Path, rows: &[(String, Vec<report::FoldMetrics>)]) -> Result<()> {
    let summary: Vec<serde_json::Value> = rows
        .iter()
        .map(|(name, folds)| {
            let stats: std::collections::BTreeMap<_, _> =
                report::summarize_folds(folds).into_iter().collect();
            serde_json::json!({ "run": name, "folds": folds, "summary": stats })
        })
        .collect();
    write_json(&out.join("summary.json"), &summary)?;
    let table = report::table(rows);
    let md = out.join("summary.md");
    std::fs::write(&md, &table).map_err(|e| TrainError::io(&md, e))?;
    println!("{table}");
    Ok(())
}

fn merge(args: MergeArgs) -> Result<()> {
    let mut rows: Vec<(String, Vec<report::FoldMetrics>)> = Vec::new();
    for run in &args.runs {
        let path = run.join("test").join("metrics.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let m: report::FoldMetrics = serde_json::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let name = run.parent().and_then(|p| p.file_name()).map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match rows.iter_mut().find(|(n, _)| *n == name) {
            Some((_, folds)) => folds.push(m),
            None => rows.push((name, vec![m])),
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| TrainError::io(&args.out, e))?;
    write_summary(&args.out, &rows)?;
    Ok(())
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
    cohort::write_synthetic(&args.out, &slides, args.folds, args.seed)?;
    println!(
        "wrote {} slides in the CLAM layout to {}",
        slides.len(),
        args.out.display()
    );
    Ok(())
}

fn export_checkpoint(args: ExportArgs) -> Result<()> {
    let state = checkpoint::load(&args.checkpoint, tch::Device::Cpu)?;
    let fc = state
        .names
        .iter()
        .position(|n| n == "fc.weight")
        .ok_or_else(|| TrainError::Config("checkpoint has no fc.weight".into()))?;
    let input_dim = state.params[fc].size()[1] as usize;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let arch = msclam_trainer::model::architecture(
        state.config.method,
        state.config.size.into(),
        input_dim,
        state.config.gated,
    );
    let net = msclam_trainer::model::Network::new(&vs.root(), arch, false);
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
        &args.out,
        &ExportMetadata {
            embedder_name: args.embedder_name,
            training_summary: summary.to_string(),
            dtype: Some(args.dtype.into()),
            ..Default::default()
        },
    )?;
    println!("exported {} (epoch {})", args.out.display(), state.epoch);
    Ok(())
}
