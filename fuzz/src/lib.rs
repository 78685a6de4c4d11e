//! What the fuzz targets share.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use msclam_engine::{Model, SlideSession};

pub use msclam::sample_model_files as valid_files;

/// Streams a few tiles (ordinary, extreme and zero) through a model that loaded, and checks
/// what the API promises: finite probabilities in [0, 1] after every accepted push.
pub fn score_a_few_tiles(model: Arc<Model>) {
    let d = model.config().input_dim;
    // Dimensions come from the file: keep the work bounded.
    if d * model.config().hidden_dim > 1 << 22 {
        return;
    }
    let Ok(mut session) = SlideSession::new(model, 8) else {
        return;
    };
    let tiles: Vec<f32> = (0..3 * d)
        .map(|i| match i % 3 {
            0 => 0.0,
            1 => (i as f32 * 0.37).sin(),
            _ => 3.0e4,
        })
        .collect();
    if let Ok(summary) = session.push(&tiles, None) {
        check_probability(summary.slide_tumor_probability.expect("three tiles pushed"));
        session
            .tile_probabilities()
            .iter()
            .for_each(|p| check_probability(*p));
        if let Ok(result) = session.finalize() {
            check_probability(result.tumor_probability);
            let sum: f64 = result.attention.iter().map(|a| *a as f64).sum();
            assert!((sum - 1.0).abs() < 1e-3, "attention sums to {sum}");
        }
    }
}

/// A probability the engine reported with an OK status.
pub fn check_probability(p: f32) {
    assert!((0.0..=1.0).contains(&p), "probability {p}");
}

/// This process's scratch folder for the readers that take paths (in `/dev/shm` where it
/// exists: no disk writes per input).
pub fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("msclam-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        dir
    })
}
