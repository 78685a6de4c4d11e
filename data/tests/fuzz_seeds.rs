//! The fuzz targets' seed corpus (see docs/FUZZING.md): valid inputs of every reader, each
//! checked here to be accepted by the code it seeds. With `MSCLAM_FUZZ_SEEDS=<dir>` the seeds
//! are written to `<dir>/<target>/` (what `scripts/fuzz` does before fuzzing).

use std::path::{Path, PathBuf};

use msclam_data::layout;
use msclam_data::synthetic::{generate, SyntheticSpec};
use msclam_engine::Model;

/// A NumPy `.npy` file (format 1.0) of little-endian `i64` values, written by hand from the
/// format's specification.
fn npy_i64(values: &[i64]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

#[test]
fn seeds_are_valid_inputs_of_their_readers() {
    let out: PathBuf = std::env::var_os("MSCLAM_FUZZ_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("msclam-fuzz-seeds-{}", std::process::id()))
        });

    // .mscl files: raw for mscl_bytes; a choice byte plus no edit for mscl_fields.
    for (i, file) in msclam::sample_model_files().iter().enumerate() {
        Model::from_bytes(file).unwrap();
        write(&out, "mscl_bytes", &format!("model{i}.mscl"), file);
        write(&out, "mscl_fields", &format!("model{i}"), &[i as u8]);
    }
    // Session pushes: a model choice, then ops (strips with values, finalize, reset).
    let strip = |n: u8, with_coords: bool| {
        let op = n * 8 + if with_coords { 2 } else { 0 };
        let mut v = vec![op];
        v.extend(std::iter::repeat_n(140u8, n as usize * 6));
        v
    };
    let mut ops = vec![0u8];
    ops.extend(strip(3, true));
    ops.extend(strip(5, true));
    ops.extend([5, 7, 6]);
    ops.extend(strip(1, false));
    ops.push(5);
    write(&out, "session_push", "strips", &ops);

    // CLAM-layout files from the synthetic cohort writer.
    let cohort = out.join("cohort");
    let spec = SyntheticSpec {
        slides: 4,
        tiles_per_slide: 20,
        dim: 8,
        ..SyntheticSpec::default()
    };
    let slides = generate(&spec);
    layout::write_synthetic(&cohort, &slides, 1, 3).unwrap();
    let labels = [
        ("normal_tissue".to_owned(), 0),
        ("tumor_tissue".to_owned(), 1),
    ];
    let dataset = cohort.join("dataset.csv");
    assert_eq!(
        layout::read_dataset_csv(&dataset, &labels).unwrap().len(),
        4
    );
    let split = std::fs::read_dir(cohort.join("splits"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".csv") && !p.to_string_lossy().contains("bool"))
        .unwrap();
    layout::read_split_csv(&split).unwrap();
    let with_choice = |choice: u8, path: &Path| {
        let mut v = vec![choice];
        v.extend(std::fs::read(path).unwrap());
        v
    };
    write(&out, "data_files", "dataset", &with_choice(0, &dataset));
    write(&out, "data_files", "split", &with_choice(1, &split));
    write(
        &out,
        "data_files",
        "exclusions",
        &[2, b's', b'l', b'i', b'd', b'e', b'\n'],
    );
    for s in &slides {
        let h5 = cohort.join("h5_files").join(format!("{}.h5", s.id));
        let file = layout::read_h5(&h5, &s.id).unwrap();
        let n = file.coords.len();
        assert_eq!(file.features.len(), n * 8);
        write(&out, "h5_features", &s.id, &std::fs::read(&h5).unwrap());
        let pkl = layout::find_tile_label_file(&cohort.join("tile_labels"), &s.id);
        if let Some(pkl) = pkl.filter(|_| n <= 36) {
            // Choice 3 + 7 n reads a pickle for a slide of n tiles.
            assert_eq!(
                layout::read_tile_label_file(&pkl, &s.id, n).unwrap().len(),
                n
            );
            let choice = 3 + 7 * n as u8;
            write(
                &out,
                "data_files",
                &format!("{}.pkl", s.id),
                &with_choice(choice, &pkl),
            );
        }
    }
    // Tile labels as .npy indices and text (choices 4 and 5, 20 tiles).
    let npy = npy_i64(&[0, 3, 19]);
    let npy_path = out.join("labels.npy");
    std::fs::write(&npy_path, &npy).unwrap();
    let read = layout::read_tile_label_file(&npy_path, "s", 20).unwrap();
    assert_eq!((read[0], read[1], read[3], read[19]), (1, 0, 1, 1));
    write(
        &out,
        "data_files",
        "labels.npy",
        &with_choice(4 + 7 * 20, &npy_path),
    );
    write(
        &out,
        "data_files",
        "labels.txt",
        &[&[5 + 7 * 20][..], b"0\n3\n19\n"].concat(),
    );

    // torch.save archives (zip and legacy) and pickles, written by the real PyTorch and NumPy
    // (the reader's own test files) when the project's Python environment is there.
    if let Some(venv) = std::env::var_os("MSCLAM_VENV") {
        let files = out.join("torch-files");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torch_save_files.py");
        let status = std::process::Command::new(PathBuf::from(venv).join("bin/python"))
            .arg(&script)
            .arg(&files)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        // Files the reader refuses by design (TorchScript, expanded views, text) are not seeds.
        let expected = std::fs::read_to_string(files.join("expected.json")).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
        let refused: Vec<&str> = expected
            .as_array()
            .unwrap()
            .iter()
            .filter(|case| case.get("error").is_some())
            .filter_map(|case| case.get("file").and_then(|file| file.as_str()))
            .collect();
        for entry in std::fs::read_dir(&files).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if refused.contains(&name.as_str()) {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            if name.ends_with(".pt") {
                msclam_data::torch_save::parse_torch_save(&bytes).unwrap();
            } else if name.ends_with(".pkl") {
                msclam_data::torch_save::parse_pickle(&bytes).unwrap();
            } else {
                continue;
            }
            write(&out, "torch_files", &name, &bytes);
        }
        std::fs::remove_dir_all(&files).unwrap();
    }

    if std::env::var_os("MSCLAM_FUZZ_SEEDS").is_none() {
        let _ = std::fs::remove_dir_all(&out);
    } else {
        let _ = std::fs::remove_dir_all(&cohort);
        let _ = std::fs::remove_file(&npy_path);
    }
}
