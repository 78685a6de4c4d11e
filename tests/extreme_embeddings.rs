//! Regression inputs found by the fuzz targets (docs/FUZZING.md): extreme but finite embedding
//! values must give probabilities in [0, 1] that agree with the f64 reference implementation,
//! or a clear error, never a wrong answer.

use std::sync::Arc;

use msclam_engine::{reference, Model, SlideSession};

/// Found by `session_push`: one value of 1e10 drives the slide logits to about 1e10, and a
/// softmax over f32-rounded logits returned a slide probability of 1.39.
#[test]
fn a_huge_embedding_value_keeps_probabilities_in_range() {
    let files = msclam::sample_model_files();
    let model = Arc::new(Model::from_bytes(&files[0]).unwrap());
    let weights = msclam::random_weights(*model.config(), 1);
    let mut session = SlideSession::new(model, 40).unwrap();
    let tiles = [
        -4.0, -4.0, -4.0, 7.9375, 7.9375, 7.9375, //
        1e10, -4.0, -4.0, -4.0, 0.75, -5.8125, //
        0.75, 0.75, 0.75, 0.75, -4.1875, -5.5625,
    ];
    let coords = [[0, 6656], [256, 6656], [512, 6656]];
    let pushed = session.push(&tiles, Some(&coords)).unwrap();
    let p = pushed.slide_tumor_probability.unwrap();
    assert!((0.0..=1.0).contains(&p), "slide probability {p}");
    let want = reference::forward(&weights, &tiles);
    let got = session.slide_probabilities().unwrap();
    for (c, w) in want.slide_probabilities.iter().enumerate() {
        assert!(
            (got[c] as f64 - w).abs() < 1e-6,
            "class {c}: {} vs {w}",
            got[c]
        );
    }
    let result = session.finalize().unwrap();
    for (t, w) in want.tile_probabilities.iter().enumerate() {
        let got = result.tile_probabilities[t] as f64;
        assert!((got - w).abs() < 1e-5, "tile {t}: {got} vs {w}");
    }
}
