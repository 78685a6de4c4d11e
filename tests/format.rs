//! The `.mscl` format: round trips, integrity (every changed byte is caught), and each way a
//! file can be bad.

mod common;

use std::sync::Arc;

use msclam::{random_weights, synthetic_slide, tiny_config};
use msclam_engine::format::{self, keys, Dtype, Layout, ModelWriter, TensorId};
use msclam_engine::kernels::unpack_panels;
use msclam_engine::{Error, Model, ModelConfig, ModelSize, SlideSession};

fn tiny_file() -> Vec<u8> {
    ModelWriter::new(&random_weights(tiny_config(), 9))
        .metadata(keys::EMBEDDER_NAME, "resnet50_trunc")
        .unwrap()
        .to_bytes()
        .unwrap()
}

#[test]
fn every_single_byte_change_is_rejected() {
    let file = tiny_file();
    assert!(Model::from_bytes(&file).is_ok());
    for i in 0..file.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[i] ^= flip;
            assert!(
                Model::from_bytes(&bad).is_err(),
                "flipping byte {i} with {flip:#x} was accepted"
            );
        }
    }
}

#[test]
fn every_truncation_and_any_trailing_byte_is_rejected() {
    let file = tiny_file();
    for len in 0..file.len() {
        let err = Model::from_bytes(&file[..len]).unwrap_err();
        assert!(
            matches!(err, Error::Truncated { .. }),
            "length {len}: {err}"
        );
    }
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(
        Model::from_bytes(&longer),
        Err(Error::TrailingBytes { .. })
    ));
}

#[test]
fn wrong_magic_says_so() {
    let err = Model::from_bytes(b"PK\x03\x04 this is a zip file, not a model at all........")
        .unwrap_err();
    assert!(matches!(err, Error::BadMagic { .. }));
    assert!(err.to_string().contains("not an .mscl model file"), "{err}");
    let mut file = tiny_file();
    file[1] = b'X';
    format::reseal(&mut file);
    assert!(matches!(
        Model::from_bytes(&file),
        Err(Error::BadMagic { .. })
    ));
}

#[test]
fn future_major_version_is_rejected_and_newer_minor_is_read() {
    let mut file = tiny_file();
    file[8..10].copy_from_slice(&2u16.to_le_bytes());
    format::reseal(&mut file);
    let err = Model::from_bytes(&file).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedVersion {
                major: 2,
                minor: 0,
                supported: 1
            }
        ),
        "{err}"
    );
    let mut file = tiny_file();
    file[10..12].copy_from_slice(&7u16.to_le_bytes());
    format::reseal(&mut file);
    assert_eq!(Model::from_bytes(&file).unwrap().format_version(), (1, 7));
}

#[test]
fn checksum_mismatch_names_both_values() {
    let mut file = tiny_file();
    let last = file.len() - 1;
    file[last] ^= 0x10;
    let err = Model::from_bytes(&file).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }));
    assert!(err.to_string().contains("corrupted"));
}

#[test]
fn inconsistent_dimensions_are_rejected_with_the_tensor_named() {
    // Header D changed from 6 to 7 (and resealed, as a buggy writer would).
    let mut file = tiny_file();
    file[32..36].copy_from_slice(&7u32.to_le_bytes());
    format::reseal(&mut file);
    let err = Model::from_bytes(&file).unwrap_err();
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
    assert!(err.to_string().contains("fc.weight"), "{err}");
    // Zero dimensions, bad class counts and thresholds.
    for (at, value) in [(36usize, 0u32), (40, 0)] {
        let mut file = tiny_file();
        file[at..at + 4].copy_from_slice(&value.to_le_bytes());
        format::reseal(&mut file);
        assert!(matches!(
            Model::from_bytes(&file),
            Err(Error::InvalidModel { .. })
        ));
    }
    let mut file = tiny_file();
    file[46..48].copy_from_slice(&5u16.to_le_bytes()); // tumor class 5 of 2
    format::reseal(&mut file);
    assert!(Model::from_bytes(&file)
        .unwrap_err()
        .to_string()
        .contains("tumor_class"));
    let mut file = tiny_file();
    file[52..56].copy_from_slice(&f32::NAN.to_le_bytes());
    format::reseal(&mut file);
    assert!(Model::from_bytes(&file)
        .unwrap_err()
        .to_string()
        .contains("threshold"));
    // Gated header, but the file claims plain attention while carrying gate tensors.
    let mut file = tiny_file();
    file[48] = 0;
    format::reseal(&mut file);
    assert!(Model::from_bytes(&file)
        .unwrap_err()
        .to_string()
        .contains("attention_b"));
}

#[test]
fn unknown_dtype_and_non_finite_weights_are_rejected() {
    let file = tiny_file();
    let parsed = format::parse(&file).unwrap();
    let entry_start = format::HEADER_BYTES; // first table entry: fc.weight
    assert_eq!(parsed.tensor(TensorId::FcWeight).unwrap().rows, 5);
    let mut bad = file.clone();
    bad[entry_start + 2] = 4; // no such dtype
    format::reseal(&mut bad);
    let err = Model::from_bytes(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedDtype {
                tensor: "fc.weight",
                dtype: 4
            }
        ),
        "{err}"
    );
    // int8 (code 3) needs its scales.
    let mut bad = file.clone();
    bad[entry_start + 2] = 3;
    format::reseal(&mut bad);
    let err = Model::from_bytes(&bad).unwrap_err().to_string();
    assert!(err.contains("fc.weight") && err.contains("scales"), "{err}");
    let mut bad = file.clone();
    let data = parsed.tensor(TensorId::ClassifierBias).unwrap().data.start;
    bad[data..data + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    format::reseal(&mut bad);
    assert!(Model::from_bytes(&bad)
        .unwrap_err()
        .to_string()
        .contains("non-finite"));
}

#[test]
fn int8_files_hold_per_row_scales_that_the_loader_checks() {
    let weights = random_weights(tiny_config(), 9);
    let file = ModelWriter::new(&weights)
        .matrix_dtype(Dtype::Int8)
        .to_bytes()
        .unwrap();
    let parsed = format::parse(&file).unwrap();
    let fc = parsed.tensor(TensorId::FcWeight).unwrap();
    assert_eq!(fc.dtype, Dtype::Int8);
    let scales = fc.scales.clone().unwrap();
    assert_eq!(scales.len(), 4 * fc.rows);
    // Row 0's scale is its largest magnitude / 127, and its integers round w / scale.
    let d = tiny_config().input_dim;
    let row0 = &weights.fc_weight[..d];
    let max = row0.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale0 = f32::from_le_bytes(file[scales.start..scales.start + 4].try_into().unwrap());
    assert_eq!(scale0, max / 127.0);
    // Panel layout: input i of row 0 is byte 16 i of the data.
    for (i, w) in row0.iter().enumerate() {
        let q = file[fc.data.start + 16 * i] as i8;
        assert_eq!(q as f32, (w / scale0).round_ties_even(), "input {i}");
    }
    // Vectors stay f32, without scales.
    let bias = parsed.tensor(TensorId::FcBias).unwrap();
    assert_eq!((bias.dtype, bias.scales.clone()), (Dtype::F32, None));

    // Each table entry is 64 bytes; fc.weight is the first.
    let entry = format::HEADER_BYTES;
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bad = file.clone();
        f(&mut bad);
        format::reseal(&mut bad);
        Model::from_bytes(&bad).unwrap_err().to_string()
    };
    let err =
        with(&|b| b[scales.start..scales.start + 4].copy_from_slice(&(-1.0f32).to_le_bytes()));
    assert!(
        err.contains("negative or non-finite scale for row 0"),
        "{err}"
    );
    let err =
        with(&|b| b[scales.start + 4..scales.start + 8].copy_from_slice(&f32::NAN.to_le_bytes()));
    assert!(err.contains("row 1"), "{err}");
    let err = with(&|b| b[entry + 40..entry + 48].copy_from_slice(&4u64.to_le_bytes()));
    assert!(err.contains("bytes of scales"), "{err}");
    let err =
        with(&|b| b[entry + 32..entry + 40].copy_from_slice(&(file.len() as u64).to_le_bytes()));
    assert!(
        err.contains("scales of tensor fc.weight") && err.contains("outside"),
        "{err}"
    );
    // An f32 tensor may not declare scales.
    let f32_file = tiny_file();
    let mut bad = f32_file.clone();
    bad[entry + 40..entry + 48].copy_from_slice(&20u64.to_le_bytes());
    format::reseal(&mut bad);
    let err = Model::from_bytes(&bad).unwrap_err().to_string();
    assert!(err.contains("declares scales"), "{err}");
}

#[test]
fn writer_refuses_bad_weights_and_metadata() {
    let mut w = random_weights(tiny_config(), 1);
    w.fc_bias.pop();
    assert!(ModelWriter::new(&w)
        .to_bytes()
        .unwrap_err()
        .to_string()
        .contains("fc.bias"));
    let mut w = random_weights(tiny_config(), 1);
    w.classifier_weight[0] = f32::NAN;
    assert!(ModelWriter::new(&w).to_bytes().is_err());
    let w = random_weights(tiny_config(), 1);
    assert!(ModelWriter::new(&w).metadata("", "x").is_err());
    let mut big = random_weights(tiny_config(), 1);
    big.fc_weight[0] = 1e6; // beyond f16's range
    assert!(ModelWriter::new(&big)
        .matrix_dtype(Dtype::F16)
        .to_bytes()
        .is_err());
}

#[test]
fn weights_and_metadata_round_trip() {
    let config = ModelConfig::clam_sb(ModelSize::Tiny).with_input_dim(100);
    let weights = random_weights(config, 2);
    let file = ModelWriter::new(&weights)
        .metadata(keys::EMBEDDER_NAME, "uni")
        .unwrap()
        .metadata(keys::EMBEDDER_DIM, "100")
        .unwrap()
        .metadata("notes", "größe ✓")
        .unwrap()
        .to_bytes()
        .unwrap();
    let model = Model::from_bytes(&file).unwrap();
    assert_eq!(model.config(), &config);
    assert_eq!(model.metadata().get(keys::EMBEDDER_NAME), Some("uni"));
    assert_eq!(model.metadata().get("notes"), Some("größe ✓"));
    assert!(model
        .metadata()
        .get(keys::TOOL_VERSION)
        .unwrap()
        .starts_with("msclam-engine "));
    assert_eq!(model.metadata().get("absent"), None);
    assert_eq!(model.metadata().iter().count(), 4);
    let fc = model.tensor_values(TensorId::FcWeight).unwrap();
    assert_eq!(unpack_panels(fc, 256, 100), weights.fc_weight);
    assert_eq!(
        model.tensor_values(TensorId::TileClassifierWeight).unwrap(),
        &weights.tile_classifier_weight[..]
    );
    // Every section is 64-byte aligned.
    let parsed = format::parse(&file).unwrap();
    for entry in parsed.tensors.iter().flatten() {
        assert_eq!(entry.data.start % 64, 0, "{:?}", entry.id);
    }
}

fn score(model: Arc<Model>, emb: &[f32]) -> Vec<f32> {
    let n = emb.len() / model.config().input_dim;
    let mut s = SlideSession::new(model, n).unwrap();
    s.push(emb, None).unwrap();
    let r = s.finalize().unwrap();
    r.tile_probabilities
        .iter()
        .chain(r.slide_probabilities)
        .copied()
        .collect()
}

#[test]
fn row_major_and_half_precision_files_load_and_score() {
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let weights = random_weights(config, 3);
    let (emb, _, _) = synthetic_slide(config.input_dim, 50, 0.2, 4);
    let packed = ModelWriter::new(&weights).to_bytes().unwrap();
    let want = score(Arc::new(Model::from_bytes(&packed).unwrap()), &emb);
    // Row-major matrices are packed at load: identical arithmetic, identical bits.
    let row_major = ModelWriter::new(&weights)
        .matrix_layout(Layout::RowMajor)
        .to_bytes()
        .unwrap();
    let model = Model::from_bytes(&row_major).unwrap();
    assert!(model.memory().converted_bytes > 0);
    assert_eq!(score(Arc::new(model), &emb), want);
    // f16 / bf16 matrices: half the matrix bytes, int8 a quarter; results within their
    // rounding.
    for (dtype, tol, share) in [
        (Dtype::F16, 2e-3f32, 0.6),
        (Dtype::Bf16, 2e-2, 0.6),
        (Dtype::Int8, 3e-2, 0.35),
    ] {
        let file = ModelWriter::new(&weights)
            .matrix_dtype(dtype)
            .to_bytes()
            .unwrap();
        assert!(
            (file.len() as f64) < packed.len() as f64 * share,
            "{dtype:?}: {} vs {}",
            file.len(),
            packed.len()
        );
        let got = score(Arc::new(Model::from_bytes(&file).unwrap()), &emb);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < tol, "{dtype:?}: {g} vs {w}");
        }
    }
}

#[test]
fn memory_mapped_static_and_borrowed_models_use_weights_in_place() {
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let weights = random_weights(config, 5);
    let file = ModelWriter::new(&weights).to_bytes().unwrap();
    let (emb, _, _) = synthetic_slide(config.input_dim, 30, 0.2, 6);
    let want = score(Arc::new(Model::from_bytes(&file).unwrap()), &emb);

    let dir = std::env::temp_dir().join(format!("msclam-format-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.mscl");
    ModelWriter::new(&weights).write(&path).unwrap();
    let mapped = Model::load(&path).unwrap();
    let memory = mapped.memory();
    assert!(!memory.file_copied && memory.converted_bytes == 0);
    let weight_bytes: usize = format::parse(&file)
        .unwrap()
        .tensors
        .iter()
        .flatten()
        .map(|t| t.data.len())
        .sum();
    assert_eq!(memory.in_place_bytes, weight_bytes);
    assert_eq!(score(Arc::new(mapped), &emb), want);
    assert_eq!(score(Arc::new(Model::read(&path).unwrap()), &emb), want);
    std::fs::remove_dir_all(&dir).unwrap();

    let leaked: &'static [u8] = Box::leak(file.clone().into_boxed_slice());
    let stat = Model::from_static(leaked).unwrap();
    assert!(!stat.memory().file_copied && stat.memory().converted_bytes == 0);
    assert_eq!(score(Arc::new(stat), &emb), want);

    // Misaligned caller bytes: still correct, weights copied.
    let mut shifted = vec![0u8; file.len() + 1];
    shifted[1..].copy_from_slice(&file);
    // SAFETY: `shifted` outlives the model, which is dropped inside this block.
    let model = unsafe { Model::from_borrowed_bytes(&shifted[1..]) }.unwrap();
    assert_eq!(model.memory().in_place_bytes, 0);
    assert_eq!(score(Arc::new(model), &emb), want);
}

#[test]
fn missing_files_are_io_errors_naming_the_path() {
    let err = Model::load("/nonexistent/dir/model.mscl").unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/model.mscl"));
    let dir = std::env::temp_dir().join(format!("msclam-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.mscl");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Model::load(&empty), Err(Error::Truncated { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}
