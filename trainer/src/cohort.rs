//! Loading cohorts in the CLAM layout onto the training device. The on-disk layout itself (what
//! each file holds, and the readers and writers) is `msclam_data::layout`, re-exported here;
//! this module adds what needs libtorch: the device-resident [`Cohort`].
//!
//!
//! ```text
//! <root>/dataset.csv                 case_id,slide_id,label   (label names mapped to classes)
//! <root>/h5_files/<slide_id>.h5      features (N x D, float32 or float16), coords (N x 2),
//!                                    optionally tile_labels (N, 1 = tumor)
//! <root>/pt_files/<slide_id>.pt      the features as a torch.save tensor (used when the .h5
//!                                    is absent; tiles are then laid out in reading order)
//! <root>/tile_labels/<slide_id>.pkl  Python list of tumorous tile indices (MS-CLAM's format),
//!                       or .npy (integer indices, or a boolean mask of N),
//!                       or .txt/.csv one index per line or comma-separated
//! <root>/splits/splits_<k>.csv       CLAM split files: ,train,val,test columns of slide ids
//! <root>/exclusions.csv              slides whose annotation is incomplete (first column)
//! ```
//!
//! Every problem names the slide: a missing file, features of another dimension than the
//! others, NaN/Inf features, a tile index out of range, an unknown label, an empty slide, a
//! split naming a slide that is not in the dataset.

use std::collections::HashMap;

pub use msclam_data::layout::{
    find_tile_label_file, read_dataset_csv, read_exclusions, read_h5, read_pt, read_slide,
    read_split_csv, read_tile_label_file, write_synthetic, ClamLayout, DatasetRow, SlideFile,
};

use crate::data::{choose_annotated, Cohort, FeaturePrecision, Slide, NORMAL};
use crate::error::{Result, TrainError};

/// Tiles and feature dimension of fold `fold`'s slides, from the files' shapes only (nothing
/// is loaded): what the memory check needs before loading.
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
        let (n, d) = msclam_data::layout::h5_shape(&path, id)?;
        tiles += n;
        dim = dim.max(d);
    }
    Ok((tiles, dim))
}

/// Which tumor slides' tile labels are used in training.
#[derive(Debug, Clone, PartialEq)]
pub enum Annotated {
    /// A predefined list of slide ids.
    List(Vec<String>),
    /// k % of the tumor slides, chosen at random (seeded) as the method notes specify.
    Percent(f64, u64),
}

/// Loads fold `fold` of a cohort: split, features on `device`, tile labels, annotated subset.
/// Returns the cohort and the ids of the slides whose tile labels are used in training.
pub fn load(
    layout: &ClamLayout,
    fold: usize,
    annotated: &Annotated,
    precision: FeaturePrecision,
    device: tch::Device,
) -> Result<(Cohort, Vec<String>)> {
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
                TrainError::data(
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
                    TrainError::data(id, "listed as annotated but not in the dataset")
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
                return Err(TrainError::data(
                    &row.slide_id,
                    format!("features have D = {}, the other slides D = {d}", file.dim),
                ));
            }
            _ => {}
        }
        let n = file.coords.len();
        let reference = match (&layout.tile_labels_dir, file.tile_labels) {
            (_, Some(t)) => Some(t),
            (Some(dir), None) => {
                let found = find_tile_label_file(dir, &row.slide_id);
                match found {
                    Some(p) => Some(read_tile_label_file(&p, &row.slide_id, n)?),
                    None if row.label == NORMAL => Some(vec![0; n]),
                    None => None,
                }
            }
            (None, None) if row.label == NORMAL => Some(vec![0; n]),
            (None, None) => None,
        };
        let use_labels = annotated_idx.contains(&i);
        if use_labels && reference.is_none() {
            return Err(TrainError::data(
                &row.slide_id,
                "chosen as annotated but has no tile labels",
            ));
        }
        let mut slide = Slide::from_host(
            &row.slide_id,
            row.label,
            &file.features,
            file.dim,
            file.coords,
            reference,
            use_labels,
            precision,
            device,
        )?;
        slide.excluded = excluded[i];
        slides.push(slide);
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
