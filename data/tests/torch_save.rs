//! The pure-Rust `torch.save` / pickle reader against files written by the real PyTorch and
//! NumPy (`torch_save_files.py`, run with the project's Python environment): every value
//! must come back exactly as Python wrote it.

use std::path::{Path, PathBuf};
use std::process::Command;

use msclam::venv_python;
use msclam_data::layout::read_tile_label_file;
use msclam_data::torch_save::{parse_pickle, read_features, read_torch_save, PyObject};
use serde_json::Value as Json;

/// Runs the script into a folder of the calling test's own.
fn python_files(test: &str) -> (PathBuf, Vec<Json>) {
    let dir = std::env::temp_dir().join(format!("msclam-torch-save-{}-{test}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torch_save_files.py");
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
    let cases = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let Json::Array(cases) = serde_json::from_str(&cases).unwrap() else {
        panic!("expected.json is not a list")
    };
    (dir, cases)
}

/// Checks `got` against the JSON encoding of the Python value (see the script).
fn check(got: &PyObject, want: &Json, at: &str) {
    match (got, want) {
        (PyObject::None, Json::Null) => {}
        (PyObject::Bool(a), Json::Bool(b)) => assert_eq!(a, b, "{at}"),
        (PyObject::Int(a), Json::Number(b)) if b.is_i64() => {
            assert_eq!(*a, b.as_i64().unwrap(), "{at}")
        }
        (PyObject::Float(a), Json::Number(b)) => assert_eq!(*a, b.as_f64().unwrap(), "{at}"),
        (PyObject::Str(a), Json::String(b)) => assert_eq!(a, b, "{at}"),
        (got, Json::Object(map)) => {
            let (tag, inner) = map.iter().next().unwrap();
            match (tag.as_str(), got) {
                ("array", PyObject::Array(a)) => {
                    assert_eq!(a.dtype.name(), inner["dtype"], "{at}: dtype");
                    let shape: Vec<usize> = inner["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect();
                    assert_eq!(a.shape, shape, "{at}: shape");
                    let want = inner["values"].as_array().unwrap();
                    assert_eq!(a.len(), want.len(), "{at}: length");
                    if a.dtype.is_float() {
                        let got = a.to_f64();
                        for (i, (g, w)) in got.iter().zip(want).enumerate() {
                            assert_eq!(*g, w.as_f64().unwrap(), "{at}[{i}]");
                        }
                        // f32 conversion is exact for 16- and 32-bit floats.
                        if a.dtype.size() <= 4 {
                            for (g, w) in a.to_f32().iter().zip(want) {
                                assert_eq!(*g as f64, w.as_f64().unwrap(), "{at}");
                            }
                        }
                    } else {
                        let got = a.to_i64().unwrap();
                        for (i, (g, w)) in got.iter().zip(want).enumerate() {
                            assert_eq!(*g, w.as_i64().unwrap(), "{at}[{i}]");
                        }
                    }
                }
                ("dict", PyObject::Dict(pairs)) => {
                    let want = inner.as_array().unwrap();
                    assert_eq!(pairs.len(), want.len(), "{at}: dict size");
                    for ((k, v), w) in pairs.iter().zip(want) {
                        check(k, &w[0], &format!("{at}: key"));
                        check(v, &w[1], &format!("{at}[{}]", w[0]));
                    }
                }
                ("list", PyObject::List(items)) | ("tuple", PyObject::Tuple(items)) => {
                    let want = inner.as_array().unwrap();
                    assert_eq!(items.len(), want.len(), "{at}: length");
                    for (i, (g, w)) in items.iter().zip(want).enumerate() {
                        check(g, w, &format!("{at}[{i}]"));
                    }
                }
                _ => panic!("{at}: got {}, want {tag}", got.describe()),
            }
        }
        _ => panic!("{at}: got {got:?}, want {want}"),
    }
}

#[test]
fn files_written_by_pytorch_and_numpy_read_back_exactly() {
    let (dir, cases) = python_files("exact");
    assert!(cases.len() >= 30);
    for case in &cases {
        let file = case["file"].as_str().unwrap();
        let path = dir.join(file);
        let read = match case["kind"].as_str().unwrap() {
            "torch" => read_torch_save(&path).map_err(|e| e.to_string()),
            _ => parse_pickle(&std::fs::read(&path).unwrap()),
        };
        if let Some(error) = case.get("error") {
            let message = read.expect_err(file);
            assert!(
                message.contains(error.as_str().unwrap()),
                "{file}: {message}"
            );
            assert!(
                message.contains(file),
                "{file}: the error names the file: {message}"
            );
        } else if let Some(other) = case.get("other") {
            let got = read.unwrap_or_else(|e| panic!("{file}: {e}"));
            let description = got.describe();
            assert!(
                description.contains(other.as_str().unwrap()),
                "{file}: {description}"
            );
        } else {
            let got = read.unwrap_or_else(|e| panic!("{file}: {e}"));
            check(&got, &case["value"], file);
        }
    }
    // Feature tensors as an N x D matrix, in every floating-point type.
    for name in ["f32", "float16", "bfloat16", "float64"] {
        let (values, d) = read_features(&dir.join(format!("features_{name}.pt"))).unwrap();
        assert_eq!((values.len(), d), (37 * 24, 24), "{name}");
    }
    let err = read_features(&dir.join("ints.pt")).unwrap_err().to_string();
    assert!(err.contains("ints.pt") && err.contains("a dict"), "{err}");
    // Tile labels in every pickled form give the same mask.
    let reference = read_tile_label_file(&dir.join("labels_list_p4.pkl"), "s", 50).unwrap();
    assert!(reference.contains(&1));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("labels_") {
            let labels = read_tile_label_file(&path, "s", 50).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(labels, reference, "{name}");
        }
    }
    let err = read_tile_label_file(&dir.join("labels_mask_p4.pkl"), "s", 49)
        .unwrap_err()
        .to_string();
    assert!(err.contains("49 tiles"), "{err}");
    let err = read_tile_label_file(&dir.join("fortran.pkl"), "s", 50)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fortran.pkl") && err.contains("float32"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn damaged_torch_files_are_errors_naming_the_file() {
    let (dir, _) = python_files("damaged");
    for name in ["state_dict.pt", "legacy.pt", "features_f32.pt"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        // Every truncation and a few overwrites: an error, never a panic or a wrong value
        // taken for a right one.
        for cut in (0..bytes.len()).step_by(7) {
            let path = dir.join(format!("cut_{name}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            if let Err(e) = read_torch_save(&path) {
                assert!(e.to_string().contains("cut_"), "{e}");
            }
        }
        for at in (0..bytes.len()).step_by(13) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x5a;
            let _ = msclam_data::torch_save::parse_torch_save(&damaged);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
