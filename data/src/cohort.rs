//! A fold of a cohort in memory, without libtorch: the slides of the fold (features as host
//! `f32`, coordinates, reference tile labels, which tumor slides' tile labels train) and their
//! train / validation / test index lists. Two routes lead to one: a cohort in the CLAM layout
//! ([`load_fold`], split by its `splits_<k>.csv`) and generated slides ([`from_synthetic`],
//! split by [`crate::split::StratifiedSplit`]). The trainer moves the slides onto its device
//! ([`Cohort::map`], or [`load_fold_with`] to move each slide as soon as it is read).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{DataError, Result};
use crate::layout::{
    find_tile_label_file, h5_shape, read_dataset_csv, read_exclusions, read_slide, read_split_csv,
    read_tile_label_file, ClamLayout,
};
use crate::report::SlideTruth;
use crate::split::{choose_annotated, StratifiedSplit, Validation};
use crate::synthetic::SyntheticSlide;
use crate::{NORMAL, TUMOR};

/// The tiles of an annotated tumor slide, by their known labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileIndices {
    /// Indices of the tumorous tiles.
    pub tumor: Vec<usize>,
    /// Indices of the normal tiles.
    pub normal: Vec<usize>,
}

/// One slide in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSlide {
    /// Slide identifier.
    pub id: String,
    /// Slide class ([`NORMAL`] or [`TUMOR`]).
    pub label: usize,
    /// `N x D` row-major features.
    pub features: Vec<f32>,
    /// Feature dimension D.
    pub dim: usize,
    /// Tile coordinates (pixels), for heatmaps.
    pub coords: Vec<[u32; 2]>,
    /// Reference tile labels for evaluation (1 tumor, 0 normal), when known.
    pub reference_tiles: Option<Vec<u8>>,
    /// Tile labels used for training (annotated tumor slides of the training set with at
    /// least one tumorous tile).
    pub tile_labels: Option<TileIndices>,
    /// Whether the slide's annotation is known to be incomplete.
    pub excluded: bool,
}

impl HostSlide {
    /// A slide from its parts, checked: `features` must be a whole, non-zero number of
    /// `dim`-value tiles, all finite, and `reference_tiles` must have one label per tile.
    /// With `train_with_tile_labels`, a tumor slide's reference labels become its training
    /// tile labels (none if it has no tumorous tile: no tile supervision).
    pub fn new(
        id: &str,
        label: usize,
        features: Vec<f32>,
        dim: usize,
        coords: Vec<[u32; 2]>,
        reference_tiles: Option<Vec<u8>>,
        train_with_tile_labels: bool,
    ) -> Result<HostSlide> {
        let num_tiles = features.len() / dim.max(1);
        if num_tiles == 0 || features.len() != num_tiles * dim {
            return Err(DataError::slide(
                id,
                format!(
                    "{} values is not a whole number of {dim}-dim tiles, or empty",
                    features.len()
                ),
            ));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(DataError::slide(
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
                return Err(DataError::slide(
                    id,
                    format!("{} tile labels for {num_tiles} tiles", r.len()),
                ));
            }
        }
        let tile_labels = match (&reference_tiles, train_with_tile_labels && label == TUMOR) {
            (Some(r), true) => {
                let (tumor, normal): (Vec<usize>, Vec<usize>) =
                    (0..num_tiles).partition(|&i| r[i] != 0);
                (!tumor.is_empty()).then_some(TileIndices { tumor, normal })
            }
            _ => None,
        };
        Ok(HostSlide {
            id: id.to_owned(),
            label,
            features,
            dim,
            coords,
            reference_tiles,
            tile_labels,
            excluded: false,
        })
    }

    /// Number of tiles N.
    pub fn num_tiles(&self) -> usize {
        self.features.len() / self.dim.max(1)
    }
}

impl SlideTruth for HostSlide {
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
    fn num_tiles(&self) -> usize {
        HostSlide::num_tiles(self)
    }
}

/// A fold's slides with their split into training, validation and test sets. `S` is the
/// slide: [`HostSlide`] here, the trainer's device-resident slide there.
#[derive(Debug)]
pub struct Cohort<S> {
    /// Every slide of the fold.
    pub slides: Vec<S>,
    /// Embedding dimension D.
    pub dim: usize,
    /// Indices into `slides` of the training set.
    pub train: Vec<usize>,
    /// Indices of the validation set.
    pub val: Vec<usize>,
    /// Indices of the test set.
    pub test: Vec<usize>,
}

/// A fold in host memory.
pub type HostCohort = Cohort<HostSlide>;

impl<S> Cohort<S> {
    /// The same cohort with every slide converted by `convert`, in order; each slide is
    /// dropped as soon as it is converted (so a move to a device never holds the cohort twice).
    pub fn map<T>(self, convert: impl FnMut(S) -> T) -> Cohort<T> {
        Cohort {
            slides: self.slides.into_iter().map(convert).collect(),
            dim: self.dim,
            train: self.train,
            val: self.val,
            test: self.test,
        }
    }
}

impl<S: SlideTruth> Cohort<S> {
    /// Total tiles of the slides at `indices`.
    pub fn tiles(&self, indices: &[usize]) -> usize {
        indices.iter().map(|&i| self.slides[i].num_tiles()).sum()
    }
}

/// How generated slides become a cohort.
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

/// A cohort of generated slides: split by [`StratifiedSplit`] (`test_fraction` for testing,
/// `val_fraction` of each class for validation; index lists sorted), annotated subset chosen
/// by [`choose_annotated`]; the reference tile labels are what the annotator marked, as they
/// would be on real data.
pub fn from_synthetic(slides: Vec<SyntheticSlide>, split: &SplitSpec) -> Result<HostCohort> {
    let dim = slides
        .first()
        .map_or(0, |s| s.features.len() / s.tile_labels.len().max(1));
    let labels: Vec<usize> = slides.iter().map(|s| s.label).collect();
    let excluded: Vec<bool> = slides.iter().map(|s| s.incomplete).collect();
    let parts = StratifiedSplit::new(&labels, split.test_fraction, split.seed)
        .split(Validation::Fraction(split.val_fraction))
        .sorted();
    let annotated = choose_annotated(
        &labels,
        &excluded,
        &parts.train,
        &parts.val,
        split.annotated_percent,
        split.seed,
    );
    let slides = slides
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut slide = HostSlide::new(
                &s.id,
                s.label,
                s.features,
                dim,
                s.coords,
                Some(s.annotation),
                annotated.binary_search(&i).is_ok(),
            )?;
            slide.excluded = s.incomplete;
            Ok(slide)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Cohort {
        slides,
        dim,
        train: parts.train,
        val: parts.val,
        test: parts.test,
    })
}

/// Which tumor slides' tile labels are used in training.
#[derive(Debug, Clone, PartialEq)]
pub enum Annotated {
    /// A predefined list of slide ids.
    List(Vec<String>),
    /// k % of the tumor slides, chosen at random (seeded) as the method notes specify.
    Percent(f64, u64),
}

impl Annotated {
    /// The slide ids listed in a text file, one per line (blank lines ignored).
    pub fn read_list(path: &Path) -> Result<Annotated> {
        Ok(Annotated::List(
            std::fs::read_to_string(path)
                .map_err(|e| DataError::io(path, e))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// Tiles and feature dimension of fold `fold`'s slides, from the files' shapes only (nothing
/// is loaded from `.h5` files): what a memory check needs before loading.
pub fn count_tiles(layout: &ClamLayout, fold: usize) -> Result<(usize, usize)> {
    let split = read_split_csv(&layout.splits_dir.join(format!("splits_{fold}.csv")))?;
    let (mut tiles, mut dim) = (0usize, 0usize);
    for id in split.iter().flatten() {
        let path = layout.h5_dir.join(format!("{id}.h5"));
        if !path.exists() {
            // A pt_files/ tensor has to be read to know its shape.
            let slide = read_slide(layout, id)?;
            tiles += slide.coords.len();
            dim = dim.max(slide.dim);
            continue;
        }
        let (n, d) = h5_shape(&path, id)?;
        tiles += n;
        dim = dim.max(d);
    }
    Ok((tiles, dim))
}

/// Loads fold `fold` of a cohort in the CLAM layout into host memory: the slides its split
/// file names (in dataset order), the split as the file gives it, tile labels, exclusions and
/// the annotated subset. Returns the cohort and the ids of the slides whose tile labels are
/// used in training.
pub fn load_fold(
    layout: &ClamLayout,
    fold: usize,
    annotated: &Annotated,
) -> Result<(HostCohort, Vec<String>)> {
    load_fold_with(layout, fold, annotated, Ok)
}

/// [`load_fold`], handing each slide to `convert` as soon as it is read and checked (the
/// trainer moves it onto its device there, so the fold's features are never all in host
/// memory at once).
///
/// Every problem names the slide: a missing file, features of another dimension than the
/// others, NaN/Inf features, a tile index out of range, an unknown label, an empty slide, a
/// split naming a slide that is not in the dataset, an annotated slide without tile labels.
pub fn load_fold_with<S, E: From<DataError>>(
    layout: &ClamLayout,
    fold: usize,
    annotated: &Annotated,
    mut convert: impl FnMut(HostSlide) -> Result<S, E>,
) -> Result<(Cohort<S>, Vec<String>), E> {
    let rows = read_dataset_csv(&layout.dataset_csv, &layout.label_map)?;
    let index: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.slide_id.as_str(), i))
        .collect();
    let split_path = layout.splits_dir.join(format!("splits_{fold}.csv"));
    let split = read_split_csv(&split_path)?;
    let mut sets: [Vec<usize>; 3] = Default::default();
    for (k, ids) in split.iter().enumerate() {
        for id in ids {
            let i = *index.get(id.as_str()).ok_or_else(|| {
                DataError::slide(
                    id,
                    format!(
                        "named by {} but not in {}",
                        split_path.display(),
                        layout.dataset_csv.display()
                    ),
                )
            })?;
            sets[k].push(i);
        }
    }
    let excluded_ids: Vec<String> = match &layout.exclusions_csv {
        Some(p) => read_exclusions(p)?,
        None => Vec::new(),
    };
    let labels: Vec<usize> = rows.iter().map(|r| r.label).collect();
    let excluded: Vec<bool> = rows
        .iter()
        .map(|r| excluded_ids.contains(&r.slide_id))
        .collect();
    let annotated_idx: Vec<usize> = match annotated {
        Annotated::List(ids) => ids
            .iter()
            .map(|id| {
                index.get(id.as_str()).copied().ok_or_else(|| {
                    DataError::slide(id, "listed as annotated but not in the dataset")
                })
            })
            .collect::<Result<_>>()?,
        Annotated::Percent(k, seed) => {
            choose_annotated(&labels, &excluded, &sets[0], &sets[1], *k, *seed)
        }
    };
    // Load only the slides of this fold.
    let mut used: Vec<usize> = sets.iter().flatten().copied().collect();
    used.sort_unstable();
    used.dedup();
    let mut slides = Vec::with_capacity(used.len());
    let mut dim = None;
    for &i in &used {
        let row = &rows[i];
        let file = read_slide(layout, &row.slide_id)?;
        match dim {
            None => dim = Some(file.dim),
            Some(d) if d != file.dim => {
                return Err(DataError::slide(
                    &row.slide_id,
                    format!("features have D = {}, the other slides D = {d}", file.dim),
                )
                .into());
            }
            _ => {}
        }
        let n = file.coords.len();
        let reference = match (&layout.tile_labels_dir, file.tile_labels) {
            (_, Some(t)) => Some(t),
            (Some(dir), None) => match find_tile_label_file(dir, &row.slide_id) {
                Some(p) => Some(read_tile_label_file(&p, &row.slide_id, n)?),
                None if row.label == NORMAL => Some(vec![0; n]),
                None => None,
            },
            (None, None) if row.label == NORMAL => Some(vec![0; n]),
            (None, None) => None,
        };
        let use_labels = annotated_idx.contains(&i);
        if use_labels && reference.is_none() {
            return Err(DataError::slide(
                &row.slide_id,
                "chosen as annotated but has no tile labels",
            )
            .into());
        }
        let mut slide = HostSlide::new(
            &row.slide_id,
            row.label,
            file.features,
            file.dim,
            file.coords,
            reference,
            use_labels,
        )?;
        slide.excluded = excluded[i];
        slides.push(convert(slide)?);
    }
    let position: HashMap<usize, usize> = used.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let remap = |set: &[usize]| set.iter().map(|i| position[i]).collect::<Vec<_>>();
    let cohort = Cohort {
        dim: dim.unwrap_or(0),
        train: remap(&sets[0]),
        val: remap(&sets[1]),
        test: remap(&sets[2]),
        slides,
    };
    let annotated_ids = annotated_idx
        .iter()
        .map(|&i| rows[i].slide_id.clone())
        .collect();
    Ok((cohort, annotated_ids))
}
