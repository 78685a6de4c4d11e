//! Raw bytes into the `.mscl` loader (from bytes, and from a borrowed buffer); an accepted
//! model then scores a few tiles. Seeds: valid files of every dtype, written by `data/tests/fuzz_seeds.rs`.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use msclam_engine::Model;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Model::from_bytes(data) else {
        return;
    };
    // SAFETY: `data` outlives the borrowed model, which is dropped at the end of this block.
    let borrowed = unsafe { Model::from_borrowed_bytes(data) }.expect("same bytes, same answer");
    assert_eq!(borrowed.config(), model.config());
    drop(borrowed);
    msclam_fuzz::score_a_few_tiles(Arc::new(model));
});
