//! The demo: the whole product on a small generated cohort. It writes the cohort in the CLAM
//! layout, runs fold 0 for CLAM-SB and MS-CLAM, streams MS-CLAM's test slides through the
//! engine (and its lower-precision exports), and prints the comparison.

use std::path::PathBuf;
use std::time::Instant;

use tch::Device;

use super::{engine_check, run_fold, Fold, FoldOutputs, Progress, Source};
use crate::config::{SizeName, TrainConfig};
use crate::data::{Annotated, Slide, TUMOR};
use crate::error::Result;
use crate::synthetic::{self, SyntheticSpec};
use crate::{plots, report};

/// The demo's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSpec {
    /// Output folder.
    pub out: PathBuf,
    /// Slides in the generated cohort.
    pub slides: usize,
    /// Mean tiles per slide.
    pub tiles: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Training epochs per method.
    pub epochs: usize,
    /// k for MS-CLAM's annotated slides.
    pub annotated_percent: f64,
    /// Tiles per strip when streaming through the engine.
    pub strip: usize,
    /// Seed.
    pub seed: u64,
}

/// Runs the demo, printing its story and table.
pub fn demo(spec: &DemoSpec, device: Device, progress: &mut dyn Progress) -> Result<()> {
    let total = Instant::now();
    println!("msclam demo: {} slides x ~{} tiles x {} features (Camelyon16-like tumor fractions), device {device:?}", spec.slides, spec.tiles, spec.dim);
    println!("(1 fold and {} epochs per method instead of the paper's 5 folds and 90 epochs, to finish in minutes on a CPU)\n", spec.epochs);

    // 1. A cohort in the CLAM layout.
    let root = spec.out.join("cohort");
    let cohort = SyntheticSpec {
        slides: spec.slides,
        tiles_per_slide: spec.tiles,
        dim: spec.dim,
        seed: spec.seed,
        ..SyntheticSpec::default()
    };
    msclam_data::layout::write_synthetic(&root, &synthetic::generate(&cohort), 1, spec.seed)?;
    println!(
        "[1/4] wrote the cohort in the CLAM layout to {}",
        root.display()
    );

    // 2. Train both methods on fold 0 and evaluate them on the test split.
    let mut rows = Vec::new();
    let mut finished = Vec::new();
    for (name, config, percent) in [
        (
            "CLAM-SB (weak supervision)",
            TrainConfig {
                epochs: spec.epochs,
                size: SizeName::Small,
                threads: 0,
                seed: spec.seed,
                ..TrainConfig::clam_sb()
            },
            0.0,
        ),
        (
            "MS-CLAM",
            TrainConfig {
                epochs: spec.epochs,
                size: SizeName::Small,
                b_plus: 256,
                seed: spec.seed,
                ..TrainConfig::default()
            },
            spec.annotated_percent,
        ),
    ] {
        let started = Instant::now();
        let dir = spec
            .out
            .join(if percent > 0.0 { "ms-clam" } else { "clam-sb" });
        let run = run_fold(
            &Fold {
                name,
                source: &Source::Layout {
                    root: root.clone(),
                    fold: 0,
                    annotated: Annotated::Percent(percent, spec.seed),
                },
                config,
                device,
                out: &dir,
                outputs: FoldOutputs {
                    tumor_heatmaps: 3,
                    ..FoldOutputs::default()
                },
            },
            progress,
        )?;
        let (data, m) = (&run.cohort, &run.metrics);
        let annotated = run.annotated.as_deref().unwrap_or_default();
        println!(
            "[2/4] {name}: trained {} epochs on {} slides ({} with tile labels) in {:.0} s; test slide AUC {:.3}, tile Dice {:.3}",
            spec.epochs,
            data.train.len(),
            annotated.len(),
            started.elapsed().as_secs_f64(),
            m.slide_auc,
            m.dice_tumor
        );
        for p in &run.heatmaps {
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
            vec![run.metrics],
        ));
        if percent > 0.0 {
            engine_check::stream_through_engine(&run.net, data, &run.evals, &dir, spec.strip)?;
        }
        let short = name.split(' ').next().unwrap_or(name);
        finished.push((short, run));
    }
    let roc_path = spec.out.join("roc.png");
    let runs: Vec<(&str, &[Slide], &[_])> = finished
        .iter()
        .map(|(name, run)| (*name, run.cohort.slides.as_slice(), run.evals.as_slice()))
        .collect();
    report::write_roc(&roc_path, &runs)?;
    let curves_path = spec.out.join("training_curves.png");
    let histories: Vec<(&str, &[_])> = finished
        .iter()
        .map(|(name, run)| (*name, run.history.as_slice()))
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
        spec.out.display()
    );
    Ok(())
}
