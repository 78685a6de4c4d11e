//! `msclam score` end to end on a generated CLAM cohort: the outputs against the engine's
//! plain f64 reference implementation, the GeoJSON against Shapely (a real polygon library),
//! bad slides reported and skipped, re-runs resumed, shards merged into exactly the unsharded
//! tables.

use std::path::{Path, PathBuf};
use std::process::Command;

use msclam::random_weights;
use msclam::venv_python;
use msclam_data::layout;
use msclam_data::outputs::tables;
use msclam_data::score::{self, ScoreOptions, Shard};
use msclam_data::synthetic::{generate, SyntheticSpec};
use msclam_engine::format::ModelWriter;
use msclam_engine::{reference, AttentionKind, ModelConfig, TileClassifierKind};

fn temp(name: &str) -> msclam::ScratchDir {
    msclam::ScratchDir::new("score", name)
}

const DIM: usize = 16;

fn config() -> ModelConfig {
    ModelConfig {
        input_dim: DIM,
        hidden_dim: 24,
        attention_dim: 12,
        attention: AttentionKind::Gated,
        num_classes: 2,
        tile_classifier: TileClassifierKind::SingleBinary,
        tumor_class: 1,
        threshold: 0.5,
    }
}

/// A cohort of 9 slides and a model with random weights, under `root`.
fn cohort(root: &Path) -> (PathBuf, PathBuf, msclam_engine::ModelWeights) {
    let slides = generate(&SyntheticSpec {
        slides: 9,
        tiles_per_slide: 60,
        dim: DIM,
        seed: 3,
        ..SyntheticSpec::default()
    });
    let data = root.join("cohort");
    layout::write_synthetic(&data, &slides, 1, 1).unwrap();
    let weights = random_weights(config(), 5);
    let model = root.join("model.mscl");
    ModelWriter::new(&weights).write(&model).unwrap();
    (data, model, weights)
}

fn options(model: &Path, input: &Path, out: &Path) -> ScoreOptions {
    ScoreOptions {
        model: model.to_path_buf(),
        input: input.to_path_buf(),
        out: out.to_path_buf(),
        threads: 2,
        shard: None,
        tile_size: None,
        pictures: true,
    }
}

#[test]
fn scores_match_the_reference_and_every_output_is_written() {
    let root = temp("outputs");
    let (data, model, weights) = cohort(&root);
    let out = root.join("out");
    let outcome = score::score_slides(&options(&model, &data, &out), &|_| {}).unwrap();
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.slides.len(), 9);
    let rows = tables::read_slides_csv(&out.join("slides.csv")).unwrap();
    assert_eq!(rows, outcome.slides);
    let layout = layout::ClamLayout::under(&data);
    for row in &rows {
        let file = layout::read_h5(
            &layout.h5_dir.join(format!("{}.h5", row.slide_id)),
            &row.slide_id,
        )
        .unwrap();
        let want = reference::forward(&weights, &file.features);
        assert!(
            (row.tumor_probability as f64 - want.slide_probabilities[1]).abs() < 1e-5,
            "{}: {} vs {}",
            row.slide_id,
            row.tumor_probability,
            want.slide_probabilities[1]
        );
        let [h5, geojson, png] = score::output_paths(&out, &row.slide_id);
        let f = hdf5::File::open(&h5).unwrap();
        let probs = f
            .dataset("tile_probabilities")
            .unwrap()
            .read_raw::<f32>()
            .unwrap();
        for (got, w) in probs.iter().zip(&want.tile_probabilities) {
            assert!((*got as f64 - w).abs() < 1e-5);
        }
        let att = f.dataset("attention_scores").unwrap();
        assert_eq!(att.shape(), vec![file.coords.len(), 1]);
        let logits = att.read_raw::<f32>().unwrap();
        for (got, w) in logits.iter().zip(&want.attention_logits) {
            assert!((*got as f64 - w).abs() < 1e-4 * (1.0 + w.abs()));
        }
        let coords = f.dataset("coords").unwrap().read_raw::<i64>().unwrap();
        assert_eq!(coords.len(), 2 * file.coords.len());
        let mask = f.dataset("tile_mask").unwrap().read_raw::<u8>().unwrap();
        let tumor_tiles = mask.iter().filter(|m| **m == 1).count();
        assert_eq!(tumor_tiles, row.tumor_tiles);
        assert!(geojson.exists() && png.exists());
        let picture = image::open(&png).unwrap();
        assert!(
            picture.width() >= 480,
            "legible: {} px wide",
            picture.width()
        );
    }
    // Labelled cohort: the paper's metrics.
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["slides"], 9);
    assert!(metrics["accuracy"].as_f64().is_some());
    // Re-running finds every slide done and changes nothing.
    let before = std::fs::read(out.join("slides.csv")).unwrap();
    let again = score::score_slides(&options(&model, &data, &out), &|_| {}).unwrap();
    assert_eq!(again.already_done, 9);
    assert_eq!(again.tiles_scored, 0);
    assert_eq!(std::fs::read(out.join("slides.csv")).unwrap(), before);
}

#[test]
fn geojson_polygons_are_valid_and_cover_exactly_the_mask() {
    let root = temp("geojson");
    let (data, model, _) = cohort(&root);
    let out = root.join("out");
    let mut opts = options(&model, &data, &out);
    opts.pictures = false;
    let outcome = score::score_slides(&opts, &|_| {}).unwrap();
    let mut checked = 0;
    for row in outcome.slides.iter().filter(|s| s.tumor_tiles > 0) {
        let [h5, geojson, _] = score::output_paths(&out, &row.slide_id);
        let f = hdf5::File::open(&h5).unwrap();
        let size = f.attr("tile_size").unwrap().read_scalar::<i64>().unwrap();
        // The generator lays tiles on a 256-pixel grid.
        assert_eq!(size, 256);
        let expected_area = row.tumor_tiles as f64 * (size * size) as f64;
        let program = "import json, sys\n\
            from shapely.geometry import shape\n\
            from shapely.ops import unary_union\n\
            fc = json.load(open(sys.argv[1]))\n\
            assert fc['type'] == 'FeatureCollection'\n\
            geoms = [shape(f['geometry']) for f in fc['features']]\n\
            for f, g in zip(fc['features'], geoms):\n\
            \x20   assert g.is_valid, g\n\
            \x20   assert f['properties']['classification']['name'] == 'Tumor'\n\
            \x20   assert f['properties']['objectType'] == 'annotation'\n\
            print(unary_union(geoms).area, sum(g.area for g in geoms))";
        let output = Command::new(venv_python())
            .args(["-c", program])
            .arg(&geojson)
            .output()
            .expect("the environment's python runs");
        assert!(
            output.status.success(),
            "{}: {}",
            row.slide_id,
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let areas: Vec<f64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        // Regions do not overlap, and together they are the mask's tiles.
        assert_eq!(
            areas,
            vec![expected_area, expected_area],
            "{}",
            row.slide_id
        );
        checked += 1;
    }
    assert!(checked > 0, "no slide had tumor tiles");
}

#[test]
fn bad_slides_are_reported_and_skipped_and_the_rest_is_scored() {
    let root = temp("bad");
    let (data, model, _) = cohort(&root);
    let h5_dir = data.join("h5_files");
    let mut ids: Vec<String> = std::fs::read_dir(&h5_dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ids.sort();
    // Truncated HDF5, another embedding dimension, a NaN feature.
    let truncated = h5_dir.join(format!("{}.h5", ids[0]));
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let write = |id: &str, features: Vec<f32>, dim: usize| {
        let n = features.len() / dim;
        let f = hdf5::File::create(h5_dir.join(format!("{id}.h5"))).unwrap();
        f.new_dataset::<f32>()
            .shape([n, dim])
            .create("features")
            .unwrap()
            .write_raw(&features)
            .unwrap();
        let coords: Vec<i64> = (0..n as i64).flat_map(|i| [i * 256, 0]).collect();
        f.new_dataset::<i64>()
            .shape([n, 2])
            .create("coords")
            .unwrap()
            .write_raw(&coords)
            .unwrap();
    };
    // (Their tile labels were for the generated slides: drop them.)
    for id in &ids[1..3] {
        let _ = std::fs::remove_file(data.join(format!("tile_labels/{id}.pkl")));
    }
    write(&ids[1], vec![0.5; 10 * (DIM + 1)], DIM + 1);
    let mut nan = vec![0.25f32; 10 * DIM];
    nan[3 * DIM + 2] = f32::NAN;
    write(&ids[2], nan, DIM);
    let out = root.join("out");
    let outcome = score::score_slides(&options(&model, &data, &out), &|_| {}).unwrap();
    assert_eq!(outcome.slides.len(), 6);
    let failures = tables::read_failures_csv(&out.join("failures.csv")).unwrap();
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0].slide_id, ids[0]);
    assert!(failures[0].path.ends_with(&format!("{}.h5", ids[0])));
    assert!(
        failures[0].reason.contains("HDF5"),
        "{}",
        failures[0].reason
    );
    assert!(
        failures[1].reason.contains("D = 17"),
        "{}",
        failures[1].reason
    );
    assert!(
        failures[2].reason.contains("tile 3"),
        "{}",
        failures[2].reason
    );
    for f in &failures {
        assert!(!score::output_paths(&out, &f.slide_id)[0].exists());
    }
}

#[test]
fn shards_merge_into_exactly_the_unsharded_tables() {
    let root = temp("shards");
    let (data, model, _) = cohort(&root);
    let whole = root.join("whole");
    let mut opts = options(&model, &data, &whole);
    opts.pictures = false;
    score::score_slides(&opts, &|_| {}).unwrap();
    let sharded = root.join("sharded");
    let mut seen = 0;
    for index in 0..4 {
        let mut o = options(&model, &data, &sharded);
        o.pictures = false;
        o.threads = 1;
        o.shard = Some(Shard { index, count: 4 });
        seen += score::score_slides(&o, &|_| {}).unwrap().slides.len();
    }
    assert_eq!(seen, 9, "every slide in exactly one shard");
    assert!(!sharded.join("slides.csv").exists());
    score::merge_shards(&sharded, &model).unwrap();
    for table in ["slides.csv", "failures.csv", "metrics.json"] {
        assert_eq!(
            std::fs::read(whole.join(table)).unwrap(),
            std::fs::read(sharded.join(table)).unwrap(),
            "{table}"
        );
    }
    // A missing shard is an error naming it.
    std::fs::remove_file(sharded.join("shards/slides-2-of-4.csv")).unwrap();
    let e = score::merge_shards(&sharded, &model)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shard 2 of 4"), "{e}");
    assert!("3/4".parse::<Shard>().is_ok() && "4/4".parse::<Shard>().is_err());
}

#[test]
fn pt_files_cohorts_score_like_their_h5_files() {
    let root = temp("pt");
    let (data, model, _) = cohort(&root);
    let h5_out = root.join("out-h5");
    let from_h5 = score::score_slides(&options(&model, &data, &h5_out), &|_| {}).unwrap();
    // CLAM's pt_files/: each slide's features as a torch.save tensor, written by PyTorch; the
    // .h5 files of all slides but one go away (a slide with both is read from its .h5).
    let layout = layout::ClamLayout::under(&data);
    let pt_dir = data.join("pt_files");
    std::fs::create_dir_all(&pt_dir).unwrap();
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&layout.h5_dir).unwrap() {
        let h5 = entry.unwrap().path();
        let id = h5.file_stem().unwrap().to_string_lossy().into_owned();
        let file = layout::read_h5(&h5, &id).unwrap();
        let raw = root.join(format!("{id}.f32"));
        let bytes: Vec<u8> = file.features.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&raw, bytes).unwrap();
        let program = format!(
            "import sys, torch\n\
             t = torch.frombuffer(bytearray(open(sys.argv[1], 'rb').read()), dtype=torch.float32)\n\
             torch.save(t.reshape(-1, {DIM}).clone(), sys.argv[2])"
        );
        let output = Command::new(venv_python())
            .args(["-c", &program])
            .arg(&raw)
            .arg(pt_dir.join(format!("{id}.pt")))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        ids.push((id, h5));
    }
    ids.sort();
    for (_, h5) in &ids[1..] {
        std::fs::remove_file(h5).unwrap();
    }
    let pt_out = root.join("out-pt");
    let from_pt = score::score_slides(&options(&model, &data, &pt_out), &|_| {}).unwrap();
    assert!(from_pt.failures.is_empty(), "{:?}", from_pt.failures);
    assert_eq!(from_pt.slides.len(), from_h5.slides.len());
    for (a, b) in from_pt.slides.iter().zip(&from_h5.slides) {
        assert_eq!(a.slide_id, b.slide_id);
        assert_eq!(a.tumor_probability, b.tumor_probability, "{}", a.slide_id);
        assert_eq!(a.tumor_tiles, b.tumor_tiles, "{}", a.slide_id);
    }
    // The same with only the pt files in a folder, no dataset.csv: unlabelled slides.
    let loose = root.join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    for (id, _) in &ids {
        std::fs::copy(
            pt_dir.join(format!("{id}.pt")),
            loose.join(format!("{id}.pt")),
        )
        .unwrap();
    }
    let slides = score::find_slides(&loose).unwrap();
    assert_eq!(slides.len(), ids.len());
    let out = root.join("out-loose");
    let outcome = score::score_slides(&options(&model, &loose, &out), &|_| {}).unwrap();
    for (a, b) in outcome.slides.iter().zip(&from_h5.slides) {
        assert_eq!(a.tumor_probability, b.tumor_probability, "{}", a.slide_id);
    }
}
