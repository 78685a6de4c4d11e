//! The data layer's readers of CLAM-layout text and array files: dataset CSV, split CSV,
//! exclusion CSV, and tile labels as pickle, `.npy` and text. Each input is written to a file
//! (the readers take paths, as the CLI does) and read; any error is fine, a panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msclam_data::layout;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, content)) = data.split_first() else {
        return;
    };
    let name = [
        "dataset.csv",
        "splits.csv",
        "exclude.csv",
        "l.pkl",
        "l.npy",
        "l.txt",
        "l.csv",
    ][choice as usize % 7];
    let path = msclam_fuzz::scratch_dir().join(name);
    std::fs::write(&path, content).expect("scratch file written");
    let labels = [("normal".to_owned(), 0), ("tumor".to_owned(), 1)];
    match choice % 7 {
        0 => {
            let _ = layout::read_dataset_csv(&path, &labels);
        }
        1 => {
            let _ = layout::read_split_csv(&path);
        }
        2 => {
            let _ = layout::read_exclusions(&path);
        }
        _ => {
            let tiles = choice as usize / 7;
            if let Ok(l) = layout::read_tile_label_file(&path, "slide", tiles) {
                assert_eq!(l.len(), tiles, "one label per tile");
            }
        }
    }
});
