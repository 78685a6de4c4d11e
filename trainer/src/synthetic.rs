//! Synthetic cohorts that look like what the paper describes: tissue as a blob of tiles on a
//! grid, tumor as spatially coherent regions covering Camelyon16-like (mean about 6.3 %, median
//! about 0.76 %) or DigestPath-like (mean about 31.8 %, median about 28.9 %) fractions of tumor
//! slides, embeddings like post-ReLU CNN features (non-negative, correlated) with per-centre and
//! per-slide stain shifts, and normal tissue that partly resembles tumor. Seeded.

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};

/// Which dataset's tumor-fraction profile to mimic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Camelyon16: mostly tiny metastases (median 0.76 % of tiles), a few large ones.
    Camelyon16,
    /// DigestPath2019: large tumor regions (median 28.9 %).
    DigestPath,
}

/// The size and difficulty of a cohort.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SyntheticSpec {
    /// Number of slides.
    pub slides: usize,
    /// Mean tiles per slide (each slide varies by +-50 %).
    pub tiles_per_slide: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Fraction of slides that are tumor slides (Camelyon16 train: 111 of 270).
    pub tumor_slide_fraction: f64,
    /// Tumor fraction profile.
    pub profile: Profile,
    /// Strength of the tumor signal (difficulty knob): how far a tumor tile's mean moves
    /// from the normal tissue profile to the tumor profile (1 = all the way; each tile varies
    /// by +-40 %, capped at 1).
    pub signal: f64,
    /// Fraction of normal tiles that carry part of the tumor signal (mimics).
    pub mimic_fraction: f64,
    /// Number of scanning centres (each shifts the embeddings).
    pub centres: usize,
    /// Fraction of tumor slides whose annotation is incomplete: the annotator marked only
    /// part of the tumor region (Camelyon16 has such slides; they go on the exclusion list).
    pub incomplete_fraction: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            slides: 60,
            tiles_per_slide: 400,
            dim: 1024,
            tumor_slide_fraction: 111.0 / 270.0,
            profile: Profile::Camelyon16,
            signal: 1.0,
            mimic_fraction: 0.05,
            centres: 2,
            incomplete_fraction: 0.0,
            seed: 1,
        }
    }
}

/// One generated slide, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSlide {
    /// Identifier (`slide_0000`, ...).
    pub id: String,
    /// 1 tumor, 0 normal.
    pub label: usize,
    /// `N x D` row-major features.
    pub features: Vec<f32>,
    /// Tile coordinates in pixels (256-pixel tiles).
    pub coords: Vec<[u32; 2]>,
    /// True tile labels: 1 tumor, 0 normal.
    pub tile_labels: Vec<u8>,
    /// What the annotator marked: the true labels, or part of them when `incomplete`.
    pub annotation: Vec<u8>,
    /// The annotation misses part of the tumor (the slide belongs on the exclusion list).
    pub incomplete: bool,
    /// Scanning centre.
    pub centre: usize,
}

/// Generates the cohort described by `spec`.
pub fn generate(spec: &SyntheticSpec) -> Vec<SyntheticSlide> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let d = spec.dim;
    let unit = Normal::new(0.0f32, 1.0).expect("valid normal");
    // A shared low-rank structure makes features correlated, as CNN features are.
    let rank = 16.min(d);
    let basis: Vec<f32> = (0..rank * d)
        .map(|_| unit.sample(&mut rng) / (rank as f32).sqrt())
        .collect();
    let tissue_mean: Vec<f32> = (0..d).map(|_| unit.sample(&mut rng) * 0.3 + 0.2).collect();
    // Tumor tissue has its own mean profile: the normal one with its dimensions shuffled, so
    // the same distribution and norm. A tumor tile moves from the normal profile towards it: a
    // change of pattern, not of magnitude, as between tissue types in CNN features. (Adding a
    // non-negative tumor direction instead made tumor tiles the largest vectors of a slide;
    // CLAM-SB's attention then locked on to or away from them at random initialisation.)
    let tumor_mean: Vec<f32> = {
        use rand::seq::SliceRandom;
        let mut m = tissue_mean.clone();
        m.shuffle(&mut rng);
        m
    };
    let centre_shift: Vec<Vec<f32>> = (0..spec.centres.max(1))
        .map(|_| (0..d).map(|_| unit.sample(&mut rng) * 0.15).collect())
        .collect();
    // (0.318 below is DigestPath's mean tumor fraction, not an approximation of 1 / pi.)
    #[allow(clippy::approx_constant)]
    let fraction = match spec.profile {
        // Lognormal with the paper's median and mean: median e^mu, mean e^(mu + s^2 / 2).
        Profile::Camelyon16 => {
            LogNormal::new((0.0076f64).ln(), (2.0 * (0.063f64 / 0.0076).ln()).sqrt())
        }
        Profile::DigestPath => {
            LogNormal::new((0.289f64).ln(), (2.0 * (0.318f64 / 0.289).ln()).sqrt())
        }
    }
    .expect("valid lognormal");
    let n_tumor_slides = (spec.slides as f64 * spec.tumor_slide_fraction).round() as usize;

    (0..spec.slides)
        .map(|s| {
            let label = usize::from(s % spec.slides.max(1) < n_tumor_slides);
            let n = ((spec.tiles_per_slide as f64) * rng.random_range(0.5..1.5))
                .round()
                .max(2.0) as usize;
            // Centres take turns within each class, so that every centre has the same share
            // of tumor slides: the stain shift is a nuisance, never a shortcut to the label.
            let within_class = if label == 1 { s } else { s - n_tumor_slides };
            let centre = within_class % spec.centres.max(1);
            // Tissue: an ellipse of tiles on the grid.
            let side = ((n as f64) * 1.4).sqrt().ceil() as i64 + 2;
            let (cx, cy) = (side as f64 / 2.0, side as f64 / 2.0);
            let mut cells: Vec<(i64, i64)> = (0..side)
                .flat_map(|y| (0..side).map(move |x| (x, y)))
                .collect();
            cells.sort_by(|a, b| {
                let da = ((a.0 as f64 - cx) / 1.2).powi(2) + (a.1 as f64 - cy).powi(2);
                let db = ((b.0 as f64 - cx) / 1.2).powi(2) + (b.1 as f64 - cy).powi(2);
                da.total_cmp(&db)
            });
            cells.truncate(n);
            // Tumor: the tiles nearest to a random tissue point (spatially coherent).
            let mut tile_labels = vec![0u8; n];
            let mut tumor_order: Vec<usize> = Vec::new();
            if label == 1 {
                let f = fraction.sample(&mut rng).clamp(0.0, 0.9);
                let k = ((f * n as f64).round() as usize).clamp(1, n - 1);
                let seed_cell = cells[rng.random_range(0..n)];
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by_key(|&i| {
                    (cells[i].0 - seed_cell.0).pow(2) + (cells[i].1 - seed_cell.1).pow(2)
                });
                for &i in &order[..k] {
                    tile_labels[i] = 1;
                }
                tumor_order = order[..k].to_vec();
            }
            // An incomplete annotation marks the part of the region nearest its seed only.
            let mut annotation = tile_labels.clone();
            let incomplete =
                tumor_order.len() >= 2 && rng.random_bool(spec.incomplete_fraction.clamp(0.0, 1.0));
            if incomplete {
                let kept = ((tumor_order.len() as f64 * rng.random_range(0.2..0.7)).ceil()
                    as usize)
                    .clamp(1, tumor_order.len() - 1);
                for &i in &tumor_order[kept..] {
                    annotation[i] = 0;
                }
            }
            let slide_shift: Vec<f32> = (0..d).map(|_| unit.sample(&mut rng) * 0.05).collect();
            let mut features = Vec::with_capacity(n * d);
            for label_i in tile_labels.iter().take(n) {
                let latent: Vec<f32> = (0..rank).map(|_| unit.sample(&mut rng)).collect();
                let tumor_weight = if *label_i == 1 {
                    spec.signal as f32 * rng.random_range(0.6..1.4)
                } else if rng.random_bool(spec.mimic_fraction.clamp(0.0, 1.0)) {
                    spec.signal as f32 * rng.random_range(0.2..0.6)
                } else {
                    0.0
                };
                let w = tumor_weight.min(1.0);
                for j in 0..d {
                    let low_rank: f32 = (0..rank).map(|r| latent[r] * basis[r * d + j]).sum();
                    let v = (1.0 - w) * tissue_mean[j]
                        + w * tumor_mean[j]
                        + centre_shift[centre][j]
                        + slide_shift[j]
                        + 0.5 * low_rank
                        + 0.3 * unit.sample(&mut rng);
                    features.push(v.max(0.0));
                }
            }
            SyntheticSlide {
                id: format!("slide_{s:04}"),
                label,
                features,
                coords: cells
                    .iter()
                    .map(|&(x, y)| [x as u32 * 256, y as u32 * 256])
                    .collect(),
                tile_labels,
                annotation,
                incomplete,
                centre,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camelyon_like_fractions_and_coherent_tumor() {
        let spec = SyntheticSpec {
            slides: 200,
            tiles_per_slide: 300,
            dim: 8,
            tumor_slide_fraction: 1.0,
            ..Default::default()
        };
        let slides = generate(&spec);
        let mut fractions: Vec<f64> = slides
            .iter()
            .map(|s| {
                s.tile_labels.iter().filter(|t| **t == 1).count() as f64
                    / s.tile_labels.len() as f64
            })
            .collect();
        fractions.sort_by(f64::total_cmp);
        let median = fractions[fractions.len() / 2];
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        // At least one tumor tile per slide lifts tiny fractions: median within a factor ~2.
        assert!(median > 0.003 && median < 0.02, "median {median}");
        assert!(mean > 0.03 && mean < 0.12, "mean {mean}");
        for s in &slides {
            assert!(s.features.iter().all(|v| *v >= 0.0));
            assert_eq!(s.coords.len(), s.tile_labels.len());
        }
        assert_eq!(generate(&spec), slides, "seeded");
        assert!(slides
            .iter()
            .all(|s| !s.incomplete && s.annotation == s.tile_labels));
    }

    #[test]
    fn incomplete_annotations_mark_part_of_the_tumor_only() {
        let spec = SyntheticSpec {
            slides: 240,
            tiles_per_slide: 200,
            dim: 4,
            tumor_slide_fraction: 0.5,
            incomplete_fraction: 0.5,
            ..Default::default()
        };
        let slides = generate(&spec);
        // A slide needs two tumor tiles to be partly annotated; half of those are.
        let eligible = slides
            .iter()
            .filter(|s| s.tile_labels.iter().filter(|t| **t == 1).count() >= 2)
            .count() as f64;
        let incomplete = slides.iter().filter(|s| s.incomplete).count() as f64;
        let spread = 3.0 * (eligible / 4.0).sqrt() + 1.0;
        assert!(eligible >= 20.0, "{eligible} eligible");
        assert!(
            (incomplete - eligible / 2.0).abs() <= spread,
            "{incomplete} incomplete of {eligible}"
        );
        for s in &slides {
            let marked = s.annotation.iter().filter(|t| **t == 1).count();
            let tumor = s.tile_labels.iter().filter(|t| **t == 1).count();
            // Marked tiles are always true tumor tiles.
            assert!(s
                .annotation
                .iter()
                .zip(&s.tile_labels)
                .all(|(a, t)| *a <= *t));
            if s.incomplete {
                assert_eq!(s.label, 1);
                assert!(marked >= 1 && marked < tumor, "{marked} of {tumor}");
            } else {
                assert_eq!(marked, tumor);
            }
        }
    }
}
