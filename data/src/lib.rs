//! msclam's data layer, without libtorch: what a hospital server or a scanner needs to score
//! slides with the engine and what the trainer shares with it.
//!
//! - [`layout`]: the CLAM-layout cohort on disk (dataset CSV, HDF5 features, tile labels in
//!   every supported form, split and exclusion CSVs), read and written;
//! - [`cohort`]: a fold of a cohort in host memory (from the CLAM layout or from generated
//!   slides), which the trainer moves onto its device; [`split`]: the one seeded, stratified
//!   train / validation / test rule and the choice of annotated slides;
//! - [`metrics`]: the paper's metrics; [`report`]: an evaluation written out (per-fold
//!   metrics, per-slide and per-tile CSVs, the paper-shaped table); [`plots`]: ROC and
//!   training curves; [`history`]: what each training epoch gave;
//! - [`synthetic`]: generated cohorts that look like Camelyon16 or DigestPath;
//! - [`outputs`]: per-slide scores as HDF5 (CLAM's heatmap convention), the tumor mask as
//!   GeoJSON (QuPath), pictures, and the run's tables;
//! - [`score`]: the batch job behind `msclam score` (threads, resumable, shards);
//! - [`convert`]: CLAM-SB and MS-CLAM PyTorch checkpoints to `.mscl` models;
//! - [`torch_save`]: files written by `torch.save` and `pickle.dump` (feature tensors,
//!   checkpoints, tile labels), read without Python or libtorch.
//!
//! Nothing here links libtorch: `cargo tree -p msclam-data` shows no `tch`.

pub mod cohort;
pub mod convert;
pub mod error;
pub mod history;
pub mod layout;
pub mod metrics;
pub mod outputs;
pub mod plots;
pub mod report;
pub mod score;
pub mod split;
pub mod synthetic;
pub mod torch_save;

pub use error::{DataError, Result};

/// Class index of normal slides.
pub const NORMAL: usize = 0;
/// Class index of tumor slides.
pub const TUMOR: usize = 1;
