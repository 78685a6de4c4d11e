//! The data layer's reader of CLAM feature files (HDF5: `features`, `coords`, optional
//! `tile_labels`) through the HDF5 C library. Seeds: valid files written by `data/tests/fuzz_seeds.rs`.
//! Findings inside libhdf5 itself are listed in docs/FUZZING.md.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msclam_data::layout;

fuzz_target!(|data: &[u8]| {
    let path = &msclam_fuzz::scratch_dir().join("features.h5");
    std::fs::write(path, data).expect("scratch file written");
    if let Ok(slide) = layout::read_h5(path, "slide") {
        let (n, d) = (slide.coords.len(), slide.dim);
        assert_eq!(slide.features.len(), n * d, "features match coords");
    }
    let _ = layout::h5_shape(path, "slide");
});
