//! Reading cohorts in the CLAM layout: a generated cohort round-trips, `.pkl` tile labels
//! written by real Python pickle are read, and every bad input is an error naming the slide.

use std::path::{Path, PathBuf};
use std::process::Command;

use msclam_trainer::cohort::{self, Annotated, ClamLayout};
use msclam_trainer::data::{FeaturePrecision, TUMOR};
use msclam_trainer::synthetic::{generate, SyntheticSpec};
use tch::Device;

/// Debian's HDF5 is the serial (not thread-safe) build, and tests run in parallel threads of
/// one process: take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclam-cohort-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

fn load(
    root: &Path,
    annotated: Annotated,
) -> msclam_trainer::Result<(msclam_trainer::data::Cohort, Vec<String>)> {
    cohort::load(
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
    cohort::write_synthetic(&root, &slides, 5, 1).unwrap();
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
    let status = Command::new("python3")
        .args(["-c", &format!("import pickle, sys; pickle.dump({values}, open(sys.argv[1], 'wb'), protocol={protocol})")])
        .arg(path)
        .status()
        .expect("python3 runs");
    assert!(status.success());
}

#[test]
fn tile_labels_pickled_by_python_are_read() {
    let _serial = serial();
    let dir = temp("pickle");
    for protocol in 0..=5 {
        let p = dir.join(format!("p{protocol}.pkl"));
        python_pickle(&p, "[1, 3, 5, 300]", protocol);
        let labels = cohort::read_tile_label_file(&p, "s", 400).unwrap();
        assert_eq!(
            labels.iter().filter(|l| **l == 1).count(),
            4,
            "protocol {protocol}"
        );
        assert!(labels[1] == 1 && labels[300] == 1 && labels[0] == 0);
    }
    let p = dir.join("bad.pkl");
    python_pickle(&p, "[1, 2, 9]", 4);
    let err = cohort::read_tile_label_file(&p, "slide_x", 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("slide_x") && err.contains("out of range"),
        "{err}"
    );
    let p = dir.join("dict.pkl");
    python_pickle(&p, "{'a': 1}", 4);
    assert!(cohort::read_tile_label_file(&p, "slide_y", 5)
        .unwrap_err()
        .to_string()
        .contains("slide_y"));
    let t = dir.join("labels.txt");
    std::fs::write(&t, "0\n2, 4\n").unwrap();
    assert_eq!(
        cohort::read_tile_label_file(&t, "s", 5).unwrap(),
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
    let s = cohort::read_h5(&path, "s").unwrap();
    assert_eq!((s.dim, s.features.len()), (4, 12));
    assert_eq!(s.features[5], 2.5);
}

/// Writes a valid cohort, lets `break_it` damage it, and returns the loading error.
fn error_after(name: &str, break_it: impl FnOnce(&Path)) -> String {
    let root = temp(name);
    cohort::write_synthetic(&root, &generate(&spec()), 1, 1).unwrap();
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
        h5(r, "slide_0005", &f, 3, 8)
    });
    assert!(e.contains("slide_0005") && e.contains("non-finite"), "{e}");
    let e = error_after("empty", |r| h5(r, "slide_0006", &[], 0, 8));
    assert!(e.contains("slide_0006") && e.contains("empty"), "{e}");
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
