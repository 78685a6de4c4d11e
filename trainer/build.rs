//! Links the trainer against libtorch so that it runs without `LD_LIBRARY_PATH`:
//! - an rpath to libtorch's `lib/` directory (the torch wheel in the project's virtual
//!   environment, found through `LIBTORCH`, which `scripts/env.sh` sets);
//! - `libtorch_cuda.so` forced in with `--no-as-needed` when it exists: no symbol of it is
//!   referenced directly, so `--as-needed` would drop it and CUDA would never register.
//!
//! `torch.save` files (CLAM's `pt_files/`) are read by `msclam_data::torch_save` in Rust.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!(
            "cargo:warning=LIBTORCH is not set: run through scripts/ (they set it) or export it"
        );
        return;
    };
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
