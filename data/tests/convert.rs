//! CLAM-SB and MS-CLAM checkpoints written by the real `torch.save` (`clam_checkpoints.py`,
//! run with the project's Python environment), converted to `.mscl` and run by the engine:
//! slide probabilities, attention and tile probabilities must match what PyTorch computed
//! with the same checkpoint on the same bag, within 1e-5. Checkpoints the converter cannot
//! understand are refused with a message that says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use msclam::venv_python;
use msclam_data::convert::{convert_file, CodeBase, ConvertOptions};
use msclam_engine::format::Dtype;
use msclam_engine::{Model, SlideSession};
use serde_json::Value as Json;

/// Runs the script into a folder of the calling test's own.
fn checkpoints(test: &str) -> (PathBuf, Vec<Json>) {
    let dir = std::env::temp_dir().join(format!("msclam-convert-{}-{test}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clam_checkpoints.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = std::fs::read_to_string(dir.join("cases.json")).unwrap();
    let Json::Array(cases) = serde_json::from_str(&cases).unwrap() else {
        panic!("cases.json is not a list")
    };
    (dir, cases)
}

fn floats(v: &Json) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Checks every value within `tolerance`; returns the largest difference.
fn close(got: &[f32], want: &[f64], tolerance: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut largest = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let difference = (*g as f64 - w).abs();
        assert!(difference <= tolerance, "{what}[{i}]: {g} vs PyTorch {w}");
        largest = largest.max(difference);
    }
    largest
}

#[test]
fn converted_checkpoints_match_pytorch() {
    let (dir, cases) = checkpoints("match");
    let mut converted = 0;
    for case in cases.iter().filter(|c| c.get("error").is_none()) {
        let name = case["name"].as_str().unwrap();
        let tumor_class = case["tumor_class"].as_u64().unwrap() as usize;
        let options = ConvertOptions {
            tumor_class,
            embedder_name: "test_embedder".into(),
            ..ConvertOptions::default()
        };
        let mscl = dir.join(format!("{name}.mscl"));
        let c = convert_file(&dir.join(case["file"].as_str().unwrap()), &mscl, &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            c.code_base,
            if name.starts_with("msclam") {
                CodeBase::MsClam
            } else {
                CodeBase::ClamSb
            },
            "{name}"
        );
        if name.contains("data_parallel") || name == "msclam_small" {
            assert_eq!(c.ignored_keys.len(), 1, "{name}: the SVM loss's buffer");
        }
        let model = Arc::new(Model::load(&mscl).unwrap());
        assert_eq!(model.metadata().get("embedder.name"), Some("test_embedder"));
        let (n, d) = (
            case["n"].as_u64().unwrap() as usize,
            case["d"].as_u64().unwrap() as usize,
        );
        assert_eq!(model.config().input_dim, d, "{name}");
        let bag: Vec<f32> = std::fs::read(dir.join(format!("{name}.bag.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(bag.len(), n * d);
        let mut session = SlideSession::new(model, n).unwrap();
        // Streamed in strips, as a scanner sends them.
        for strip in bag.chunks(d * 17) {
            session.push(strip, None).unwrap();
        }
        let r = session.finalize().unwrap();
        let slide = close(
            r.slide_probabilities,
            &floats(&case["slide_probabilities"]),
            1e-5,
            &format!("{name}: slide probabilities"),
        );
        let attention = close(
            r.attention,
            &floats(&case["attention"]),
            1e-5,
            &format!("{name}: attention"),
        );
        let tiles = close(
            r.tile_probabilities,
            &floats(&case["tile_probabilities"]),
            1e-5,
            &format!("{name}: tile probabilities"),
        );
        println!(
            "{name}: largest difference from PyTorch: slide {slide:.1e}, attention \
             {attention:.1e}, tiles {tiles:.1e}"
        );
        converted += 1;
    }
    assert!(converted >= 13, "{converted} checkpoints converted");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn checkpoints_it_cannot_understand_are_refused_with_the_reason() {
    let (dir, cases) = checkpoints("refused");
    let mut refused = 0;
    for case in cases.iter().filter(|c| c.get("error").is_some()) {
        let name = case["name"].as_str().unwrap();
        let path = dir.join(case["file"].as_str().unwrap());
        let out = dir.join(format!("{name}.mscl"));
        let e = convert_file(&path, &out, &ConvertOptions::default())
            .expect_err(name)
            .to_string();
        let expected = case["error"].as_str().unwrap();
        assert!(e.contains(expected), "{name}: {e}");
        assert!(
            e.contains(&format!("{name}.pt")),
            "{name}: names the file: {e}"
        );
        assert!(!out.exists(), "{name}: nothing written");
        refused += 1;
    }
    assert!(refused >= 6);
    // A tumor class the checkpoint does not have.
    let e = convert_file(
        &dir.join("clam_small_gated.pt"),
        &dir.join("x.mscl"),
        &ConvertOptions {
            tumor_class: 2,
            ..ConvertOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tumor_class 2"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_convert_command_writes_a_model_in_each_weight_type() {
    let (dir, _) = checkpoints("command");
    let checkpoint = dir.join("msclam_small.pt");
    let f32_model = dir.join("f32.mscl");
    convert_file(&checkpoint, &f32_model, &ConvertOptions::default()).unwrap();
    let reference = Model::load(&f32_model).unwrap();
    for (flag, dtype) in [
        ("f16", Dtype::F16),
        ("bf16", Dtype::Bf16),
        ("int8", Dtype::Int8),
    ] {
        let out = dir.join(format!("{flag}.mscl"));
        let run = Command::new(env!("CARGO_BIN_EXE_msclam"))
            .args([
                "convert",
                "--embedder-name",
                "resnet50_trunc",
                "--dtype",
                flag,
                "--out",
            ])
            .arg(&out)
            .arg(&checkpoint)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            stdout.contains("MS-CLAM") && stdout.contains("gated"),
            "{stdout}"
        );
        assert!(stdout.contains("instance_loss_fn.labels"), "{stdout}");
        let model = Model::load(&out).unwrap();
        assert_eq!(model.weight_dtype(), dtype);
        assert_eq!(model.config(), reference.config());
    }
    // A bad checkpoint: non-zero exit, the reason on stderr.
    let run = Command::new(env!("CARGO_BIN_EXE_msclam"))
        .args(["convert", "--out"])
        .arg(dir.join("bad.mscl"))
        .arg(dir.join("clam_mb.pt"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("CLAM-MB"));
    std::fs::remove_dir_all(&dir).ok();
}
