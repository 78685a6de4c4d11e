//! What `msclam score` writes: per slide an HDF5 file of scores ([`h5`]), the tumor mask as
//! GeoJSON ([`geojson`]) and a picture ([`heatmap`]); per run the table of slides, the
//! failures and the metrics ([`tables`]). Every file is written to a temporary name beside its
//! destination and renamed, so a reader (or a resumed run) never sees half a file.

pub mod geojson;
pub mod h5;
pub mod heatmap;
pub mod tables;

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// A temporary file name beside `path`, unique to this process and thread.
pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    PathBuf::from(name)
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, renamed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}
