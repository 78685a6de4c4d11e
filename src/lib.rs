//! Shared helpers for msclam's cross-crate tests, benchmarks and examples: seeded random
//! networks (Xavier-normal, as the trainer initialises them) and synthetic slides whose
//! embeddings look like post-ReLU CNN features.

use msclam_engine::format::{keys, Dtype, Layout, ModelWriter};
use msclam_engine::statistics::{EmbeddingStatistics, COMPONENTS};
use msclam_engine::{AttentionKind, ModelConfig, ModelWeights, TileClassifierKind};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Xavier-normal weights (std = sqrt(2 / (fan_in + fan_out))) with small random biases, so
/// that every bias path is exercised. Deterministic for a seed.
pub fn random_weights(config: ModelConfig, seed: u64) -> ModelWeights {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = ModelWeights::zeros(config);
    let xavier = |values: &mut Vec<f32>, fan_out: usize, fan_in: usize, rng: &mut StdRng| {
        let std = (2.0 / (fan_in + fan_out) as f64).sqrt();
        let normal = Normal::new(0.0, std).expect("std is positive and finite");
        values
            .iter_mut()
            .for_each(|v| *v = normal.sample(rng) as f32);
    };
    let c = config;
    let (d, h, k, nc) = (c.input_dim, c.hidden_dim, c.attention_dim, c.num_classes);
    xavier(&mut w.fc_weight, h, d, &mut rng);
    xavier(&mut w.attention_a_weight, k, h, &mut rng);
    if c.attention == AttentionKind::Gated {
        xavier(&mut w.attention_b_weight, k, h, &mut rng);
    }
    xavier(&mut w.attention_c_weight, 1, k, &mut rng);
    xavier(&mut w.classifier_weight, nc, h, &mut rng);
    xavier(&mut w.tile_classifier_weight, 2, h, &mut rng);
    for bias in [
        &mut w.fc_bias,
        &mut w.attention_a_bias,
        &mut w.attention_b_bias,
        &mut w.attention_c_bias,
        &mut w.classifier_bias,
        &mut w.tile_classifier_bias,
    ] {
        bias.iter_mut()
            .for_each(|b| *b = rng.random_range(-0.1..0.1));
    }
    w
}

/// A synthetic slide: `n` tiles on a roughly square grid, embeddings of dimension `dim` that
/// are non-negative and correlated (a shared slide profile plus per-tile variation, through a
/// ReLU), some tiles with a "tumor" direction added. Returns (embeddings `n x dim`,
/// coordinates in pixels with 256-pixel tiles, tumor tile flags).
pub fn synthetic_slide(
    dim: usize,
    n: usize,
    tumor_fraction: f64,
    seed: u64,
) -> (Vec<f32>, Vec<[u32; 2]>, Vec<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let unit = Normal::new(0.0f32, 1.0).expect("valid normal");
    let profile: Vec<f32> = (0..dim)
        .map(|_| unit.sample(&mut rng) * 0.5 + 0.3)
        .collect();
    let tumor_dir: Vec<f32> = (0..dim).map(|_| unit.sample(&mut rng).abs()).collect();
    let side = (n as f64).sqrt().ceil().max(1.0) as u32;
    let centre = (rng.random_range(0..side), rng.random_range(0..side));
    let radius2 = (tumor_fraction * (side * side) as f64 / std::f64::consts::PI).max(0.0);
    let mut embeddings = Vec::with_capacity(n * dim);
    let mut coords = Vec::with_capacity(n);
    let mut tumor = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let (gx, gy) = (i % side, i / side);
        let dx = gx as f64 - centre.0 as f64;
        let dy = gy as f64 - centre.1 as f64;
        let is_tumor = tumor_fraction > 0.0 && dx * dx + dy * dy <= radius2;
        let tile_gain: f32 = rng.random_range(0.7..1.3);
        for j in 0..dim {
            let mut v = profile[j] * tile_gain + unit.sample(&mut rng) * 0.4;
            if is_tumor {
                v += 0.8 * tumor_dir[j];
            }
            embeddings.push(v.max(0.0));
        }
        coords.push([gx * 256, gy * 256]);
        tumor.push(is_tumor);
    }
    (embeddings, coords, tumor)
}

/// A very small gated MS-CLAM network (D 6, H 5, K 3, 2 classes): small enough to build files
/// by hand around it.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        input_dim: 6,
        hidden_dim: 5,
        attention_dim: 3,
        attention: AttentionKind::Gated,
        num_classes: 2,
        tile_classifier: TileClassifierKind::SingleBinary,
        tumor_class: 1,
        threshold: 0.5,
    }
}

/// Valid `.mscl` files of [`tiny_config`]: f32 panels (and embedding statistics, format 1.1),
/// f32 row-major, f16, bf16 and int8 matrices, and a CLAM-SB-like network (plain attention, a
/// tile classifier per class, 3 classes). Seeds for the fuzz targets and the format tests.
pub fn sample_model_files() -> Vec<Vec<u8>> {
    let ms_clam = tiny_config();
    let clam = ModelConfig {
        attention: AttentionKind::Plain,
        tile_classifier: TileClassifierKind::PerClass,
        num_classes: 3,
        ..ms_clam
    };
    [
        (ms_clam, Dtype::F32, Layout::Panel16),
        (ms_clam, Dtype::F32, Layout::RowMajor),
        (ms_clam, Dtype::F16, Layout::Panel16),
        (ms_clam, Dtype::Bf16, Layout::Panel16),
        (ms_clam, Dtype::Int8, Layout::Panel16),
        (clam, Dtype::F32, Layout::Panel16),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (config, dtype, layout))| {
        let weights = random_weights(config, 1);
        let mut writer = ModelWriter::new(&weights)
            .matrix_dtype(dtype)
            .matrix_layout(layout);
        if i == 0 {
            // Embedding statistics (format 1.1): unit spread around 0.25, one direction along
            // the first dimension, distances from 0.05 to 4 in distribution.
            let d = config.input_dim;
            let mut components = vec![0.0; d * COMPONENTS];
            components[0] = 1.0;
            let mut component_terms: Vec<f32> = (0..=COMPONENTS).flat_map(|_| [0.0, 1.0]).collect();
            component_terms[0] = 0.25;
            writer = writer.embedding_statistics(EmbeddingStatistics {
                mean: vec![0.25; d],
                scale: vec![1.0; d],
                components,
                component_terms,
                distance_range: [0.05, 4.0],
            });
        }
        writer
            .metadata(keys::EMBEDDER_NAME, "resnet50_trunc")
            .and_then(|w| w.metadata(keys::TILE_SIZE_PX, "256"))
            .and_then(|w| w.to_bytes())
            .expect("a valid small model")
    })
    .collect()
}

/// A test's folder under the system's temporary directory, `msclam-<kind>-<pid>-<name>`:
/// emptied when made, removed with everything in it when dropped (so a test, passed or
/// failed, leaves nothing behind unless the process aborts). Dereferences to its path.
#[derive(Debug)]
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    /// Makes the folder, empty.
    pub fn new(kind: &str, name: &str) -> ScratchDir {
        let dir = ScratchDir::unmade(kind, name);
        std::fs::create_dir_all(&dir.0).expect("a folder in the temporary directory");
        dir
    }

    /// The folder's path with nothing there (for a program that must make it itself);
    /// whatever is made there is removed when this is dropped.
    pub fn unmade(kind: &str, name: &str) -> ScratchDir {
        let path =
            std::env::temp_dir().join(format!("msclam-{kind}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        ScratchDir(path)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = std::path::PathBuf;
    fn deref(&self) -> &std::path::PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for ScratchDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for ScratchDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The project's Python (`$MSCLAM_VENV/bin/python`, with torch, NumPy and onnxruntime), which
/// tests run to get expected numbers from an independent implementation.
///
/// # Panics
/// If `MSCLAM_VENV` is not set (the tests run through `scripts/test`, which sets it).
pub fn venv_python() -> std::path::PathBuf {
    let venv = std::env::var_os("MSCLAM_VENV")
        .expect("MSCLAM_VENV is not set: run the tests through scripts/test");
    std::path::PathBuf::from(venv).join("bin/python")
}
