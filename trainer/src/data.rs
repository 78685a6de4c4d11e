//! Cohorts in memory: every slide's features loaded once, kept on the training device for the
//! whole run (f32, or f16 to halve the bytes), tile labels as index tensors.

use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};

pub use msclam_data::{NORMAL, TUMOR};

/// Element type features are kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeaturePrecision {
    /// 4 bytes per value.
    F32,
    /// 2 bytes per value; widened to f32 per step on the device (results change by rounding only).
    F16,
}

impl FeaturePrecision {
    /// Bytes per stored feature value.
    pub fn bytes(self) -> usize {
        match self {
            FeaturePrecision::F32 => 4,
            FeaturePrecision::F16 => 2,
        }
    }

    fn kind(self) -> Kind {
        match self {
            FeaturePrecision::F32 => Kind::Float,
            FeaturePrecision::F16 => Kind::Half,
        }
    }
}

/// Known tile labels of an annotated tumor slide, as index tensors on the device.
#[derive(Debug)]
pub struct TileLabels {
    /// Indices of tumorous tiles (int64).
    pub tumor: Tensor,
    /// Indices of normal tiles (int64).
    pub normal: Tensor,
    /// Number of tumorous tiles.
    pub num_tumor: usize,
    /// Number of normal tiles.
    pub num_normal: usize,
}

/// One slide, ready for training or evaluation.
#[derive(Debug)]
pub struct Slide {
    /// Slide identifier.
    pub id: String,
    /// Slide class ([`NORMAL`] or [`TUMOR`]).
    pub label: usize,
    /// `N x D` features on the training device.
    pub features: Tensor,
    /// Number of tiles N.
    pub num_tiles: usize,
    /// Tile labels used for training (annotated slides of the training set only).
    pub tile_labels: Option<TileLabels>,
    /// Reference tile labels for evaluation (1 tumor, 0 normal), when known.
    pub reference_tiles: Option<Vec<u8>>,
    /// Tile coordinates (pixels), for heatmaps.
    pub coords: Vec<[u32; 2]>,
    /// Whether the slide's annotation is known to be incomplete.
    pub excluded: bool,
}

impl msclam_data::report::SlideTruth for Slide {
    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> usize {
        self.label
    }
    fn reference_tiles(&self) -> Option<&[u8]> {
        self.reference_tiles.as_deref()
    }
    fn excluded(&self) -> bool {
        self.excluded
    }
    fn coords(&self) -> &[[u32; 2]] {
        &self.coords
    }
}

impl Slide {
    /// Builds a slide from host data: `features` is `N x D` row-major f32. `tumor_tiles` lists
    /// the tumorous tile indices when the annotation is to be used for training.
    #[allow(clippy::too_many_arguments)]
    pub fn from_host(
        id: &str,
        label: usize,
        features: &[f32],
        dim: usize,
        coords: Vec<[u32; 2]>,
        reference_tiles: Option<Vec<u8>>,
        train_with_tile_labels: bool,
        precision: FeaturePrecision,
        device: Device,
    ) -> Result<Slide> {
        let num_tiles = features.len() / dim.max(1);
        if num_tiles == 0 || features.len() != num_tiles * dim {
            return Err(TrainError::data(
                id,
                format!(
                    "{} values is not a whole number of {dim}-dim tiles, or empty",
                    features.len()
                ),
            ));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::data(
                id,
                format!(
                    "non-finite feature at tile {}, feature {}",
                    i / dim,
                    i % dim
                ),
            ));
        }
        if let Some(r) = &reference_tiles {
            if r.len() != num_tiles {
                return Err(TrainError::data(
                    id,
                    format!("{} tile labels for {num_tiles} tiles", r.len()),
                ));
            }
        }
        let tensor = Tensor::from_slice(features)
            .reshape([num_tiles as i64, dim as i64])
            .to_kind(precision.kind())
            .to_device(device);
        let tile_labels = match (&reference_tiles, train_with_tile_labels && label == TUMOR) {
            (Some(r), true) => {
                let tumor: Vec<i64> = (0..num_tiles)
                    .filter(|&i| r[i] != 0)
                    .map(|i| i as i64)
                    .collect();
                let normal: Vec<i64> = (0..num_tiles)
                    .filter(|&i| r[i] == 0)
                    .map(|i| i as i64)
                    .collect();
                if tumor.is_empty() {
                    None // an annotated tumor slide with no tumor tile carries no tile supervision
                } else {
                    Some(TileLabels {
                        num_tumor: tumor.len(),
                        num_normal: normal.len(),
                        tumor: Tensor::from_slice(&tumor).to_device(device),
                        normal: Tensor::from_slice(&normal).to_device(device),
                    })
                }
            }
            _ => None,
        };
        Ok(Slide {
            id: id.to_owned(),
            label,
            features: tensor,
            num_tiles,
            tile_labels,
            reference_tiles,
            coords,
            excluded: false,
        })
    }

    /// Features as f32 for the network (a no-op view when stored as f32).
    pub fn features_f32(&self) -> Tensor {
        if self.features.kind() == Kind::Float {
            self.features.shallow_clone()
        } else {
            self.features.to_kind(Kind::Float)
        }
    }
}

/// Bytes the trainer keeps per tile: features, plus coordinates and labels on the host.
pub fn bytes_per_tile(dim: usize, precision: FeaturePrecision) -> usize {
    dim * precision.bytes() + 8 + 1 + 8
}

/// Checks, before anything is loaded, that `tiles` tiles of `dim` features fit in the
/// memory available for them; the error says how much is needed and how to make it fit.
pub fn check_fits(
    tiles: usize,
    dim: usize,
    precision: FeaturePrecision,
    available_bytes: u64,
    where_: &str,
) -> Result<()> {
    let needed = tiles as u64 * bytes_per_tile(dim, precision) as u64;
    // Leave a quarter for the network, activations and the rest of the process.
    let usable = available_bytes / 4 * 3;
    if needed > usable {
        let hint = if precision == FeaturePrecision::F32 {
            " (try --feature-precision f16 to halve it)"
        } else {
            ""
        };
        return Err(TrainError::DoesNotFit {
            needed_gib: needed as f64 / (1u64 << 30) as f64,
            usable_gib: usable as f64 / (1u64 << 30) as f64,
            place: format!("{where_}{hint}"),
        });
    }
    Ok(())
}

/// Free memory of the training device: `MemAvailable` for the CPU, `nvidia-smi`'s free memory
/// for a CUDA GPU; `None` if it cannot be read.
pub fn device_available_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(i) => {
            let out = std::process::Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.free",
                    "--format=csv,noheader,nounits",
                    "-i",
                    &i.to_string(),
                ])
                .output()
                .ok()?;
            let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some(mib << 20)
        }
        _ => host_available_bytes(),
    }
}

/// Memory available to this process on the host (Linux `MemAvailable`), if readable.
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A cohort of slides with their split into training, validation and test sets.
#[derive(Debug)]
pub struct Cohort {
    /// Every slide.
    pub slides: Vec<Slide>,
    /// Embedding dimension D.
    pub dim: usize,
    /// Indices into `slides` of the training set.
    pub train: Vec<usize>,
    /// Indices of the validation set.
    pub val: Vec<usize>,
    /// Indices of the test set.
    pub test: Vec<usize>,
}

impl Cohort {
    /// Total tiles of the slides at `indices`.
    pub fn tiles(&self, indices: &[usize]) -> usize {
        indices.iter().map(|&i| self.slides[i].num_tiles).sum()
    }
}

/// How a host-side cohort becomes a training cohort.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitSpec {
    /// Fraction of slides for validation.
    pub val_fraction: f64,
    /// Fraction of slides for testing.
    pub test_fraction: f64,
    /// Percentage of tumor slides whose tile labels are used in training (the paper's k).
    pub annotated_percent: f64,
    /// Seed of the split and of the annotated subset.
    pub seed: u64,
}

/// Splits `labels` into train / val / test, stratified by class, seeded.
pub fn stratified_split(
    labels: &[usize],
    spec: &SplitSpec,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for class in [NORMAL, TUMOR] {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        let n = members.len();
        let n_test = (n as f64 * spec.test_fraction).round() as usize;
        let n_val = (n as f64 * spec.val_fraction).round() as usize;
        test.extend_from_slice(&members[..n_test.min(n)]);
        val.extend_from_slice(&members[n_test.min(n)..(n_test + n_val).min(n)]);
        train.extend_from_slice(&members[(n_test + n_val).min(n)..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    test.sort_unstable();
    (train, val, test)
}

/// The training tumor slides whose tile labels are used: `round(k / 100 * tumor slides in
/// train + val)`, drawn (seeded) among the training tumor slides not excluded; all of them if
/// fewer are available.
pub fn choose_annotated(
    labels: &[usize],
    excluded: &[bool],
    train: &[usize],
    val: &[usize],
    percent: f64,
    seed: u64,
) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let tumor_train_val = train
        .iter()
        .chain(val)
        .filter(|&&i| labels[i] == TUMOR)
        .count();
    let n = (percent / 100.0 * tumor_train_val as f64).round() as usize;
    let mut candidates: Vec<usize> = train
        .iter()
        .copied()
        .filter(|&i| labels[i] == TUMOR && !excluded[i])
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xa770_7a7e);
    candidates.shuffle(&mut rng);
    candidates.truncate(n);
    candidates.sort_unstable();
    candidates
}

/// A cohort from generated slides: split, annotated subset chosen, features on `device`.
pub fn cohort_from_synthetic(
    slides: Vec<crate::synthetic::SyntheticSlide>,
    split: &SplitSpec,
    precision: FeaturePrecision,
    device: Device,
) -> Result<Cohort> {
    let dim = slides
        .first()
        .map_or(0, |s| s.features.len() / s.tile_labels.len().max(1));
    let labels: Vec<usize> = slides.iter().map(|s| s.label).collect();
    let excluded: Vec<bool> = slides.iter().map(|s| s.incomplete).collect();
    let (train, val, test) = stratified_split(&labels, split);
    let annotated = choose_annotated(
        &labels,
        &excluded,
        &train,
        &val,
        split.annotated_percent,
        split.seed,
    );
    let slides = slides
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            // The reference is what an annotator marked, as it would be on real data.
            let mut slide = Slide::from_host(
                &s.id,
                s.label,
                &s.features,
                dim,
                s.coords,
                Some(s.annotation),
                annotated.binary_search(&i).is_ok(),
                precision,
                device,
            )?;
            slide.excluded = s.incomplete;
            Ok(slide)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Cohort {
        slides,
        dim,
        train,
        val,
        test,
    })
}
