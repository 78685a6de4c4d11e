//! `msclam`: score new slides with a trained `.mscl` model, without libtorch.
//!
//! ```text
//! msclam score --model model.mscl --slides COHORT_OR_H5_DIR --out DIR [--threads N] [--shard I/N]
//! msclam merge-scores --model model.mscl --out DIR
//! msclam convert s_0_checkpoint.pt --out model.mscl [--embedder-name resnet50_trunc]
//! msclam export-onnx --model model.mscl --out DIR
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use msclam_data::convert::{self, CodeBase, ConvertOptions};
use msclam_data::score::{self, ScoreOptions, Shard};
use msclam_engine::format::Dtype;

#[derive(Parser)]
#[command(
    name = "msclam",
    version,
    about = "Score whole-slide images with an MS-CLAM model (.mscl), without libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score every slide of a CLAM cohort or a folder of .h5 (or .pt) feature files: per slide
    /// <id>.h5 (scores), <id>.geojson (tumor mask for QuPath) and <id>.png; slides.csv,
    /// failures.csv and, for labelled cohorts, metrics.json. Re-running skips finished slides.
    Score {
        /// The trained model (.mscl).
        #[arg(long)]
        model: PathBuf,
        /// A CLAM cohort (dataset.csv + h5_files/ or pt_files/), a folder holding h5_files/ or
        /// pt_files/, or a folder of .h5 files (features, coords) or .pt files (torch.save
        /// tensors, no coordinates: tiles placed in reading order).
        #[arg(long)]
        slides: PathBuf,
        /// Output folder (created if needed; shared by every shard of a job).
        #[arg(long)]
        out: PathBuf,
        /// Worker threads, one engine session each (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// Score only part I of N (0 <= I < N) of the slides, for cluster array jobs; combine
        /// the parts with `msclam merge-scores`.
        #[arg(long)]
        shard: Option<Shard>,
        /// Tile side in level-0 pixels for the GeoJSON and pictures (default: from the .h5
        /// coords attributes patch_size x downsample, else the coordinates' grid step).
        #[arg(long)]
        tile_size: Option<u32>,
        /// Do not draw the PNG pictures.
        #[arg(long)]
        no_pictures: bool,
    },
    /// Combine the tables of a sharded run (out/shards/) into slides.csv, failures.csv and
    /// metrics.json, as an unsharded run writes them.
    MergeScores {
        /// The model the shards used (for its tumor class).
        #[arg(long)]
        model: PathBuf,
        /// The output folder the shards wrote to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert a CLAM-SB or MS-CLAM PyTorch checkpoint (a state_dict written by torch.save,
    /// e.g. s_0_checkpoint.pt) to a .mscl model, without Python. The variant (gated or plain
    /// attention, sizes, CLAM's per-class or MS-CLAM's single tile classifier) is read from
    /// the checkpoint's keys and shapes.
    Convert {
        /// The checkpoint (.pt).
        checkpoint: PathBuf,
        /// The model to write (.mscl).
        #[arg(long)]
        out: PathBuf,
        /// Name of the tile embedder the model was trained on (recorded in the model).
        #[arg(long, default_value = "unknown")]
        embedder_name: String,
        /// Index of the tumor class (CLAM's Camelyon16 task: 1).
        #[arg(long, default_value_t = 1)]
        tumor_class: usize,
        /// Tile probability at or above which a tile is in the tumor mask.
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
        /// Tile side in pixels, if known (recorded in the model).
        #[arg(long)]
        tile_size: Option<u32>,
        /// Element type of the large matrices in the model.
        #[arg(long, value_enum, default_value_t = WeightType::F32)]
        dtype: WeightType,
    },
    /// Export the model's head as two ONNX graphs (opset 13) for another ONNX runtime:
    /// DIR/tile_head.onnx (per strip: embeddings [N, D] -> attention_logit [N, 1],
    /// tile_probability [N], hidden [N, H]) and DIR/slide_head.onnx (at the end of the slide,
    /// over the strips' outputs concatenated: attention_logit, hidden -> slide_probabilities
    /// [1, C], attention [N, 1]).
    #[cfg(feature = "onnx")]
    ExportOnnx {
        /// The model (.mscl).
        #[arg(long)]
        model: PathBuf,
        /// Output folder (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Element type of a converted model's matrices.
#[derive(Clone, Copy, ValueEnum)]
enum WeightType {
    F32,
    F16,
    Bf16,
    Int8,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().command {
        Command::Score {
            model,
            slides,
            out,
            threads,
            shard,
            tile_size,
            no_pictures,
        } => {
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let options = ScoreOptions {
                model,
                input: slides,
                out,
                threads,
                shard,
                tile_size,
                pictures: !no_pictures,
            };
            let total = match score::find_slides(&options.input) {
                Ok(s) => score::shard_slides(s, options.shard).len(),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let bar = indicatif::ProgressBar::new(total as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} slides ({per_sec}, {eta} left) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let started = std::time::Instant::now();
            let outcome = score::score_slides(&options, &|id| {
                bar.set_message(id.to_owned());
                bar.inc(1);
            });
            bar.finish_and_clear();
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let secs = started.elapsed().as_secs_f64();
            let scored = outcome.slides.len() - outcome.already_done;
            println!(
                "scored {scored} slides ({} tiles) in {secs:.1} s with {threads} threads: {:.1} slides/s, {:.0} tiles/s; {} already done, {} failed",
                outcome.tiles_scored,
                scored as f64 / secs,
                outcome.tiles_scored as f64 / secs,
                outcome.already_done,
                outcome.failures.len()
            );
            let busy = outcome.read_seconds + outcome.engine_seconds + outcome.write_seconds;
            if busy > 0.0 {
                println!(
                    "time in the workers: reading HDF5 {:.0} %, engine {:.0} %, writing outputs {:.0} %",
                    100.0 * outcome.read_seconds / busy,
                    100.0 * outcome.engine_seconds / busy,
                    100.0 * outcome.write_seconds / busy
                );
            }
            println!("outputs in {}", options.out.display());
            for f in &outcome.failures {
                eprintln!("failed: {} ({}): {}", f.slide_id, f.path, f.reason);
            }
            if outcome.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Convert {
            checkpoint,
            out,
            embedder_name,
            tumor_class,
            threshold,
            tile_size,
            dtype,
        } => {
            let options = ConvertOptions {
                tumor_class,
                threshold,
                embedder_name,
                tile_size_px: tile_size,
                dtype: match dtype {
                    WeightType::F32 => Dtype::F32,
                    WeightType::F16 => Dtype::F16,
                    WeightType::Bf16 => Dtype::Bf16,
                    WeightType::Int8 => Dtype::Int8,
                },
            };
            match convert::convert_file(&checkpoint, &out, &options) {
                Ok(c) => {
                    let config = c.weights.config;
                    println!(
                        "{} -> {}: {} ({} attention, D {} / H {} / K {}, {} classes, tumor class {}, {} weights)",
                        checkpoint.display(),
                        out.display(),
                        match c.code_base {
                            CodeBase::ClamSb => "CLAM-SB",
                            CodeBase::MsClam => "MS-CLAM",
                        },
                        match config.attention {
                            msclam_engine::AttentionKind::Gated => "gated",
                            msclam_engine::AttentionKind::Plain => "plain",
                        },
                        config.input_dim,
                        config.hidden_dim,
                        config.attention_dim,
                        config.num_classes,
                        config.tumor_class,
                        c.source_dtype
                    );
                    if options.embedder_name == "unknown" {
                        eprintln!(
                            "note: no --embedder-name given: the model records \"unknown\", and \
                             encoders and pipelines cannot check that they give the embeddings \
                             it was trained on"
                        );
                    }
                    if !c.ignored_keys.is_empty() {
                        println!(
                            "not part of the network, left out: {}",
                            c.ignored_keys.join(", ")
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "onnx")]
        Command::ExportOnnx { model, out } => {
            let result = msclam_engine::Model::load(&model)
                .map_err(|e| format!("{}: {e}", model.display()))
                .and_then(|m| {
                    let heads = msclam_onnx::export_heads(&m);
                    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
                    for (name, bytes) in [
                        ("tile_head.onnx", &heads.tile_head),
                        ("slide_head.onnx", &heads.slide_head),
                    ] {
                        let path = out.join(name);
                        let tmp = out.join(format!(".{name}.tmp"));
                        std::fs::write(&tmp, bytes)
                            .and_then(|_| std::fs::rename(&tmp, &path))
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                    Ok(())
                });
            match result {
                Ok(()) => {
                    println!(
                        "wrote {} and {}",
                        out.join("tile_head.onnx").display(),
                        out.join("slide_head.onnx").display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MergeScores { model, out } => match score::merge_shards(&out, &model) {
            Ok((slides, failures)) => {
                println!(
                    "merged {} slides and {} failures into {}",
                    slides.len(),
                    failures.len(),
                    out.join("slides.csv").display()
                );
                if failures.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
