//! The data layer's reader of CLAM feature files (HDF5: `features`, `coords`, optional
//! `tile_labels`) through the HDF5 C library. Seeds: valid files written by `data/tests/fuzz_seeds.rs`.
//! Findings inside libhdf5 itself are reported upstream and listed in docs/FUZZING.md.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use msclam_data::layout;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("msclam-fuzz-{}.h5", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("scratch file written");
    if let Ok(slide) = layout::read_h5(path(), "slide") {
        let (n, d) = (slide.coords.len(), slide.dim);
        assert_eq!(slide.features.len(), n * d, "features match coords");
    }
    let _ = layout::h5_shape(path(), "slide");
});
