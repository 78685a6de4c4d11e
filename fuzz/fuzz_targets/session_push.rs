//! The session's push path: strips of any size and dimension, NaN / infinity / huge values
//! anywhere, coordinates present, absent or mixed, finalize and reset in between. Checks the
//! promises: an OK push reports finite probabilities in [0, 1]; a refused push changes
//! nothing (the tiles already accepted are kept as they were).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use msclam_engine::{Model, SlideSession};
use msclam_fuzz::check_probability;

fn models() -> &'static [Arc<Model>] {
    static MODELS: OnceLock<Vec<Arc<Model>>> = OnceLock::new();
    MODELS.get_or_init(|| {
        msclam_fuzz::valid_files()
            .iter()
            .map(|f| Arc::new(Model::from_bytes(f).expect("valid")))
            .collect()
    })
}

/// A float from one input byte (special values) or four (any bit pattern).
fn value(ops: &mut &[u8]) -> f32 {
    let Some((&b, rest)) = ops.split_first() else {
        return 0.0;
    };
    *ops = rest;
    match b {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => 1e10,
        4 => -1e19,
        5 => f32::MIN_POSITIVE / 2.0,
        6 => f32::MAX,
        7 if ops.len() >= 4 => {
            let v = f32::from_le_bytes([ops[0], ops[1], ops[2], ops[3]]);
            *ops = &ops[4..];
            v
        }
        _ => (b as f32 - 128.0) / 16.0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, mut ops)) = data.split_first() else {
        return;
    };
    let models = models();
    let model = models[choice as usize % models.len()].clone();
    let d = model.config().input_dim;
    let threads = 1 + (choice as usize / 8) % 2;
    let options = msclam_engine::SessionOptions {
        threads,
        ..Default::default()
    };
    let Ok(mut session) = SlideSession::with_options(model, 40, options) else {
        return;
    };
    let mut embeddings = Vec::new();
    let mut coords = Vec::new();
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        match op % 8 {
            0..=4 => {
                // A strip of `n` tiles (sometimes the wrong length), with or without coordinates.
                let n = (op / 8) as usize % 20;
                let len = if op % 8 == 4 { n * d + 1 } else { n * d };
                embeddings.clear();
                for _ in 0..len {
                    embeddings.push(if ops.is_empty() { 0.5 } else { value(&mut ops) });
                }
                coords.clear();
                coords.extend((0..n as u32).map(|i| [i * 256, (op as u32) * 256]));
                let with_coords = op % 8 >= 2;
                let before: Vec<f32> = session.tile_probabilities().to_vec();
                match session.push(&embeddings, with_coords.then_some(&coords[..])) {
                    Ok(summary) => {
                        assert_eq!(summary.tiles, n);
                        match summary.slide_tumor_probability {
                            Some(p) => check_probability(p),
                            None => assert!(session.is_empty(), "no slide score with tiles"),
                        }
                        let probs = session.tile_probabilities();
                        assert_eq!(&probs[..before.len()], &before[..]);
                        probs.iter().for_each(|p| check_probability(*p));
                    }
                    Err(_) => assert_eq!(session.tile_probabilities(), &before[..]),
                }
            }
            5 => {
                if let Ok(result) = session.finalize() {
                    check_probability(result.tumor_probability);
                    assert_eq!(result.attention.len(), result.tile_mask.len());
                    let sum: f64 = result.attention.iter().map(|a| *a as f64).sum();
                    assert!((sum - 1.0).abs() < 1e-3, "attention sums to {sum}");
                }
            }
            6 => session.reset(),
            _ => {
                if let Ok(p) = session.tumor_probability() {
                    check_probability(p);
                }
            }
        }
    }
});
