//! Cohorts in the layout CLAM and MS-CLAM users already have, read and written without libtorch:
//!
//! ```text
//! <root>/dataset.csv                 case_id,slide_id,label   (label names mapped to classes)
//! <root>/h5_files/<slide_id>.h5      features (N x D, float32 or float16), coords (N x 2),
//!                                    optionally tile_labels (N, 1 = tumor)
//! <root>/pt_files/<slide_id>.pt      the features as a torch.save tensor (read when the .h5
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

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::split::{StratifiedSplit, Validation};
use crate::synthetic::SyntheticSlide;
use crate::torch_save::{Dtype, PyObject};
use crate::{NORMAL, TUMOR};

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

fn csv_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::file(path, e)
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
                DataError::slide(
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
    /// Side of a tile in level-0 pixels, from the `coords` attributes CLAM writes
    /// (`patch_size` times `downsample`), if present.
    pub tile_size: Option<u32>,
}

/// Reads one slide's features file: HDF5 (`.h5`) or a `torch.save` tensor (`.pt`, see
/// [`read_pt`]).
pub fn read_features_file(path: &Path, slide: &str) -> Result<SlideFile> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("pt") | Some("pth") => read_pt(path, slide),
        _ => read_h5(path, slide),
    }
}

/// Reads one slide of a cohort: `h5_files/<id>.h5` when it exists, else `pt_files/<id>.pt`.
pub fn read_slide(layout: &ClamLayout, slide: &str) -> Result<SlideFile> {
    let h5 = layout.h5_dir.join(format!("{slide}.h5"));
    if h5.exists() {
        return read_h5(&h5, slide);
    }
    match layout
        .pt_dir
        .as_ref()
        .map(|d| d.join(format!("{slide}.pt")))
        .filter(|p| p.exists())
    {
        Some(pt) => read_pt(&pt, slide),
        None => Err(DataError::slide(
            slide,
            format!(
                "missing features file {} (and no {slide}.pt in pt_files/)",
                h5.display()
            ),
        )),
    }
}

/// Reads a `pt_files/<id>.pt` tensor (`N x D`, float32/float16/bfloat16/float64, written by
/// Python's `torch.save`) with the pure-Rust reader of [`crate::torch_save`]. Such a file has
/// no coordinates: the tiles are laid out in reading order on a square grid of 256-pixel
/// tiles.
pub fn read_pt(path: &Path, slide: &str) -> Result<SlideFile> {
    let bad = |why: String| DataError::slide(slide, format!("{}: {why}", path.display()));
    let object = crate::torch_save::read_torch_save(path)
        .map_err(|e| DataError::slide(slide, e.to_string()))?;
    let array = match object {
        PyObject::Array(a) => a,
        other => return Err(bad(format!("holds {}, not a tensor", other.describe()))),
    };
    if array.shape.len() != 2 {
        return Err(bad(format!(
            "the tensor has shape {:?}, expected N x D",
            array.shape
        )));
    }
    if !array.dtype.is_float() {
        return Err(bad(format!(
            "the tensor holds {}, expected floating point",
            array.dtype.name()
        )));
    }
    let (n, dim) = (array.shape[0], array.shape[1]);
    if n == 0 || dim == 0 {
        return Err(bad("empty slide: no tiles".into()));
    }
    let features = array.to_f32();
    let width = (n as f64).sqrt().ceil() as usize;
    let coords = (0..n)
        .map(|i| [((i % width) * 256) as u32, ((i / width) * 256) as u32])
        .collect();
    Ok(SlideFile {
        features,
        dim,
        coords,
        tile_labels: None,
        tile_size: None,
    })
}

fn h5_error(slide: &str, e: impl std::fmt::Display) -> DataError {
    DataError::slide(slide, format!("HDF5: {e}"))
}

/// Most values read from one HDF5 dataset (2^32: 16 GiB of f32, beyond any slide).
const MAX_DATASET_VALUES: usize = 1 << 32;
/// How many times the file's size a dataset may declare (compressed features shrink a few
/// times; a dataset declaring far more is unwritten storage, or a hostile file).
const MAX_DECLARED_EXPANSION: u64 = 256;

/// The number of values of `ds`, checked before anything is read: its shape must not overflow,
/// exceed [`MAX_DATASET_VALUES`], or declare more than [`MAX_DECLARED_EXPANSION`] times the
/// file's bytes.
fn dataset_values(ds: &hdf5::Dataset, slide: &str, name: &str, file_bytes: u64) -> Result<usize> {
    let shape = ds.shape();
    let too_large = || {
        DataError::slide(
            slide,
            format!("HDF5 dataset `{name}` declares shape {shape:?}, too large to read"),
        )
    };
    let values = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|v| *v <= MAX_DATASET_VALUES)
        .ok_or_else(too_large)?;
    use hdf5::types::TypeDescriptor as T;
    let numeric = matches!(
        ds.dtype().and_then(|t| t.to_descriptor()),
        Ok(T::Integer(_) | T::Unsigned(_) | T::Float(_) | T::Boolean)
    );
    if !numeric {
        return Err(DataError::slide(
            slide,
            format!("HDF5 dataset `{name}` does not hold numbers"),
        ));
    }
    let element = ds.dtype().map(|t| t.size() as u64).unwrap_or(8);
    let declared = values as u64 * element;
    // Contiguous and compact data must be stored whole (contiguous: inside the file).
    if !ds.is_chunked() {
        let outside = ds
            .offset()
            .is_some_and(|offset| offset.saturating_add(declared) > file_bytes);
        if outside || ds.storage_size() < declared {
            return Err(DataError::slide(
                slide,
                format!(
                    "HDF5 dataset `{name}` declares {declared} bytes that the {file_bytes}-byte \
                     file does not store"
                ),
            ));
        }
    }
    if declared > file_bytes.saturating_mul(MAX_DECLARED_EXPANSION) {
        return Err(DataError::slide(
            slide,
            format!(
                "HDF5 dataset `{name}` declares shape {shape:?} ({declared} bytes), but the \
                 file holds only {file_bytes} bytes"
            ),
        ));
    }
    Ok(values)
}

/// Reads `features` (float32 or float16), `coords` and optional `tile_labels` of one slide.
/// Dataset shapes are checked against each other and against the file's size before any
/// value is read, so a damaged or hostile file cannot make it allocate without bound.
pub fn read_h5(path: &Path, slide: &str) -> Result<SlideFile> {
    if !path.exists() {
        return Err(DataError::slide(
            slide,
            format!("missing features file {}", path.display()),
        ));
    }
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    let file = hdf5::File::open(path).map_err(|e| h5_error(slide, e))?;
    let ds = file.dataset("features").map_err(|e| h5_error(slide, e))?;
    dataset_values(&ds, slide, "features", file_bytes)?;
    let shape = ds.shape();
    if shape.len() != 2 {
        return Err(DataError::slide(
            slide,
            format!("features have shape {shape:?}, expected N x D"),
        ));
    }
    let (n, dim) = (shape[0], shape[1]);
    if n == 0 || dim == 0 {
        return Err(DataError::slide(slide, "empty slide: no tiles"));
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
    let mut tile_size = None;
    let coords = match file.dataset("coords") {
        Ok(c) => {
            tile_size = clam_tile_size(&c);
            let values = dataset_values(&c, slide, "coords", file_bytes)?;
            if values != 2 * n {
                return Err(DataError::slide(
                    slide,
                    format!("{values} coordinate values for {n} tiles"),
                ));
            }
            let raw = c.read_raw::<i64>().map_err(|e| h5_error(slide, e))?;
            raw.chunks_exact(2)
                .map(|p| [p[0].max(0) as u32, p[1].max(0) as u32])
                .collect()
        }
        Err(_) => vec![[0, 0]; n],
    };
    let tile_labels = match file.dataset("tile_labels") {
        Ok(t) => {
            let values = dataset_values(&t, slide, "tile_labels", file_bytes)?;
            if values != n {
                return Err(DataError::slide(
                    slide,
                    format!("{values} tile labels for {n} tiles"),
                ));
            }
            let raw = t.read_raw::<i64>().map_err(|e| h5_error(slide, e))?;
            Some(raw.into_iter().map(|v| u8::from(v != 0)).collect())
        }
        Err(_) => None,
    };
    Ok(SlideFile {
        features,
        dim,
        coords,
        tile_labels,
        tile_size,
    })
}

/// Writes `coords` as CLAM does: an `N x 2` int64 dataset named `coords`.
pub(crate) fn write_coords(file: &hdf5::File, coords: &[[u32; 2]]) -> hdf5::Result<()> {
    let values: Vec<i64> = coords
        .iter()
        .flat_map(|c| [c[0] as i64, c[1] as i64])
        .collect();
    file.new_dataset::<i64>()
        .shape([coords.len(), 2])
        .create("coords")?
        .write_raw(&values)?;
    Ok(())
}

/// `(tiles, dimension)` of a slide's `.h5` features, from the dataset's shape only (nothing is
/// read).
pub fn h5_shape(path: &Path, slide: &str) -> Result<(usize, usize)> {
    let file = hdf5::File::open(path).map_err(|e| h5_error(slide, e))?;
    let shape = file
        .dataset("features")
        .map_err(|e| h5_error(slide, e))?
        .shape();
    Ok((
        shape.first().copied().unwrap_or(0),
        shape.get(1).copied().unwrap_or(0),
    ))
}

/// Level-0 tile side from CLAM's `coords` attributes: `patch_size` (at the patching level)
/// times `downsample` (that level's downsample, an `(x, y)` pair), when both are readable.
fn clam_tile_size(coords: &hdf5::Dataset) -> Option<u32> {
    let size = coords.attr("patch_size").ok()?.read_scalar::<i64>().ok()?;
    let downsample = match coords.attr("downsample") {
        Ok(a) => a.read_raw::<f64>().ok()?.first().copied().unwrap_or(1.0),
        Err(_) => 1.0,
    };
    let side = (size as f64 * downsample).round();
    (side >= 1.0 && side <= u32::MAX as f64).then_some(side as u32)
}

/// Reads a list of tumorous tile indices: a Python pickle (`.pkl`: a list or tuple of ints or
/// NumPy integers, or a NumPy array of indices or a boolean mask, as MS-CLAM users write
/// them), a NumPy `.npy` array (integer indices, or a boolean mask with one entry per tile)
/// or text (`.txt`/`.csv`, integers separated by newlines or commas).
/// Returns the per-tile labels of an `n`-tile slide.
pub fn read_tile_label_file(path: &Path, slide: &str, n: usize) -> Result<Vec<u8>> {
    let indices: Vec<i64> = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => match read_npy_labels(path, slide)? {
            NpyLabels::Mask(mask) if mask.len() == n => return Ok(mask),
            NpyLabels::Mask(mask) => {
                return Err(DataError::slide(
                    slide,
                    format!(
                        "{}: boolean mask of {} entries for {n} tiles",
                        path.display(),
                        mask.len()
                    ),
                ))
            }
            NpyLabels::Indices(indices) => indices,
        },
        Some("pkl") | Some("pickle") => {
            let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
            let bad = |why: String| DataError::slide(slide, format!("{}: {why}", path.display()));
            match crate::torch_save::parse_pickle(&bytes)
                .map_err(|e| bad(format!("not a readable pickle ({e})")))?
            {
                PyObject::List(items) | PyObject::Tuple(items) => items
                    .iter()
                    .map(|v| match v {
                        PyObject::Int(i) => Ok(*i),
                        other => Err(bad(format!("a tile index that is {}", other.describe()))),
                    })
                    .collect::<Result<Vec<i64>>>()?,
                PyObject::Array(a) if a.shape.len() == 1 && a.dtype == Dtype::Bool => {
                    if a.len() != n {
                        return Err(bad(format!(
                            "boolean mask of {} entries for {n} tiles",
                            a.len()
                        )));
                    }
                    return Ok(a.bytes().iter().map(|&b| u8::from(b != 0)).collect());
                }
                PyObject::Array(a) if a.shape.len() <= 1 => a.to_i64().ok_or_else(|| {
                    bad(format!(
                        "a {} array, expected integer tile indices",
                        a.dtype.name()
                    ))
                })?,
                other => {
                    return Err(bad(format!(
                        "holds {}, expected a list or array of tile indices",
                        other.describe()
                    )))
                }
            }
        }
        _ => {
            let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
            text.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse::<i64>().map_err(|_| {
                        DataError::slide(
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
            return Err(DataError::slide(
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

/// A one-dimensional `.npy` array of booleans (a mask) or integers (tile indices).
fn read_npy_labels(path: &Path, slide: &str) -> Result<NpyLabels> {
    use ndarray::ArrayD;
    use ndarray_npy::{ReadNpyError, ReadNpyExt};
    let bad = |why: String| DataError::slide(slide, format!("{}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    // The element type is tried in turn: a wrong one is a type error, anything else is final.
    fn try_read<T: ndarray_npy::ReadableElement>(
        bytes: &[u8],
    ) -> std::result::Result<Option<ArrayD<T>>, ReadNpyError> {
        match ArrayD::<T>::read_npy(bytes) {
            Ok(a) => Ok(Some(a)),
            Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    let one_dim = |shape: &[usize]| {
        if shape.len() > 1 {
            Err(bad(format!(
                "array of shape {shape:?}, expected one dimension"
            )))
        } else {
            Ok(())
        }
    };
    let err = |e: ReadNpyError| bad(e.to_string());
    if let Some(a) = try_read::<bool>(&bytes).map_err(err)? {
        one_dim(a.shape())?;
        return Ok(NpyLabels::Mask(a.iter().map(|v| u8::from(*v)).collect()));
    }
    macro_rules! integers {
        ($($t:ty),+) => {
            $(
                if let Some(a) = try_read::<$t>(&bytes).map_err(err)? {
                    one_dim(a.shape())?;
                    return Ok(NpyLabels::Indices(a.iter().map(|v| *v as i64).collect()));
                }
            )+
        };
    }
    integers!(i64, i32, i16, i8, u8, u16, u32);
    if let Some(a) = try_read::<u64>(&bytes).map_err(err)? {
        one_dim(a.shape())?;
        let indices = a
            .iter()
            .map(|v| i64::try_from(*v).map_err(|_| bad(format!("tile index {v} out of range"))))
            .collect::<Result<Vec<i64>>>()?;
        return Ok(NpyLabels::Indices(indices));
    }
    Err(bad(
        "expected integer tile indices or a boolean mask (another element type)".into(),
    ))
}

/// The tile-label file of `slide` in `dir`: `<slide>.pkl`, `.npy`, `.txt` or `.csv`, the
/// first that exists.
pub fn find_tile_label_file(dir: &Path, slide: &str) -> Option<PathBuf> {
    ["pkl", "npy", "txt", "csv"]
        .iter()
        .map(|ext| dir.join(format!("{slide}.{ext}")))
        .find(|p| p.exists())
}

/// The slide ids of an exclusion CSV (first column, after a header line).
pub fn read_exclusions(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .collect())
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

/// Writes generated slides in the CLAM layout under `root`, with `folds` split files
/// (stratified and seeded by [`StratifiedSplit`]: test 30 % fixed across folds, the rest
/// 80/20 train/val per fold with up to 5 folds, each class's k-th window validating fold k).
pub fn write_synthetic(
    root: &Path,
    slides: &[SyntheticSlide],
    folds: usize,
    seed: u64,
) -> Result<()> {
    let h5_dir = root.join("h5_files");
    let labels_dir = root.join("tile_labels");
    let splits_dir = root.join("splits");
    for d in [&h5_dir, &labels_dir, &splits_dir] {
        std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
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
            write_coords(&file, &s.coords)
        };
        write().map_err(|e| h5_error(&s.id, e))?;
        if s.label == TUMOR {
            let tumor: Vec<i64> = (0..n)
                .filter(|&i| s.annotation[i] != 0)
                .map(|i| i as i64)
                .collect();
            let bytes = serde_pickle::to_vec(&tumor, serde_pickle::SerOptions::new())
                .map_err(|e| DataError::slide(&s.id, e.to_string()))?;
            let p = labels_dir.join(format!("{}.pkl", s.id));
            std::fs::write(&p, bytes).map_err(|e| DataError::io(&p, e))?;
        }
    }
    let p = root.join("dataset.csv");
    std::fs::write(&p, csv).map_err(|e| DataError::io(&p, e))?;
    let incomplete: Vec<&str> = slides
        .iter()
        .filter(|s| s.incomplete)
        .map(|s| s.id.as_str())
        .collect();
    if !incomplete.is_empty() {
        let p = root.join("exclusions.csv");
        let text = format!("slide_id\n{}\n", incomplete.join("\n"));
        std::fs::write(&p, text).map_err(|e| DataError::io(&p, e))?;
    }
    // Test 30 % of each class, fixed across folds; fold k validates on the k-th window of
    // each class's remaining slides: a fifth (80/20, as in the paper) with up to 5 folds,
    // 1 / folds with more.
    let labels: Vec<usize> = slides.iter().map(|s| s.label).collect();
    let stratified = StratifiedSplit::new(&labels, 0.3, seed);
    let ids =
        |part: &[usize]| -> Vec<&str> { part.iter().map(|&i| slides[i].id.as_str()).collect() };
    for fold in 0..folds {
        let split = stratified.split(Validation::Window {
            fold,
            parts: folds.max(5),
        });
        let (train, val, test) = (ids(&split.train), ids(&split.val), ids(&split.test));
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
        std::fs::write(&p, text).map_err(|e| DataError::io(&p, e))?;
    }
    Ok(())
}
