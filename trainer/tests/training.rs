//! A short training run learns separable data; the exported model runs through the engine
//! with the trained network's outputs; memory and data errors are reported before training.

use std::sync::Arc;

use msclam_engine::{Model, SlideSession};
use msclam_trainer::config::{SizeName, TrainConfig};
use msclam_trainer::data::{self, FeaturePrecision, SplitSpec, TUMOR};
use msclam_trainer::export::{export, ExportMetadata};
use msclam_trainer::synthetic::{generate, Profile, SyntheticSpec};
use msclam_trainer::training::Trainer;
use msclam_trainer::{memory, metrics};
use tch::{Device, Kind, Tensor};

fn small_cohort(
    slides: usize,
    signal: f64,
    seed: u64,
    precision: FeaturePrecision,
) -> data::Cohort {
    cohort_with(
        SyntheticSpec {
            slides,
            tiles_per_slide: 120,
            dim: 32,
            signal,
            seed,
            ..Default::default()
        },
        seed,
        precision,
    )
}

fn cohort_with(spec: SyntheticSpec, seed: u64, precision: FeaturePrecision) -> data::Cohort {
    let split = SplitSpec {
        val_fraction: 0.25,
        test_fraction: 0.25,
        annotated_percent: 50.0,
        seed,
    };
    data::cohort_from_synthetic(generate(&spec), &split, precision, Device::Cpu).unwrap()
}

/// Tests in one process share libtorch's global RNG and thread pool: run them one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn small_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        size: SizeName::Tiny,
        epochs,
        b_plus: 64,
        threads: 2,
        seed: 7,
        ..TrainConfig::default()
    }
}

#[test]
fn validation_auc_rises_well_above_chance_on_separable_data() {
    let _serial = serial();
    // Separable: DigestPath-like tumor regions (median 29 % of the tiles), a strong signal, and
    // no tumor-like regions of normal tissue (at this signal they would look like tumor).
    let spec = SyntheticSpec {
        slides: 48,
        tiles_per_slide: 120,
        dim: 32,
        signal: 3.0,
        seed: 11,
        profile: Profile::DigestPath,
        mimic_region_fraction: 0.0,
        ..Default::default()
    };
    let cohort = cohort_with(spec, 11, FeaturePrecision::F32);
    let first_auc = {
        let t = Trainer::new(small_config(1), &cohort, Device::Cpu).unwrap();
        let evals = t.evaluate(&cohort.val).unwrap();
        let probs: Vec<f64> = evals.iter().map(|e| e.probabilities[TUMOR]).collect();
        let truth: Vec<bool> = evals
            .iter()
            .map(|e| cohort.slides[e.slide].label == TUMOR)
            .collect();
        metrics::roc_auc(&probs, &truth).unwrap()
    };
    let mut trainer = Trainer::new(small_config(12), &cohort, Device::Cpu).unwrap();
    trainer.train(None, |_| {}).unwrap();
    let first = trainer.history.first().unwrap().val_loss;
    let last = *trainer.history.last().unwrap();
    assert!(
        last.val_loss < first,
        "validation loss fell: {first} -> {}",
        last.val_loss
    );
    // Test slides, never seen in training or model selection.
    let evals = trainer.evaluate(&cohort.test).unwrap();
    let probs: Vec<f64> = evals.iter().map(|e| e.probabilities[TUMOR]).collect();
    let truth: Vec<bool> = evals
        .iter()
        .map(|e| cohort.slides[e.slide].label == TUMOR)
        .collect();
    let auc = metrics::roc_auc(&probs, &truth).unwrap();
    assert!(auc >= 0.9, "test AUC {auc}, history {:?}", trainer.history);
    assert!(
        last.val_auc >= 0.9,
        "val AUC {} (untrained {first_auc})",
        last.val_auc
    );
}

#[test]
fn the_exported_model_runs_through_the_engine_like_the_trained_network() {
    let _serial = serial();
    for method_config in [
        small_config(2),
        TrainConfig {
            size: SizeName::Tiny,
            epochs: 2,
            threads: 2,
            gated: false,
            ..TrainConfig::clam_sb()
        },
    ] {
        let cohort = small_cohort(16, 2.0, 3, FeaturePrecision::F32);
        let mut trainer = Trainer::new(method_config, &cohort, Device::Cpu).unwrap();
        trainer.train(None, |_| {}).unwrap();
        let dir = std::env::temp_dir().join(format!("msclam-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.mscl");
        export(
            &trainer.net,
            &path,
            &ExportMetadata {
                embedder_name: "test".into(),
                training_summary: "{}".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let model = Arc::new(Model::load(&path).unwrap());
        assert_eq!(model.metadata().get("embedder.name"), Some("test"));
        assert_eq!(model.metadata().get("embedder.dim"), Some("32"));
        assert_eq!(model.config(), &trainer.net.config);

        // Random slides, not from the cohort.
        for seed in 0..3 {
            tch::manual_seed(100 + seed);
            let n = 50 + 30 * seed;
            let x = Tensor::rand([n, 32], (Kind::Float, Device::Cpu)) * 2.0;
            let features: Vec<f32> = Vec::try_from(x.view([-1])).unwrap();
            let (want_slide, want_attention, want_tiles) = tch::no_grad(|| {
                let fwd = trainer.net.forward(&x, false);
                let attention = fwd.attention_logits.softmax(0, Kind::Float);
                let slide = trainer
                    .net
                    .slide_logits(&fwd.hidden, &attention)
                    .softmax(0, Kind::Float);
                (
                    Vec::<f32>::try_from(slide).unwrap(),
                    Vec::<f32>::try_from(attention).unwrap(),
                    Vec::<f32>::try_from(trainer.net.tile_probabilities(&fwd.hidden)).unwrap(),
                )
            });
            let mut session = SlideSession::new(model.clone(), n as usize).unwrap();
            for strip in features.chunks(32 * 17) {
                session.push(strip, None).unwrap();
            }
            let r = session.finalize().unwrap();
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
            for (c, p) in want_slide.iter().enumerate() {
                assert!(
                    close(r.slide_probabilities[c], *p),
                    "slide prob {c}: {} vs {p}",
                    r.slide_probabilities[c]
                );
            }
            for i in 0..n as usize {
                assert!(
                    close(r.attention[i], want_attention[i]),
                    "attention {i}: {} vs {}",
                    r.attention[i],
                    want_attention[i]
                );
                assert!(
                    close(r.tile_probabilities[i], want_tiles[i]),
                    "tile {i}: {} vs {}",
                    r.tile_probabilities[i],
                    want_tiles[i]
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn half_precision_features_change_outputs_by_rounding_only() {
    let _serial = serial();
    let a = small_cohort(16, 2.0, 5, FeaturePrecision::F32);
    let b = small_cohort(16, 2.0, 5, FeaturePrecision::F16);
    assert_eq!(b.slides[0].features.kind(), Kind::Half);
    let mut trainer = Trainer::new(small_config(1), &a, Device::Cpu).unwrap();
    trainer.train(None, |_| {}).unwrap();
    let all: Vec<usize> = (0..a.slides.len()).collect();
    let ea =
        msclam_trainer::training::evaluate(&trainer.net, &a.slides, &all, Device::Cpu).unwrap();
    let eb =
        msclam_trainer::training::evaluate(&trainer.net, &b.slides, &all, Device::Cpu).unwrap();
    for (x, y) in ea.iter().zip(&eb) {
        assert!(
            (x.probabilities[1] - y.probabilities[1]).abs() < 2e-3,
            "{} vs {}",
            x.probabilities[1],
            y.probabilities[1]
        );
    }
    // And training on f16 features runs.
    let mut half = Trainer::new(small_config(1), &b, Device::Cpu).unwrap();
    half.train(None, |_| {}).unwrap();
    assert!(half.history[0].val_loss.is_finite());
}

#[test]
fn a_cohort_that_does_not_fit_is_refused_before_training() {
    // Camelyon16 at 20x: about 3 million tiles of 1024 features.
    let gib = 1u64 << 30;
    memory::check_fits(
        3_000_000,
        1024,
        FeaturePrecision::F16,
        24 * gib,
        "a 24 GB machine",
    )
    .unwrap();
    memory::check_fits(
        3_000_000,
        1024,
        FeaturePrecision::F32,
        24 * gib,
        "a 24 GB machine",
    )
    .unwrap();
    memory::check_fits(
        3_000_000,
        1024,
        FeaturePrecision::F32,
        80 * gib,
        "an 80 GB GPU",
    )
    .unwrap();
    let err = memory::check_fits(
        3_000_000,
        1024,
        FeaturePrecision::F32,
        8 * gib,
        "an 8 GB GPU",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("does not fit") && msg.contains("8 GB GPU") && msg.contains("f16"),
        "{msg}"
    );
    assert_eq!(
        memory::bytes_per_tile(1024, FeaturePrecision::F16),
        2048 + 17
    );
}

#[test]
fn bad_slide_data_is_refused_with_the_slide_named() {
    let nan = [0.0f32, f32::NAN, 1.0, 2.0];
    let err = data::Slide::from_host(
        "slide_7",
        1,
        &nan,
        2,
        vec![[0, 0]; 2],
        None,
        false,
        FeaturePrecision::F32,
        Device::Cpu,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("slide_7") && err.to_string().contains("non-finite"),
        "{err}"
    );
    let err = data::Slide::from_host(
        "empty",
        0,
        &[],
        2,
        vec![],
        None,
        false,
        FeaturePrecision::F32,
        Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = data::Slide::from_host(
        "s",
        1,
        &[1.0; 4],
        2,
        vec![[0, 0]; 2],
        Some(vec![1]),
        true,
        FeaturePrecision::F32,
        Device::Cpu,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("1 tile labels for 2 tiles"),
        "{err}"
    );
}

#[test]
fn with_early_stopping_the_best_epochs_weights_are_kept() {
    let _serial = serial();
    let cohort = small_cohort(16, 1.0, 9, FeaturePrecision::F32);
    // Patience never reached: training runs all epochs, yet ends on the best epoch (as CLAM).
    let config = TrainConfig {
        early_stopping: true,
        patience: 1000,
        min_epochs: 0,
        ..small_config(6)
    };
    let mut trainer = Trainer::new(config, &cohort, Device::Cpu).unwrap();
    trainer.train(None, |_| {}).unwrap();
    assert!(!trainer.stopped_early);
    let (best_loss, best_epoch) = trainer.best.unwrap();
    let evals = trainer.evaluate(&cohort.val).unwrap();
    let loss = evals.iter().map(|e| e.loss).sum::<f64>() / evals.len() as f64;
    assert!(
        (loss - best_loss).abs() < 1e-6,
        "final val loss {loss}, best {best_loss} at epoch {best_epoch}"
    );
    // And it stops when patience runs out.
    let config = TrainConfig {
        early_stopping: true,
        patience: 1,
        min_epochs: 0,
        lr: 5e-2,
        ..small_config(30)
    };
    let mut trainer = Trainer::new(config, &cohort, Device::Cpu).unwrap();
    trainer.train(None, |_| {}).unwrap();
    assert!(
        trainer.stopped_early && trainer.epoch < 30,
        "ran {} epochs",
        trainer.epoch
    );
}
