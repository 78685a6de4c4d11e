//! # msclam-trainer
//!
//! Trains MS-CLAM (mixed supervision: slide labels for every slide, tile labels for some) and
//! the CLAM-SB baseline with libtorch through `tch`, on a CUDA GPU when present and the CPU
//! otherwise, evaluates with the paper's metrics and exports `.mscl` models for the engine.
//!
//! Modules: [`data`] (cohorts in memory), [`model`] (the network), [`losses`], [`samplers`]
//! (slides per step, tiles per slide), [`training`] (the loop, Adam, early stopping),
//! [`checkpoint`], [`metrics`], [`export`], [`synthetic`] (generated cohorts), [`cohort`]
//! (reading cohorts in the CLAM layout), [`torch_file`] (CLAM's `pt_files/`).

#![deny(missing_docs)]

pub mod checkpoint;
pub mod cohort;
pub mod config;
pub mod data;
mod error;
pub mod export;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod plots;
pub mod report;
pub mod samplers;
pub mod synthetic;
pub mod torch_file;
pub mod training;

pub use error::{Result, TrainError};

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
