//! The C ABI of msclam (`libmsclam.so`, `libmsclam.a`, `include/msclam.h`).
//!
//! Design, after rustls-ffi: opaque handles, status codes, a panic boundary on every entry
//! point, a header generated from this crate and checked in. Sessions can live in a
//! caller-provided arena, after TensorFlow Lite Micro, for firmware without a heap to spare.
//!
//! Every `extern "C"` function here runs its body through [`boundary::guard`], which turns
//! errors into a [`Status`] plus a thread-local message, and panics into
//! [`Status::Panic`]; no unwinding crosses into C.

#![deny(missing_docs)]
// The C names are the API: `msclam_model`, not `MsclamModel`.
#![allow(non_camel_case_types)]

mod boundary;
mod encoder;
mod model;
mod session;
mod status;
mod versioned;

pub use encoder::*;
pub use model::*;
pub use session::*;
pub use status::*;

/// Major version of the library (incompatible ABI changes).
pub const MSCLAM_VERSION_MAJOR: u32 = 0;
/// Minor version of the library (compatible additions).
pub const MSCLAM_VERSION_MINOR: u32 = 1;
/// Patch version of the library.
pub const MSCLAM_VERSION_PATCH: u32 = 0;
/// `MAJOR * 1000000 + MINOR * 1000 + PATCH`, for compile-time checks.
pub const MSCLAM_VERSION: u32 = 1000;

/// The library's version as `MAJOR * 1000000 + MINOR * 1000 + PATCH`: compare with
/// `MSCLAM_VERSION` to detect a header / library mismatch at run time.
#[no_mangle]
pub extern "C" fn msclam_version() -> u32 {
    MSCLAM_VERSION_MAJOR * 1_000_000 + MSCLAM_VERSION_MINOR * 1000 + MSCLAM_VERSION_PATCH
}

/// The library's version as a static string, e.g. "0.1.0". Never NULL; never free it.
#[no_mangle]
pub extern "C" fn msclam_version_string() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_constants_match_the_package_version() {
        let parse = |s: &str| s.parse::<u32>().unwrap();
        assert_eq!(MSCLAM_VERSION_MAJOR, parse(env!("CARGO_PKG_VERSION_MAJOR")));
        assert_eq!(MSCLAM_VERSION_MINOR, parse(env!("CARGO_PKG_VERSION_MINOR")));
        assert_eq!(MSCLAM_VERSION_PATCH, parse(env!("CARGO_PKG_VERSION_PATCH")));
        assert_eq!(msclam_version(), MSCLAM_VERSION);
        // SAFETY: msclam_version_string returns a static NUL-terminated string.
        let s = unsafe { std::ffi::CStr::from_ptr(msclam_version_string()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
