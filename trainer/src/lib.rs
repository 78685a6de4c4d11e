//! # msclam-trainer
//!
//! Trains MS-CLAM (mixed supervision: slide labels for every slide, tile labels for some) and
//! the CLAM-SB baseline with libtorch through `tch`, on a CUDA GPU when present and the CPU
//! otherwise, evaluates with the paper's metrics and exports `.mscl` models for the engine.
//!
//! Modules:
//! - [`data`]: cohorts on the training device (the host cohorts of `msclam_data::cohort`
//!   with their features moved there); [`memory`]: whether a cohort fits there;
//! - [`model`] (the network), [`losses`], [`samplers`] (slides per step, tiles per slide),
//!   [`optimizer`] (Adam), [`training`] (the loop, validation, early stopping, evaluation),
//!   [`checkpoint`] (a run's state, for exact resumption), [`config`];
//! - [`export`]: `.mscl` models from a trained network or a checkpoint;
//! - [`experiment`]: one fold's run (load, train, evaluate, write), and the commands built on
//!   it: train, the demo, the ablation grid and its summary, merging folds.
//!
//! What needs no libtorch (the CLAM-layout readers and writers, `pt_files/` included, the
//! host cohorts and their split, the metrics, the reports, the synthetic cohorts) lives in the
//! `msclam-data` crate, shared with the torch-free `msclam` command; some of it is re-exported
//! here. The `cli` feature (on by default) builds the `msclam-train` command and derives the
//! command-line parsing of the library's enums.

#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod experiment;
pub mod export;
pub mod losses;
pub mod memory;
pub mod model;
pub mod optimizer;
pub mod samplers;
pub mod training;

pub use error::{Result, TrainError};
/// A training run's history (from the torch-free data layer, `msclam-data`).
pub use msclam_data::history;
/// The CLAM layout on disk, read and written (from `msclam-data`).
pub use msclam_data::layout;
/// The paper's metrics (from the torch-free data layer, `msclam-data`).
pub use msclam_data::metrics;
/// ROC and training curves (from `msclam-data`).
pub use msclam_data::plots;
/// An evaluation written out (from `msclam-data`).
pub use msclam_data::report;
/// Generated cohorts (from the torch-free data layer, `msclam-data`).
pub use msclam_data::synthetic;

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DeviceChoice {
    /// The first CUDA GPU if one is usable, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (an error if none is usable).
    Cuda,
}

/// Resolves a device choice, checking that CUDA is really usable when asked for.
pub fn select_device(choice: DeviceChoice) -> Result<tch::Device> {
    match choice {
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        DeviceChoice::Cuda => Err(TrainError::Config(
            "--device cuda: no usable CUDA GPU (tch::Cuda::is_available() is false)".into(),
        )),
    }
}
