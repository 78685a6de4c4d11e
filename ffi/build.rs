//! Gives the shared library a versioned SONAME (`libmsclam.so.<major>`), so that programs
//! linked against one ABI version refuse to start with an incompatible one.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmsclam.so.{major}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
