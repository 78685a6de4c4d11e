//! Whether a cohort fits on the training device, checked before anything is loaded: the bytes
//! its features take (from the files' shapes or the generator's sizes) against the device's
//! free memory.

use tch::Device;

use crate::data::FeaturePrecision;
use crate::error::{Result, TrainError};

/// Bytes the trainer keeps per tile: features, plus coordinates and labels on the host.
pub fn bytes_per_tile(dim: usize, precision: FeaturePrecision) -> usize {
    dim * precision.bytes() + 8 + 1 + 8
}

/// Checks, before anything is loaded, that `tiles` tiles of `dim` features fit in the
/// memory available for them; the error says how much is needed and how to make it fit.
pub fn check_fits(
    tiles: usize,
    dim: usize,
    precision: FeaturePrecision,
    available_bytes: u64,
    where_: &str,
) -> Result<()> {
    let needed = tiles as u64 * bytes_per_tile(dim, precision) as u64;
    // Leave a quarter for the network, activations and the rest of the process.
    let usable = available_bytes / 4 * 3;
    if needed > usable {
        let hint = if precision == FeaturePrecision::F32 {
            " (try --feature-precision f16 to halve it)"
        } else {
            ""
        };
        return Err(TrainError::DoesNotFit {
            needed_gib: needed as f64 / (1u64 << 30) as f64,
            usable_gib: usable as f64 / (1u64 << 30) as f64,
            place: format!("{where_}{hint}"),
        });
    }
    Ok(())
}

/// Refuses, before anything is loaded, a cohort of `tiles` tiles of `dim` features that will
/// not fit on `device` (a warning, and no check, when its free memory cannot be read).
pub fn check_device(
    tiles: usize,
    dim: usize,
    precision: FeaturePrecision,
    device: Device,
) -> Result<()> {
    let place = match device {
        Device::Cuda(i) => format!("GPU {i}"),
        _ => "this machine's memory".to_owned(),
    };
    match device_available_bytes(device) {
        Some(available) => check_fits(tiles, dim, precision, available, &place),
        None => {
            log::warn!("cannot read the free memory of {place}: not checking that the cohort fits");
            Ok(())
        }
    }
}

/// Free memory of the training device: `MemAvailable` for the CPU, `nvidia-smi`'s free memory
/// for a CUDA GPU; `None` if it cannot be read.
pub fn device_available_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(i) => {
            let out = std::process::Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.free",
                    "--format=csv,noheader,nounits",
                    "-i",
                    &i.to_string(),
                ])
                .output()
                .ok()?;
            let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some(mib << 20)
        }
        _ => host_available_bytes(),
    }
}

/// Memory available to this process on the host (Linux `MemAvailable`), if readable.
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
