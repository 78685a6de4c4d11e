//! Cohorts in the layout CLAM and MS-CLAM users already have:
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
use std::path::{Path, PathBuf};

use crate::data::{choose_annotated, Cohort, FeaturePrecision, Slide, NORMAL, TUMOR};
use crate::error::{Result, TrainError};
use crate::synthetic::SyntheticSlide;

/// Where a cohort's files are.
#[derive(Debug, Clone, PartialEq)]
pub struct ClamLayout {
    /// The dataset CSV.
    pub dataset_csv: PathBuf,
    /// Folder of `<slide_id>.h5` files.
    pub h5_dir: PathBuf,
    /// Folder of `<slide_id>.pt` files (`torch.save` tensors), read when a `.h5` is absent.
    pub pt_dir: Option<PathBuf>,
    /// Folder of per-slide tile label files (optional).
    pub tile_labels_dir: Option<PathBuf>,
    /// Folder of `splits_<k>.csv` files.
    pub splits_dir: PathBuf,
    /// Exclusion CSV (optional).
    pub exclusions_csv: Option<PathBuf>,
    /// Label names and their classes.
    pub label_map: Vec<(String, usize)>,
}

impl ClamLayout {
    /// The conventional layout under `root`, with CLAM's Camelyon16 label names
    /// (`normal_tissue` / `tumor_tissue`, also `normal` / `tumor` and `0` / `1`).
    pub fn under(root: &Path) -> ClamLayout {
        let optional = |p: PathBuf| p.exists().then_some(p);
        ClamLayout {
            dataset_csv: root.join("dataset.csv"),
            h5_dir: root.join("h5_files"),
            pt_dir: optional(root.join("pt_files")),
            tile_labels_dir: optional(root.join("tile_labels")),
            splits_dir: root.join("splits"),
            exclusions_csv: optional(root.join("exclusions.csv")),
            label_map: [
                ("normal_tissue", NORMAL),
                ("tumor_tissue", TUMOR),
                ("normal", NORMAL),
                ("tumor", TUMOR),
                ("0", NORMAL),
                ("1", TUMOR),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        }
    }
}

/// One row of the dataset CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRow {
    /// Patient / case identifier.
    pub case_id: String,
    /// Slide identifier (file stem of its features).
    pub slide_id: String,
    /// Class.
    pub label: usize,
}

fn csv_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("{}: {e}", path.display()))
}

/// Reads `case_id,slide_id,label` (extra columns ignored), mapping label names.
pub fn read_dataset_csv(path: &Path, label_map: &[(String, usize)]) -> Result<Vec<DatasetRow>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                csv_error(
                    path,
                    format!(
                        "no `{name}` column (columns: {})",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
    };
    let (case, slide, label) = (column("case_id")?, column("slide_id")?, column("label")?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let get = |i: usize| record.get(i).unwrap_or("").trim().to_owned();
        let slide_id = get(slide);
        let name = get(label);
        let class = label_map
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                TrainError::data(
                    &slide_id,
                    format!(
                        "unknown label `{name}` (known: {})",
                        label_map
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        rows.push(DatasetRow {
            case_id: get(case),
            slide_id,
            label: class,
        });
    }
    Ok(rows)
}

/// What a slide's `.h5` file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideFile {
    /// `N x D` features as f32.
    pub features: Vec<f32>,
    /// D.
    pub dim: usize,
    /// Tile coordinates.
    pub coords: Vec<[u32; 2]>,
    /// `tile_labels` dataset, if present.
    pub tile_labels: Option<Vec<u8>>,
}

fn h5_error(slide: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::data(slide, format!("HDF5: {e}"))
}

/// Reads `features` (float32 or float16), `coords` and optional `tile_labels` of one slide.
pub fn read_h5(path: &Path, slide: &str) -> Result<SlideFile> {
    if !path.exists() {
        return Err(TrainError::data(
            slide,
            format!("missing features file {}", path.display()),
        ));
    }
    let file = hdf5::File::open(path).map_err(|e| h5_error(slide, e))?;
    let ds = file.dataset("features").map_err(|e| h5_error(slide, e))?;
    let shape = ds.shape();
    if shape.len() != 2 {
        return Err(TrainError::data(
            slide,
            format!("features have shape {shape:?}, expected N x D"),
        ));
    }
    let (n, dim) = (shape[0], shape[1]);
    if n == 0 || dim == 0 {
        return Err(TrainError::data(slide, "empty slide: no tiles"));
    }
    let is_half = ds.dtype().map(|t| t.size() == 2).unwrap_or(false);
    let features: Vec<f32> = if is_half {
        ds.read_raw::<half::f16>()
            .map_err(|e| h5_error(slide, e))?
            .into_iter()
            .map(f32::from)
            .collect()
    } else {
        ds.read_raw::<f32>().map_err(|e| h5_error(slide, e))?
    };
    let coords = match file.dataset("coords") {
        Ok(c) => {
            let raw = c.read_raw::<i64>().map_err(|e| h5_error(slide, e))?;
            if raw.len() != 2 * n {
                return Err(TrainError::data(
                    slide,
                    format!("{} coordinate values for {n} tiles", raw.len()),
                ));
            }
            raw.chunks_exact(2)
                .map(|p| [p[0].max(0) as u32, p[1].max(0) as u32])
                .collect()
        }
        Err(_) => vec![[0, 0]; n],
    };
    let tile_labels = match file.dataset("tile_labels") {
        Ok(t) => {
            let raw = t.read_raw::<i64>().map_err(|e| h5_error(slide, e))?;
            if raw.len() != n {
                return Err(TrainError::data(
                    slide,
                    format!("{} tile labels for {n} tiles", raw.len()),
                ));
            }
            Some(raw.into_iter().map(|v| u8::from(v != 0)).collect())
        }
        Err(_) => None,
    };
    Ok(SlideFile {
        features,
        dim,
        coords,
        tile_labels,
    })
}

/// Reads one slide's features: `h5_files/<id>.h5` when it exists, else `pt_files/<id>.pt`.
pub fn read_slide(layout: &ClamLayout, slide: &str) -> Result<SlideFile> {
    let h5 = layout.h5_dir.join(format!("{slide}.h5"));
    if h5.exists() {
        return read_h5(&h5, slide);
    }
    let pt = layout
        .pt_dir
        .as_ref()
        .map(|d| d.join(format!("{slide}.pt")))
        .filter(|p| p.exists());
    match pt {
        Some(pt) => read_pt(&pt, slide),
        None => Err(TrainError::data(
            slide,
            format!(
                "missing features file {} (and no {slide}.pt in pt_files/)",
                h5.display()
            ),
        )),
    }
}

/// Reads a `pt_files/<id>.pt` tensor (`N x D`, written by Python's `torch.save`). It has no
/// coordinates: the tiles are laid out in reading order on a square grid.
pub fn read_pt(path: &Path, slide: &str) -> Result<SlideFile> {
    let (features, dim) = crate::torch_file::read_features(path)
        .map_err(|e| TrainError::data(slide, format!("{}: {e}", path.display())))?;
    let n = features.len().checked_div(dim).unwrap_or(0);
    if n == 0 {
        return Err(TrainError::data(slide, "empty slide: no tiles"));
    }
    let width = (n as f64).sqrt().ceil() as usize;
    let coords = (0..n)
        .map(|i| [((i % width) * 256) as u32, ((i / width) * 256) as u32])
        .collect();
    Ok(SlideFile {
        features,
        dim,
        coords,
        tile_labels: None,
    })
}

/// Reads a list of tumorous tile indices: a Python pickle (`.pkl`, a list of ints, as
/// MS-CLAM stores them), a NumPy `.npy` array (integer indices, or a boolean mask with one
/// entry per tile) or text (`.txt`/`.csv`, integers separated by newlines or commas).
/// Returns the per-tile labels of an `n`-tile slide.
pub fn read_tile_label_file(path: &Path, slide: &str, n: usize) -> Result<Vec<u8>> {
    let indices: Vec<i64> = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => match read_npy_labels(path, slide, n)? {
            NpyLabels::Mask(mask) => return Ok(mask),
            NpyLabels::Indices(indices) => indices,
        },
        Some("pkl") | Some("pickle") => {
            let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
            serde_pickle::from_reader(
                std::io::BufReader::new(file),
                serde_pickle::DeOptions::new(),
            )
            .map_err(|e| {
                TrainError::data(
                    slide,
                    format!("{}: not a pickled list of integers ({e})", path.display()),
                )
            })?
        }
        _ => {
            let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
            text.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse::<i64>().map_err(|_| {
                        TrainError::data(
                            slide,
                            format!("{}: `{t}` is not a tile index", path.display()),
                        )
                    })
                })
                .collect::<Result<_>>()?
        }
    };
    let mut labels = vec![0u8; n];
    for i in indices {
        if i < 0 || i as usize >= n {
            return Err(TrainError::data(
                slide,
                format!("tile index {i} out of range (the slide has {n} tiles)"),
            ));
        }
        labels[i as usize] = 1;
    }
    Ok(labels)
}

enum NpyLabels {
    Mask(Vec<u8>),
    Indices(Vec<i64>),
}

fn read_npy_labels(path: &Path, slide: &str, n: usize) -> Result<NpyLabels> {
    let bad = |why: String| TrainError::data(slide, format!("{}: {why}", path.display()));
    let tensor = tch::Tensor::read_npy(path).map_err(|e| bad(e.to_string()))?;
    let size = tensor.size();
    if size.len() > 1 {
        return Err(bad(format!(
            "array of shape {size:?}, expected one dimension"
        )));
    }
    let flat = tensor.view([-1]);
    match flat.kind() {
        tch::Kind::Bool => {
            if flat.numel() != n {
                return Err(bad(format!(
                    "boolean mask of {} entries for {n} tiles",
                    flat.numel()
                )));
            }
            let mask = Vec::<u8>::try_from(&flat.to_kind(tch::Kind::Uint8))
                .map_err(|e| bad(e.to_string()))?;
            Ok(NpyLabels::Mask(mask))
        }
        tch::Kind::Int64
        | tch::Kind::Int
        | tch::Kind::Int16
        | tch::Kind::Int8
        | tch::Kind::Uint8 => {
            let indices = Vec::<i64>::try_from(&flat.to_kind(tch::Kind::Int64))
                .map_err(|e| bad(e.to_string()))?;
            Ok(NpyLabels::Indices(indices))
        }
        other => Err(bad(format!(
            "array of {other:?}, expected integer tile indices or a boolean mask"
        ))),
    }
}

/// Reads a CLAM split file (`,train,val,test`; columns of slide ids, ragged).
pub fn read_split_csv(path: &Path) -> Result<[Vec<String>; 3]> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| csv_error(path, format!("no `{name}` column")))
    };
    let cols = [column("train")?, column("val")?, column("test")?];
    let mut out: [Vec<String>; 3] = Default::default();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        for (k, &c) in cols.iter().enumerate() {
            if let Some(v) = record.get(c).map(str::trim).filter(|v| !v.is_empty()) {
                out[k].push(v.to_owned());
            }
        }
    }
    Ok(out)
}

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
        let file = hdf5::File::open(&path).map_err(|e| h5_error(id, e))?;
        let shape = file
            .dataset("features")
            .map_err(|e| h5_error(id, e))?
            .shape();
        tiles += shape.first().copied().unwrap_or(0);
        dim = dim.max(shape.get(1).copied().unwrap_or(0));
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
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| TrainError::io(p, e))?;
            text.lines()
                .skip(1)
                .filter_map(|l| l.split(',').next().map(|s| s.trim().to_owned()))
                .filter(|s| !s.is_empty())
                .collect()
        }
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
                let found = ["pkl", "npy", "txt", "csv"]
                    .iter()
                    .map(|ext| dir.join(format!("{}.{ext}", row.slide_id)))
                    .find(|p| p.exists());
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

/// Writes generated slides in the CLAM layout under `root`, with `folds` split files
/// (stratified, seeded: test 30 % fixed across folds, the rest 80/20 train/val per fold).
pub fn write_synthetic(
    root: &Path,
    slides: &[SyntheticSlide],
    folds: usize,
    seed: u64,
) -> Result<()> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let h5_dir = root.join("h5_files");
    let labels_dir = root.join("tile_labels");
    let splits_dir = root.join("splits");
    for d in [&h5_dir, &labels_dir, &splits_dir] {
        std::fs::create_dir_all(d).map_err(|e| TrainError::io(d, e))?;
    }
    let mut csv = String::from("case_id,slide_id,label\n");
    for s in slides {
        csv += &format!(
            "case_{},{},{}\n",
            &s.id[6..],
            s.id,
            if s.label == TUMOR {
                "tumor_tissue"
            } else {
                "normal_tissue"
            }
        );
        let path = h5_dir.join(format!("{}.h5", s.id));
        let n = s.tile_labels.len();
        let dim = s.features.len() / n;
        let file = hdf5::File::create(&path).map_err(|e| h5_error(&s.id, e))?;
        let write = || -> hdf5::Result<()> {
            file.new_dataset::<f32>()
                .shape([n, dim])
                .create("features")?
                .write_raw(&s.features)?;
            let coords: Vec<i64> = s
                .coords
                .iter()
                .flat_map(|c| [c[0] as i64, c[1] as i64])
                .collect();
            file.new_dataset::<i64>()
                .shape([n, 2])
                .create("coords")?
                .write_raw(&coords)?;
            Ok(())
        };
        write().map_err(|e| h5_error(&s.id, e))?;
        if s.label == TUMOR {
            let tumor: Vec<i64> = (0..n)
                .filter(|&i| s.annotation[i] != 0)
                .map(|i| i as i64)
                .collect();
            let bytes = serde_pickle::to_vec(&tumor, serde_pickle::SerOptions::new())
                .map_err(|e| TrainError::Config(e.to_string()))?;
            let p = labels_dir.join(format!("{}.pkl", s.id));
            std::fs::write(&p, bytes).map_err(|e| TrainError::io(&p, e))?;
        }
    }
    let p = root.join("dataset.csv");
    std::fs::write(&p, csv).map_err(|e| TrainError::io(&p, e))?;
    let incomplete: Vec<&str> = slides
        .iter()
        .filter(|s| s.incomplete)
        .map(|s| s.id.as_str())
        .collect();
    if !incomplete.is_empty() {
        let p = root.join("exclusions.csv");
        let text = format!("slide_id\n{}\n", incomplete.join("\n"));
        std::fs::write(&p, text).map_err(|e| TrainError::io(&p, e))?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut test = Vec::new();
    let mut rest: [Vec<&str>; 2] = Default::default();
    for class in [NORMAL, TUMOR] {
        let mut ids: Vec<&str> = slides
            .iter()
            .filter(|s| s.label == class)
            .map(|s| s.id.as_str())
            .collect();
        ids.shuffle(&mut rng);
        let n_test = (ids.len() as f64 * 0.3).round() as usize;
        test.extend_from_slice(&ids[..n_test]);
        rest[class] = ids[n_test..].to_vec();
    }
    for fold in 0..folds {
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for ids in &rest {
            // Fold k validates on the k-th window of each class: a fifth (80/20, as in the
            // paper) with up to 5 folds, 1 / folds with more.
            let n = ids.len();
            let parts = folds.max(5);
            let (a, b) = (fold * n / parts, (fold + 1) * n / parts);
            for (j, id) in ids.iter().enumerate() {
                if (a..b).contains(&j) {
                    val.push(*id)
                } else {
                    train.push(*id)
                }
            }
        }
        let rows = train.len().max(val.len()).max(test.len());
        let mut text = String::from(",train,val,test\n");
        for r in 0..rows {
            fn cell<'a>(v: &[&'a str], r: usize) -> &'a str {
                v.get(r).copied().unwrap_or("")
            }
            text += &format!(
                "{r},{},{},{}\n",
                cell(&train, r),
                cell(&val, r),
                cell(&test, r)
            );
        }
        let p = splits_dir.join(format!("splits_{fold}.csv"));
        std::fs::write(&p, text).map_err(|e| TrainError::io(&p, e))?;
    }
    Ok(())
}
