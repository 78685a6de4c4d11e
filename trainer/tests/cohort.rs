//! Reading cohorts in the CLAM layout: a generated cohort round-trips, `.pkl` tile labels
//! written by real Python pickle are read, and every bad input is an error naming the slide.

use std::path::Path;
use std::process::Command;

use msclam::venv_python;
use msclam_trainer::data::{self, Annotated, FeaturePrecision, TUMOR};
use msclam_trainer::layout::{self, ClamLayout};
use msclam_trainer::synthetic::{generate, SyntheticSpec};
use tch::Device;

/// Debian's HDF5 is the serial (not thread-safe) build, and tests run in parallel threads of
/// one process: take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn temp(name: &str) -> msclam::ScratchDir {
    msclam::ScratchDir::new("cohort", name)
}

fn spec() -> SyntheticSpec {
    SyntheticSpec {
        slides: 20,
        tiles_per_slide: 30,
        dim: 8,
        seed: 4,
        tumor_slide_fraction: 0.5,
        ..Default::default()
    }
}

fn load(root: &Path, annotated: Annotated) -> msclam_trainer::Result<(data::Cohort, Vec<String>)> {
    data::load(
        &ClamLayout::under(root),
        0,
        &annotated,
        FeaturePrecision::F32,
        Device::Cpu,
    )
}

#[test]
fn a_generated_cohort_round_trips_through_the_clam_layout() {
    let _serial = serial();
    let root = temp("roundtrip");
    let slides = generate(&spec());
    layout::write_synthetic(&root, &slides, 5, 1).unwrap();
    for fold in 0..5 {
        assert!(root.join(format!("splits/splits_{fold}.csv")).exists());
    }
    let (c, annotated) = load(&root, Annotated::Percent(50.0, 1)).unwrap();
    assert_eq!(c.dim, 8);
    assert_eq!(c.train.len() + c.val.len() + c.test.len(), 20);
    for s in &c.slides {
        let original = slides.iter().find(|o| o.id == s.id).unwrap();
        assert_eq!(s.label, original.label);
        assert_eq!(s.num_tiles, original.tile_labels.len());
        assert_eq!(
            s.reference_tiles.as_ref().unwrap(),
            &original.tile_labels,
            "{}",
            s.id
        );
        assert_eq!(s.coords, original.coords);
    }
    // k % of the tumor slides of train + val, drawn among the training tumor slides.
    let tumor_train_val = c
        .train
        .iter()
        .chain(&c.val)
        .filter(|&&i| c.slides[i].label == TUMOR)
        .count();
    assert_eq!(
        annotated.len(),
        ((0.5 * tumor_train_val as f64).round() as usize).min(
            c.train
                .iter()
                .filter(|&&i| c.slides[i].label == TUMOR)
                .count()
        )
    );
    for id in &annotated {
        let i = c.slides.iter().position(|s| &s.id == id).unwrap();
        assert!(c.train.contains(&i) && c.slides[i].tile_labels.is_some());
    }
    // A predefined list.
    let first_tumor = c
        .train
        .iter()
        .map(|&i| &c.slides[i])
        .find(|s| s.label == TUMOR)
        .unwrap()
        .id
        .clone();
    let (c2, listed) = load(&root, Annotated::List(vec![first_tumor.clone()])).unwrap();
    assert_eq!(listed, vec![first_tumor]);
    assert_eq!(
        c2.slides.iter().filter(|s| s.tile_labels.is_some()).count(),
        1
    );
}

fn python_pickle(path: &Path, values: &str, protocol: u8) {
    python(
        &format!("import pickle, sys; pickle.dump({values}, open(sys.argv[1], 'wb'), protocol={protocol})"),
        &[path],
    );
}

#[test]
fn tile_labels_pickled_by_python_are_read() {
    let _serial = serial();
    let dir = temp("pickle");
    for protocol in 0..=5 {
        let p = dir.join(format!("p{protocol}.pkl"));
        python_pickle(&p, "[1, 3, 5, 300]", protocol);
        let labels = layout::read_tile_label_file(&p, "s", 400).unwrap();
        assert_eq!(
            labels.iter().filter(|l| **l == 1).count(),
            4,
            "protocol {protocol}"
        );
        assert!(labels[1] == 1 && labels[300] == 1 && labels[0] == 0);
    }
    let p = dir.join("bad.pkl");
    python_pickle(&p, "[1, 2, 9]", 4);
    let err = layout::read_tile_label_file(&p, "slide_x", 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("slide_x") && err.contains("out of range"),
        "{err}"
    );
    let p = dir.join("dict.pkl");
    python_pickle(&p, "{'a': 1}", 4);
    assert!(layout::read_tile_label_file(&p, "slide_y", 5)
        .unwrap_err()
        .to_string()
        .contains("slide_y"));
    let t = dir.join("labels.txt");
    std::fs::write(&t, "0\n2, 4\n").unwrap();
    assert_eq!(
        layout::read_tile_label_file(&t, "s", 5).unwrap(),
        vec![1, 0, 1, 0, 1]
    );
}

#[test]
fn half_precision_features_are_read() {
    let _serial = serial();
    let dir = temp("f16");
    let path = dir.join("s.h5");
    let file = hdf5::File::create(&path).unwrap();
    let values: Vec<half::f16> = (0..12)
        .map(|v| half::f16::from_f32(v as f32 * 0.5))
        .collect();
    file.new_dataset::<half::f16>()
        .shape([3, 4])
        .create("features")
        .unwrap()
        .write_raw(&values)
        .unwrap();
    drop(file);
    let s = layout::read_h5(&path, "s").unwrap();
    assert_eq!((s.dim, s.features.len()), (4, 12));
    assert_eq!(s.features[5], 2.5);
}

/// Writes a valid cohort, lets `break_it` damage it, and returns the loading error.
fn error_after(name: &str, break_it: impl FnOnce(&Path)) -> String {
    let root = temp(name);
    layout::write_synthetic(&root, &generate(&spec()), 1, 1).unwrap();
    break_it(&root);
    load(&root, Annotated::Percent(0.0, 1))
        .unwrap_err()
        .to_string()
}

fn h5(root: &Path, id: &str, features: &[f32], n: usize, d: usize) {
    let path = root.join("h5_files").join(format!("{id}.h5"));
    let file = hdf5::File::create(&path).unwrap();
    file.new_dataset::<f32>()
        .shape([n, d])
        .create("features")
        .unwrap()
        .write_raw(features)
        .unwrap();
}

#[test]
fn every_bad_input_is_an_error_naming_the_slide() {
    let _serial = serial();
    let e = error_after("missing", |r| {
        std::fs::remove_file(r.join("h5_files/slide_0003.h5")).unwrap()
    });
    assert!(e.contains("slide_0003") && e.contains("missing"), "{e}");
    let e = error_after("dim", |r| h5(r, "slide_0004", &[0.5; 30], 3, 10));
    assert!(e.contains("slide_0004") && e.contains("D = 10"), "{e}");
    let e = error_after("nan", |r| {
        let mut f = vec![0.5f32; 24];
        f[9] = f32::NAN;
        h5(r, "slide_0015", &f, 3, 8)
    });
    assert!(e.contains("slide_0015") && e.contains("non-finite"), "{e}");
    let e = error_after("empty", |r| h5(r, "slide_0016", &[], 0, 8));
    assert!(e.contains("slide_0016") && e.contains("empty"), "{e}");
    let e = error_after("label", |r| {
        let p = r.join("dataset.csv");
        let t = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("normal_tissue", "benign", 1);
        std::fs::write(&p, t).unwrap();
    });
    assert!(e.contains("unknown label `benign`"), "{e}");
    let e = error_after("split", |r| {
        let p = r.join("splits/splits_0.csv");
        let t = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("slide_0001", "slide_9999", 1);
        std::fs::write(&p, t).unwrap();
    });
    assert!(e.contains("slide_9999") && e.contains("not in"), "{e}");
    let e = error_after("range", |r| {
        let tumor = std::fs::read_dir(r.join("tile_labels"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        python_pickle(&tumor, "[100000]", 4);
    });
    assert!(e.contains("out of range"), "{e}");
}

/// The project's Python environment (torch and NumPy), which `scripts/setup` installs.
/// Runs a Python program in the project's environment, with `args` as `sys.argv[1:]`.
fn python(program: &str, args: &[&Path]) {
    let out = Command::new(venv_python())
        .args(["-c", program])
        .args(args)
        .output()
        .expect("the environment's python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `features` (n x d) as `torch.save(tensor.to(dtype))` from real Python torch.
fn torch_save(path: &Path, features: &[f32], d: usize, dtype: &str) {
    let raw = path.with_extension("f32");
    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).unwrap();
    python(
        &format!(
            "import sys, torch\n\
             t = torch.frombuffer(bytearray(open(sys.argv[1], 'rb').read()), dtype=torch.float32)\n\
             torch.save(t.reshape(-1, {d}).to(torch.{dtype}), sys.argv[2])"
        ),
        &[&raw, path],
    );
}

#[test]
fn pt_files_written_by_torch_save_are_read() {
    let _serial = serial();
    let root = temp("pt");
    let slides = generate(&spec());
    layout::write_synthetic(&root, &slides, 1, 1).unwrap();
    // CLAM's pt_files/ with the same features; the .h5 files go away.
    std::fs::create_dir_all(root.join("pt_files")).unwrap();
    for s in &slides {
        torch_save(
            &root.join(format!("pt_files/{}.pt", s.id)),
            &s.features,
            8,
            "float32",
        );
        std::fs::remove_file(root.join(format!("h5_files/{}.h5", s.id))).unwrap();
    }
    let layout = ClamLayout::under(&root);
    for s in &slides[..3] {
        let read = layout::read_slide(&layout, &s.id).unwrap();
        assert_eq!(read.dim, 8);
        assert_eq!(read.features, s.features, "{}", s.id);
        assert_eq!(read.coords.len(), s.tile_labels.len());
    }
    let (c, _) = load(&root, Annotated::Percent(50.0, 1)).unwrap();
    assert_eq!(c.dim, 8);
    let tiles: usize = c.slides.iter().map(|s| s.coords.len()).sum();
    let used: usize = slides
        .iter()
        .filter(|s| c.slides.iter().any(|t| t.id == s.id))
        .map(|s| s.tile_labels.len())
        .sum();
    assert_eq!(tiles, used);
    // Half and bfloat16 tensors are widened to f32.
    let dir = temp("pt-kinds");
    let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
    for dtype in ["float16", "bfloat16", "float64"] {
        let p = dir.join(format!("{dtype}.pt"));
        torch_save(&p, &values, 4, dtype);
        let s = layout::read_pt(&p, "s").unwrap();
        assert_eq!((s.dim, &s.features), (4, &values), "{dtype}");
    }
}

#[test]
fn bad_pt_files_are_errors_naming_the_slide() {
    let _serial = serial();
    let dir = temp("pt-bad");
    let cases: [(&str, &str, &str); 4] = [
        ("vector", "torch.save(torch.ones(5), sys.argv[1])", "shape"),
        (
            "dict",
            "torch.save({'features': torch.ones(2, 2)}, sys.argv[1])",
            "not a tensor",
        ),
        (
            "ints",
            "torch.save(torch.ones(2, 2, dtype=torch.int64), sys.argv[1])",
            "floating point",
        ),
        (
            "empty",
            "torch.save(torch.ones(0, 4), sys.argv[1])",
            "empty",
        ),
    ];
    for (name, program, expected) in cases {
        let p = dir.join(format!("{name}.pt"));
        python(&format!("import sys, torch\n{program}"), &[&p]);
        let e = layout::read_pt(&p, "slide_bad").unwrap_err().to_string();
        assert!(
            e.contains("slide_bad") && e.contains(expected),
            "{name}: {e}"
        );
    }
    // Not a torch file at all, and a truncated one: errors, not crashes.
    let p = dir.join("garbage.pt");
    std::fs::write(&p, b"definitely not a zip archive").unwrap();
    let e = layout::read_pt(&p, "slide_bad").unwrap_err().to_string();
    assert!(e.contains("slide_bad"), "{e}");
    let good = dir.join("good.pt");
    torch_save(&good, &[1.0; 64], 8, "float32");
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = layout::read_pt(&cut, "slide_cut").unwrap_err().to_string();
    assert!(e.contains("slide_cut"), "{e}");
}

#[test]
fn npy_tile_labels_written_by_numpy_are_read() {
    let _serial = serial();
    let dir = temp("npy");
    let write = |name: &str, array: &str| {
        let p = dir.join(name);
        python(
            &format!("import sys, numpy as np\nnp.save(sys.argv[1], {array})"),
            &[&p],
        );
        p
    };
    for dtype in ["int64", "int32", "uint16", "int8"] {
        let p = write(
            &format!("{dtype}.npy"),
            &format!("np.array([1, 3, 5, 90], dtype=np.{dtype})"),
        );
        let labels = layout::read_tile_label_file(&p, "s", 100).unwrap();
        let marked: Vec<usize> = (0..100).filter(|&i| labels[i] == 1).collect();
        assert_eq!(marked, vec![1, 3, 5, 90], "{dtype}");
    }
    let mask = write("mask.npy", "np.arange(6) % 3 == 0");
    assert_eq!(
        layout::read_tile_label_file(&mask, "s", 6).unwrap(),
        vec![1, 0, 0, 1, 0, 0]
    );
    let e = layout::read_tile_label_file(&mask, "slide_m", 7)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("slide_m") && e.contains("6 entries for 7 tiles"),
        "{e}"
    );
    let out_of_range = write("range.npy", "np.array([2, 10])");
    let e = layout::read_tile_label_file(&out_of_range, "slide_r", 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("slide_r") && e.contains("out of range"), "{e}");
    let floats = write("floats.npy", "np.array([0.5, 1.0])");
    let e = layout::read_tile_label_file(&floats, "slide_f", 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("slide_f") && e.contains("integer tile indices"),
        "{e}"
    );
    let matrix = write("matrix.npy", "np.zeros((2, 2), dtype=np.int64)");
    let e = layout::read_tile_label_file(&matrix, "slide_2d", 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("slide_2d") && e.contains("one dimension"), "{e}");
}

#[test]
fn incomplete_annotations_go_on_the_exclusion_list_and_are_never_chosen() {
    let _serial = serial();
    let root = temp("incomplete");
    let slides = generate(&SyntheticSpec {
        slides: 40,
        tiles_per_slide: 60,
        incomplete_fraction: 0.5,
        ..spec()
    });
    let incomplete: Vec<&str> = slides
        .iter()
        .filter(|s| s.incomplete)
        .map(|s| s.id.as_str())
        .collect();
    assert!(incomplete.len() >= 3, "{incomplete:?}");
    layout::write_synthetic(&root, &slides, 1, 1).unwrap();
    let listed: Vec<String> = std::fs::read_to_string(root.join("exclusions.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, incomplete);
    // Even asking for every tumor slide, no excluded slide is annotated; the excluded slides'
    // reference is what the annotator marked (fewer tiles than the truth).
    let (c, annotated) = load(&root, Annotated::Percent(100.0, 1)).unwrap();
    assert!(!annotated.is_empty());
    assert!(annotated
        .iter()
        .all(|id| !incomplete.contains(&id.as_str())));
    for s in &c.slides {
        let generated = slides.iter().find(|g| g.id == s.id).unwrap();
        assert_eq!(s.excluded, generated.incomplete, "{}", s.id);
        if generated.incomplete {
            let reference = s.reference_tiles.as_ref().unwrap();
            assert_eq!(reference, &generated.annotation);
            assert_ne!(reference, &generated.tile_labels);
        }
    }
}
