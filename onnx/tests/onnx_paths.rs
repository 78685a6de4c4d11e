//! The ONNX paths against independent implementations:
//! - the exported head, run by ONNX Runtime (`onnx_reference.py heads`) and by tract-onnx,
//!   must give the engine's slide probabilities, attention and tile probabilities (1e-5);
//! - tile encoders exported by PyTorch, run by tract on RGB tiles, must give PyTorch's
//!   embeddings (`onnx_reference.py encoders`), and the embeddings pushed into a session the
//!   engine's scores for PyTorch's embeddings.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use msclam::venv_python;
use msclam::{random_weights, synthetic_slide};
use msclam_engine::format::{keys, Dtype, ModelWriter};
use msclam_engine::{
    AttentionKind, Model, ModelConfig, ModelSize, SlideSession, TileClassifierKind,
};
use msclam_onnx::{export_heads, ChannelOrder, EncoderOptions, OnnxError, TileEncoder};
use serde_json::Value as Json;
use tract_onnx::prelude::*;

fn work(test: &str) -> msclam::ScratchDir {
    msclam::ScratchDir::new("onnx", test)
}

fn reference(command: &str, dir: &Path) -> Json {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_reference.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .arg(command)
        .arg(dir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = if command == "heads" {
        "ort.json"
    } else {
        "encoders.json"
    };
    serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
}

fn floats(v: &Json) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn largest_difference(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// tract on the exported graphs: the tile head strip by strip, the slide head at the end.
/// Returns (attention logits, tile probabilities, slide probabilities, attention).
fn run_with_tract(dir: &Path, bag: &[f32], d: usize, strip: usize) -> [Vec<f32>; 4] {
    let load = |name: &str| {
        tract_onnx::onnx()
            .model_for_path(dir.join(name))
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
    };
    let (tile, slide) = (load("tile_head.onnx"), load("slide_head.onnx"));
    let (mut logits, mut probabilities, mut hidden) = (Vec::new(), Vec::new(), Vec::new());
    for part in bag.chunks(strip * d) {
        let input = Tensor::from_shape(&[part.len() / d, d], part).unwrap();
        let out = tile.run(tvec!(input.into_tvalue())).unwrap();
        logits.extend_from_slice(out[0].view().as_slice::<f32>().unwrap());
        probabilities.extend_from_slice(out[1].view().as_slice::<f32>().unwrap());
        hidden.extend_from_slice(out[2].view().as_slice::<f32>().unwrap());
    }
    let n = bag.len() / d;
    let h = hidden.len() / n;
    let out = slide
        .run(tvec!(
            Tensor::from_shape(&[n, 1], &logits).unwrap().into_tvalue(),
            Tensor::from_shape(&[n, h], &hidden).unwrap().into_tvalue()
        ))
        .unwrap();
    [
        logits,
        probabilities,
        out[0].view().as_slice::<f32>().unwrap().to_vec(),
        out[1].view().as_slice::<f32>().unwrap().to_vec(),
    ]
}

#[test]
fn exported_heads_match_the_engine_in_onnx_runtime_and_tract() {
    let configs = [
        (
            "ms_clam_small",
            ModelConfig::ms_clam(ModelSize::Small),
            Dtype::F32,
        ),
        (
            "clam_sb_plain_3_classes",
            ModelConfig {
                attention: AttentionKind::Plain,
                num_classes: 3,
                tumor_class: 2,
                tile_classifier: TileClassifierKind::PerClass,
                ..ModelConfig::ms_clam(ModelSize::Tiny)
            },
            Dtype::F32,
        ),
        (
            "ms_clam_f16",
            ModelConfig::ms_clam(ModelSize::Tiny),
            Dtype::F16,
        ),
    ];
    for (name, config, dtype) in configs {
        let dir = work(name);
        let weights = random_weights(config, 11);
        let bytes = ModelWriter::new(&weights)
            .matrix_dtype(dtype)
            .metadata(keys::EMBEDDER_NAME, "test")
            .unwrap()
            .to_bytes()
            .unwrap();
        let model = Arc::new(Model::from_bytes(&bytes).unwrap());
        let heads = export_heads(&model);
        std::fs::write(dir.join("tile_head.onnx"), &heads.tile_head).unwrap();
        std::fs::write(dir.join("slide_head.onnx"), &heads.slide_head).unwrap();
        let (n, d) = (150, config.input_dim);
        let (bag, coords, _) = synthetic_slide(d, n, 0.3, 5);
        std::fs::write(
            dir.join("bag.f32"),
            bag.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        std::fs::write(
            dir.join("bag.json"),
            format!(r#"{{"n": {n}, "d": {d}, "strips": 3}}"#),
        )
        .unwrap();
        // The engine, streaming.
        let mut session = SlideSession::new(model.clone(), n).unwrap();
        for (part, c) in bag.chunks(50 * d).zip(coords.chunks(50)) {
            session.push(part, Some(c)).unwrap();
        }
        let r = session.finalize().unwrap();
        let ort = reference("heads", &dir);
        let tract = run_with_tract(&dir, &bag, d, 50);
        for (what, engine, ort_values, tract_values) in [
            (
                "attention logits",
                r.attention_logits,
                floats(&ort["attention_logit"]),
                &tract[0],
            ),
            (
                "tile probabilities",
                r.tile_probabilities,
                floats(&ort["tile_probability"]),
                &tract[1],
            ),
            (
                "slide probabilities",
                r.slide_probabilities,
                floats(&ort["slide_probabilities"]),
                &tract[2],
            ),
            (
                "attention",
                r.attention,
                floats(&ort["attention"]),
                &tract[3],
            ),
        ] {
            let tolerance = if what == "attention logits" {
                1e-4
            } else {
                1e-5
            };
            let against_ort = largest_difference(engine, &ort_values);
            let tract_f64: Vec<f64> = tract_values.iter().map(|v| *v as f64).collect();
            let against_tract = largest_difference(engine, &tract_f64);
            println!("{name}: {what}: engine vs ONNX Runtime {against_ort:.2e}, vs tract {against_tract:.2e}");
            assert!(
                against_ort <= tolerance,
                "{name}: {what} vs ONNX Runtime: {against_ort}"
            );
            assert!(
                against_tract <= tolerance,
                "{name}: {what} vs tract: {against_tract}"
            );
        }
    }
}

#[test]
fn tile_encoders_give_pytorch_embeddings_and_feed_sessions() {
    let dir = work("encoders");
    let expected = reference("encoders", &dir);
    for name in ["small_cnn", "resnet_trunc"] {
        let e = &expected[name];
        let size = e["tile_size"].as_u64().unwrap() as usize;
        let n = e["n"].as_u64().unwrap() as usize;
        let dim = e["dim"].as_u64().unwrap() as usize;
        let to3 = |v: &Json| {
            let f = floats(v);
            [f[0] as f32, f[1] as f32, f[2] as f32]
        };
        let options = EncoderOptions {
            tile_size: size,
            mean: to3(&e["mean"]),
            std: to3(&e["std"]),
            channel_order: if e["channel_order"] == "bgr" {
                ChannelOrder::Bgr
            } else {
                ChannelOrder::Rgb
            },
            batch: 8,
            name: Some(name.to_owned()),
        };
        let mut encoder = TileEncoder::load(dir.join(format!("{name}.onnx")), options).unwrap();
        assert_eq!(encoder.output_dim(), dim);
        let tiles = std::fs::read(dir.join(format!("{name}.tiles.u8"))).unwrap();
        assert_eq!(tiles.len(), n * size * size * 3);
        let mut embeddings = Vec::new();
        // 21 tiles in batches of 8: the last batch is padded.
        encoder.encode(&tiles, &mut embeddings).unwrap();
        let want = floats(&e["embeddings"]);
        // ONNX Runtime on the exported graph agrees with PyTorch (the export is faithful).
        let ort_difference = e["ort_largest_difference"].as_f64().unwrap();
        assert!(
            ort_difference < 1e-4,
            "{name}: ONNX Runtime vs PyTorch {ort_difference}"
        );
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let difference = largest_difference(&embeddings, &want);
        println!(
            "{name}: tract vs PyTorch embeddings: largest difference {difference:.2e} (largest value {scale:.2})"
        );
        assert!(difference <= 1e-4 * scale.max(1.0), "{name}: {difference}");

        // tract's speed on one thread, beside ONNX Runtime's (reported, not asserted).
        let batch = &tiles[..8 * size * size * 3];
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let start = std::time::Instant::now();
            encoder.encode(batch, &mut embeddings).unwrap();
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{name}: tract {:.1} tiles/s, ONNX Runtime {:.1} tiles/s (one thread each, this test build)",
            8.0 / best,
            e["ort_tiles_per_second"].as_f64().unwrap()
        );

        // Pushed into a session: the scores of PyTorch's own embeddings.
        let config = ModelConfig::ms_clam(ModelSize::Tiny).with_input_dim(dim);
        let weights = random_weights(config, 3);
        let model_for = |embedder: &str| {
            let bytes = ModelWriter::new(&weights)
                .metadata(keys::EMBEDDER_NAME, embedder)
                .unwrap()
                .to_bytes()
                .unwrap();
            Arc::new(Model::from_bytes(&bytes).unwrap())
        };
        let model = model_for(name);
        let mut session = SlideSession::new(model.clone(), n).unwrap();
        let mut buffer = Vec::new();
        for part in tiles.chunks(10 * size * size * 3) {
            encoder.push(&mut session, part, None, &mut buffer).unwrap();
        }
        let from_pixels = session.finalize().unwrap().tile_probabilities.to_vec();
        let mut reference_session = SlideSession::new(model, n).unwrap();
        let want_f32: Vec<f32> = want.iter().map(|v| *v as f32).collect();
        reference_session.push(&want_f32, None).unwrap();
        let r = reference_session.finalize().unwrap();
        let from_pytorch: Vec<f64> = r.tile_probabilities.iter().map(|v| *v as f64).collect();
        assert!(largest_difference(&from_pixels, &from_pytorch) < 1e-4);

        // An encoder that does not fit the model is an error, not a wrong answer.
        let other = model_for("another_encoder");
        let mut session = SlideSession::new(other, n).unwrap();
        let err = encoder
            .push(&mut session, &tiles, None, &mut buffer)
            .unwrap_err();
        assert!(matches!(err, OnnxError::Mismatch(_)), "{err}");
        assert!(err.to_string().contains("another_encoder"), "{err}");
        let wrong_dim = Arc::new(
            Model::from_bytes(
                &ModelWriter::new(&random_weights(ModelConfig::ms_clam(ModelSize::Tiny), 1))
                    .to_bytes()
                    .unwrap(),
            )
            .unwrap(),
        );
        let mut session = SlideSession::new(wrong_dim, n).unwrap();
        let err = encoder
            .push(&mut session, &tiles, None, &mut buffer)
            .unwrap_err();
        assert!(err.to_string().contains("expects 512"), "{err}");
        // Partial tiles are refused.
        let err = encoder.encode(&tiles[1..], &mut buffer).unwrap_err();
        assert!(matches!(err, OnnxError::InvalidArgument(_)), "{err}");
    }
    // Not an ONNX file: an error naming it.
    let bad = dir.join("bad.onnx");
    std::fs::write(&bad, b"not onnx").unwrap();
    let err = TileEncoder::load(&bad, EncoderOptions::default()).unwrap_err();
    assert!(err.to_string().contains("bad.onnx"), "{err}");
}
