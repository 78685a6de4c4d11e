//! Seconds per training epoch on a Camelyon16-shaped synthetic cohort (the reference setting
//! of the trainer issue: 270 train+val slides of about 2,100 tiles, an 80/20 split so that an
//! epoch has as many paired steps as there are training normal slides, 127; D = 1024, MS-CLAM
//! small, reference settings, 2 CPU threads).
//!
//! `cargo bench -p msclam-trainer --bench epoch` runs it; sizes can be changed with
//! MSCLAM_BENCH_SLIDES, MSCLAM_BENCH_TILES, MSCLAM_BENCH_EPOCHS, MSCLAM_BENCH_DEVICE (cpu|cuda),
//! MSCLAM_BENCH_PRECISION (f32|f16), MSCLAM_BENCH_THREADS.

use std::time::Instant;

use msclam_trainer::config::TrainConfig;
use msclam_trainer::data::{self, FeaturePrecision, SplitSpec};
use msclam_trainer::synthetic::{generate, SyntheticSpec};
use msclam_trainer::training::Trainer;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test` / `cargo bench --no-run` pass other arguments: only run when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let slides: usize = env_or("MSCLAM_BENCH_SLIDES", 270);
    let tiles: usize = env_or("MSCLAM_BENCH_TILES", 2100);
    let epochs: usize = env_or("MSCLAM_BENCH_EPOCHS", 2);
    let threads: usize = env_or("MSCLAM_BENCH_THREADS", 2);
    let device = match std::env::var("MSCLAM_BENCH_DEVICE").as_deref() {
        Ok("cuda") => tch::Device::Cuda(0),
        _ => tch::Device::Cpu,
    };
    let precision = match std::env::var("MSCLAM_BENCH_PRECISION").as_deref() {
        Ok("f16") => FeaturePrecision::F16,
        _ => FeaturePrecision::F32,
    };
    let started = Instant::now();
    let spec = SyntheticSpec {
        slides,
        tiles_per_slide: tiles,
        dim: 1024,
        seed: 1,
        ..Default::default()
    };
    let split = SplitSpec {
        val_fraction: 0.2,
        test_fraction: 0.0,
        annotated_percent: 12.0,
        seed: 1,
    };
    let cohort =
        data::cohort_from_synthetic(generate(&spec), &split, precision, device).expect("cohort");
    let total_tiles = cohort.tiles(&(0..cohort.slides.len()).collect::<Vec<_>>());
    println!(
        "cohort: {} slides, {} tiles ({:.0} per slide), {} train / {} val, {:?} features on {:?}, built in {:.1} s",
        cohort.slides.len(),
        total_tiles,
        total_tiles as f64 / cohort.slides.len() as f64,
        cohort.train.len(),
        cohort.val.len(),
        precision,
        device,
        started.elapsed().as_secs_f64()
    );
    let config = TrainConfig {
        epochs,
        threads,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config, &cohort, device).expect("trainer");
    let steps = trainer.steps_per_epoch();
    for _ in 0..epochs {
        // Tiles forwarded (and back-propagated) in this epoch's steps.
        let forwarded: usize = trainer
            .sampler
            .epoch_plan(trainer.epoch)
            .iter()
            .map(|s| match *s {
                msclam_trainer::samplers::Step::Single(i) => cohort.slides[i].num_tiles,
                msclam_trainer::samplers::Step::Pair { tumor, normal } => {
                    cohort.slides[tumor].num_tiles + cohort.slides[normal].num_tiles
                }
            })
            .sum();
        let t = Instant::now();
        let record = trainer.train_epoch(None, |_, _| {}).expect("epoch");
        let total = t.elapsed().as_secs_f64();
        println!(
            "epoch {}: {:.2} s training ({} paired steps, {:.3} s/step, ~{:.0} tiles/s forward+backward), {:.2} s with validation",
            record.epoch,
            record.train_seconds,
            steps,
            record.train_seconds / steps as f64,
            forwarded as f64 / record.train_seconds,
            total
        );
    }
}
