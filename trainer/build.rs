//! Links the trainer against libtorch so that it runs without `LD_LIBRARY_PATH`:
//! - an rpath to libtorch's `lib/` directory (the torch wheel in the project's virtual
//!   environment, found through `LIBTORCH`, which `scripts/env.sh` sets);
//! - `libtorch_cuda.so` forced in with `--no-as-needed` when it exists: no symbol of it is
//!   referenced directly, so `--as-needed` would drop it and CUDA would never register.
//!
//! It also compiles `csrc/torch_load.cpp`, which reads tensors written by Python's
//! `torch.save` (CLAM's `pt_files/`) through libtorch (cfg `msclam_torch_load`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/torch_load.cpp");
    println!("cargo::rustc-check-cfg=cfg(msclam_torch_load)");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!(
            "cargo:warning=LIBTORCH is not set: run through scripts/ (they set it) or export it; \
             reading pt_files/ is disabled"
        );
        return;
    };
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // The same flags torch-sys compiles its own libtorch wrapper with.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("csrc/torch_load.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("msclam_torch_load");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=msclam_torch_load");
}
