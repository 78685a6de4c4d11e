//! Cohorts on the training device: the host cohorts of `msclam_data::cohort` (a fold of a
//! CLAM-layout cohort, or generated slides split in memory) with every slide's features moved
//! onto the device once, kept there for the whole run (f32, or f16 to halve the bytes), and
//! the training tile labels as index tensors.

use msclam_data::cohort::{self as host, HostCohort, HostSlide};
use msclam_data::layout::ClamLayout;
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};

pub use msclam_data::cohort::{Annotated, SplitSpec};
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
    fn num_tiles(&self) -> usize {
        self.num_tiles
    }
}

fn index_tensor(indices: &[usize], device: Device) -> Tensor {
    let indices: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&indices).to_device(device)
}

impl Slide {
    /// Moves a (checked) host slide onto `device`, its features as `precision`.
    pub fn on_device(host: HostSlide, precision: FeaturePrecision, device: Device) -> Slide {
        let num_tiles = host.num_tiles();
        let features = Tensor::from_slice(&host.features)
            .reshape([num_tiles as i64, host.dim as i64])
            .to_kind(precision.kind())
            .to_device(device);
        let tile_labels = host.tile_labels.map(|t| TileLabels {
            num_tumor: t.tumor.len(),
            num_normal: t.normal.len(),
            tumor: index_tensor(&t.tumor, device),
            normal: index_tensor(&t.normal, device),
        });
        Slide {
            id: host.id,
            label: host.label,
            features,
            num_tiles,
            tile_labels,
            reference_tiles: host.reference_tiles,
            coords: host.coords,
            excluded: host.excluded,
        }
    }

    /// Builds a slide from host data (checked as [`HostSlide::new`] checks it): `features` is
    /// `N x D` row-major f32; with `train_with_tile_labels`, a tumor slide's reference labels
    /// are used in training.
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
        let host = HostSlide::new(
            id,
            label,
            features.to_vec(),
            dim,
            coords,
            reference_tiles,
            train_with_tile_labels,
        )?;
        Ok(Slide::on_device(host, precision, device))
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

/// A fold's slides on the training device, with their split into training, validation and
/// test sets.
pub type Cohort = msclam_data::cohort::Cohort<Slide>;

/// Moves a host cohort onto `device`, one slide at a time (each host slide is freed as soon
/// as it is on the device).
pub fn to_device(cohort: HostCohort, precision: FeaturePrecision, device: Device) -> Cohort {
    cohort.map(|s| Slide::on_device(s, precision, device))
}

/// Loads fold `fold` of a cohort in the CLAM layout onto `device` ([`host::load_fold_with`]:
/// each slide moves onto the device as soon as it is read). Returns the cohort and the ids of
/// the slides whose tile labels are used in training.
pub fn load(
    layout: &ClamLayout,
    fold: usize,
    annotated: &Annotated,
    precision: FeaturePrecision,
    device: Device,
) -> Result<(Cohort, Vec<String>)> {
    host::load_fold_with(layout, fold, annotated, |s| {
        Ok::<_, TrainError>(Slide::on_device(s, precision, device))
    })
}

/// A cohort from generated slides ([`host::from_synthetic`]: split, annotated subset chosen),
/// features on `device`.
pub fn cohort_from_synthetic(
    slides: Vec<crate::synthetic::SyntheticSlide>,
    split: &SplitSpec,
    precision: FeaturePrecision,
    device: Device,
) -> Result<Cohort> {
    Ok(to_device(
        host::from_synthetic(slides, split)?,
        precision,
        device,
    ))
}
