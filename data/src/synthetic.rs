//! Synthetic cohorts that look like what the paper describes: tissue as a blob of tiles on a
//! grid, tumor as spatially coherent regions covering Camelyon16-like (mean about 6.3 %, median
//! about 0.76 %) or DigestPath-like (mean about 31.8 %, median about 28.9 %) fractions of tumor
//! slides, embeddings like post-ReLU CNN features (non-negative, correlated) with per-centre and
//! per-slide stain shifts, and normal tissue that partly resembles tumor (scattered tiles on
//! every slide, and a coherent tumor-like region on some slides). Seeded. The defaults are
//! calibrated on the CLAM-SB baseline (docs/SYNTHETIC.md).

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};

/// Which dataset's tumor-fraction profile to mimic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// Fraction of slides with a tumor-like region of normal tissue (mimics in one coherent
    /// region, such as germinal centres in a lymph node).
    pub mimic_region_fraction: f64,
    /// Mean share of a slide's tiles that such a region covers (each region varies +-50 %).
    pub mimic_region_size: f64,
    /// Number of scanning centres (each shifts the embeddings).
    pub centres: usize,
    /// Per-slide stain shift: standard deviation of each feature's offset.
    pub slide_shift: f64,
    /// Per-slide tissue composition: standard deviation of each slide's offset of the
    /// shared low-rank factors (0: every slide draws its tiles from the same mixture).
    pub composition_spread: f64,
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
            mimic_region_fraction: 0.3,
            mimic_region_size: 0.6,
            centres: 2,
            slide_shift: 0.05,
            composition_spread: 0.0,
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
    /// Normal tiles that carry part of the tumor signal: 1 a scattered mimic, 2 a tile of the
    /// slide's tumor-like region, 0 otherwise (always 0 on tumor tiles).
    pub mimics: Vec<u8>,
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
                let order = nearest_to_random_cell(&cells, &mut rng);
                for &i in &order[..k] {
                    tile_labels[i] = 1;
                }
                tumor_order = order[..k].to_vec();
            }
            // A tumor-like region of normal tissue, on some slides.
            let mut mimic_region = vec![false; n];
            // (Nothing is drawn for a knob at 0, so that cohorts without it stay the same.)
            if spec.mimic_region_fraction > 0.0
                && rng.random_bool(spec.mimic_region_fraction.clamp(0.0, 1.0))
            {
                let share = (spec.mimic_region_size * rng.random_range(0.5..1.5)).clamp(0.0, 0.9);
                let k = ((share * n as f64).round() as usize).clamp(1, n);
                for &i in &nearest_to_random_cell(&cells, &mut rng)[..k] {
                    mimic_region[i] = tile_labels[i] == 0;
                }
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
            let slide_shift: Vec<f32> = (0..d)
                .map(|_| unit.sample(&mut rng) * spec.slide_shift as f32)
                .collect();
            let composition: Vec<f32> = if spec.composition_spread > 0.0 {
                (0..rank)
                    .map(|_| unit.sample(&mut rng) * spec.composition_spread as f32)
                    .collect()
            } else {
                vec![0.0; rank]
            };
            let mut features = Vec::with_capacity(n * d);
            let mut mimics = vec![0u8; n];
            for ((label_i, in_mimic_region), mimic) in
                tile_labels.iter().zip(&mimic_region).zip(&mut mimics)
            {
                let latent: Vec<f32> = (0..rank)
                    .map(|r| composition[r] + unit.sample(&mut rng))
                    .collect();
                let tumor_weight = if *label_i == 1 {
                    spec.signal as f32 * rng.random_range(0.6..1.4)
                } else if *in_mimic_region || rng.random_bool(spec.mimic_fraction.clamp(0.0, 1.0)) {
                    *mimic = if *in_mimic_region { 2 } else { 1 };
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
                mimics,
                centre,
            }
        })
        .collect()
}

/// Tile indices ordered by distance from a randomly drawn tissue cell: the first k form a
/// spatially coherent region (a tumor, or a tumor-like region of normal tissue).
fn nearest_to_random_cell(cells: &[(i64, i64)], rng: &mut StdRng) -> Vec<usize> {
    let seed_cell = cells[rng.random_range(0..cells.len())];
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by_key(|&i| (cells[i].0 - seed_cell.0).pow(2) + (cells[i].1 - seed_cell.1).pow(2));
    order
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
    fn by_default_a_minority_of_slides_hold_large_tumor_like_regions() {
        // The calibrated defaults (docs/SYNTHETIC.md): a region on 30 % of the slides, covering
        // 60 % +- 50 % of their tissue (tumor tiles inside it stay tumor).
        let spec = SyntheticSpec {
            slides: 300,
            tiles_per_slide: 100,
            dim: 4,
            ..Default::default()
        };
        let slides = generate(&spec);
        let with_region =
            slides.iter().filter(|s| s.mimics.contains(&2)).count() as f64 / slides.len() as f64;
        assert!((0.22..=0.38).contains(&with_region), "{with_region}");
        // On normal slides (no tumor inside the region), 30-90 % of the tissue.
        let shares: Vec<f64> = slides
            .iter()
            .filter(|s| s.label == 0 && s.mimics.contains(&2))
            .map(|s| s.mimics.iter().filter(|m| **m == 2).count() as f64 / s.mimics.len() as f64)
            .collect();
        assert!(
            shares.len() > 30,
            "{} normal slides with a region",
            shares.len()
        );
        assert!(
            shares.iter().all(|s| (0.28..=0.91).contains(s)),
            "{shares:?}"
        );
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        assert!((0.5..=0.7).contains(&mean), "mean share {mean}");
        // Scattered mimics: about 5 % of the normal tiles outside the regions.
        let (scattered, outside) = slides.iter().fold((0usize, 0usize), |(m, n), s| {
            let outside = s
                .tile_labels
                .iter()
                .zip(&s.mimics)
                .filter(|(t, m)| **t == 0 && **m != 2)
                .count();
            (
                m + s.mimics.iter().filter(|m| **m == 1).count(),
                n + outside,
            )
        });
        let rate = scattered as f64 / outside as f64;
        assert!((0.04..=0.06).contains(&rate), "scattered mimic rate {rate}");
    }

    #[test]
    fn tumor_like_regions_are_coherent_and_lie_between_normal_and_tumor() {
        let spec = SyntheticSpec {
            slides: 40,
            tiles_per_slide: 300,
            dim: 64,
            tumor_slide_fraction: 0.5,
            mimic_fraction: 0.0,
            mimic_region_fraction: 1.0,
            mimic_region_size: 0.3,
            ..Default::default()
        };
        let slides = generate(&spec);
        let d = spec.dim;
        let mut sums = [vec![0.0f64; d], vec![0.0f64; d], vec![0.0f64; d]];
        let mut counts = [0usize; 3];
        for s in &slides {
            let n = s.tile_labels.len();
            let region: Vec<usize> = (0..n).filter(|&i| s.mimics[i] == 2).collect();
            assert!(
                s.mimics.iter().all(|m| *m != 1),
                "no scattered mimics asked for"
            );
            assert!(s
                .mimics
                .iter()
                .zip(&s.tile_labels)
                .all(|(m, t)| *m == 0 || *t == 0));
            assert!(!region.is_empty(), "{} has no region", s.id);
            if s.label == 0 {
                // 30 % +- 50 % of the slide, as one connected patch of the grid.
                let share = region.len() as f64 / n as f64;
                assert!((0.14..=0.46).contains(&share), "{}: share {share}", s.id);
                let cell = |i: usize| (s.coords[i][0] / 256, s.coords[i][1] / 256);
                let mut reached = vec![region[0]];
                let mut frontier = vec![region[0]];
                while let Some(i) = frontier.pop() {
                    for &j in &region {
                        let (a, b) = (cell(i), cell(j));
                        if !reached.contains(&j) && a.0.abs_diff(b.0) + a.1.abs_diff(b.1) == 1 {
                            reached.push(j);
                            frontier.push(j);
                        }
                    }
                }
                assert_eq!(
                    reached.len(),
                    region.len(),
                    "{}: region not connected",
                    s.id
                );
            }
            for i in 0..n {
                let kind = if s.tile_labels[i] == 1 {
                    2
                } else {
                    usize::from(s.mimics[i] == 2)
                };
                counts[kind] += 1;
                for (sum, v) in sums[kind].iter_mut().zip(&s.features[i * d..(i + 1) * d]) {
                    *sum += f64::from(*v);
                }
            }
        }
        let means: Vec<Vec<f64>> = (0..3)
            .map(|k| sums[k].iter().map(|v| v / counts[k] as f64).collect())
            .collect();
        let towards_tumor: Vec<f64> = means[2].iter().zip(&means[0]).map(|(t, n)| t - n).collect();
        let along = |m: &[f64]| -> f64 {
            let dot: f64 = m
                .iter()
                .zip(&means[0])
                .zip(&towards_tumor)
                .map(|((m, n), t)| (m - n) * t)
                .sum();
            dot / towards_tumor.iter().map(|t| t * t).sum::<f64>()
        };
        // Region tiles move 20-60 % of the way (tumor tiles about 90 %, capped at all of it).
        let position = along(&means[1]);
        assert!((0.2..0.7).contains(&position), "region at {position}");

        let without = generate(&SyntheticSpec {
            mimic_region_fraction: 0.0,
            ..spec
        });
        assert!(without.iter().all(|s| s.mimics.iter().all(|m| *m == 0)));
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
