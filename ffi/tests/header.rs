//! The checked-in `include/msclam.h` must be exactly what cbindgen generates from this crate:
//! the header and the library's exports cannot drift apart.
//!
//! After changing the C API, regenerate with `MSCLAM_BLESS=1 cargo test -p msclam-ffi --test header`.

use std::path::Path;

#[test]
fn checked_in_header_matches_a_fresh_generation() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let header_path = crate_dir.join("../include/msclam.h");
    if std::env::var_os("MSCLAM_BLESS").is_some() {
        std::fs::write(&header_path, &fresh).expect("header written");
        return;
    }
    let checked_in = std::fs::read(&header_path).unwrap_or_default();
    if checked_in != fresh {
        let fresh = String::from_utf8_lossy(&fresh);
        let old = String::from_utf8_lossy(&checked_in);
        let first_difference = fresh
            .lines()
            .zip(old.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}: generated `{a}`, checked in `{b}`", i + 1))
            .unwrap_or_else(|| "one is a prefix of the other".into());
        panic!(
            "include/msclam.h is out of date ({first_difference}). \
             Regenerate: MSCLAM_BLESS=1 cargo test -p msclam-ffi --test header"
        );
    }
}
