//! The panic and error boundary every entry point goes through, and checked conversions of C
//! pointers into Rust references and slices.

use std::panic::{catch_unwind, AssertUnwindSafe};

use msclam_engine::Error as EngineError;

use crate::status::{set_last_error, Status};

/// Why a call failed. Carries only borrowed or plain data: making one never allocates.
#[derive(Debug)]
pub(crate) enum FfiError {
    /// An error from the engine.
    Engine(EngineError),
    /// A required pointer argument (named) was NULL.
    Null(&'static str),
    /// An argument was invalid (fixed explanation).
    Invalid(&'static str),
    /// An output buffer (named) holds `given` elements but `needed` are required.
    TooSmall {
        what: &'static str,
        needed: usize,
        given: usize,
    },
    /// A metadata key or index was not found.
    NotFound(&'static str),
    /// The caller's embedding dimension differs from the model's.
    Dimension { given: usize, expected: usize },
    /// The feature is not in this build (fixed explanation).
    #[cfg_attr(feature = "onnx", allow(dead_code))]
    Unsupported(&'static str),
    /// An error of the ONNX tile encoder, with its status. Unlike the others it holds an
    /// owned message: the encoder's paths allocate anyway.
    #[cfg_attr(not(feature = "onnx"), allow(dead_code))]
    Message(Status, String),
}

impl From<EngineError> for FfiError {
    fn from(e: EngineError) -> Self {
        FfiError::Engine(e)
    }
}

impl FfiError {
    fn status(&self) -> Status {
        match self {
            FfiError::Null(_) => Status::NullArgument,
            FfiError::Invalid(_) => Status::InvalidArgument,
            FfiError::TooSmall { .. } => Status::BufferTooSmall,
            FfiError::NotFound(_) => Status::NotFound,
            FfiError::Dimension { .. } => Status::DimensionMismatch,
            FfiError::Unsupported(_) => Status::Unsupported,
            FfiError::Message(status, _) => *status,
            FfiError::Engine(e) => match e {
                EngineError::Io { .. } => Status::IoError,
                EngineError::Truncated { .. }
                | EngineError::TrailingBytes { .. }
                | EngineError::BadMagic { .. }
                | EngineError::InvalidModel { .. } => Status::InvalidModel,
                EngineError::ChecksumMismatch { .. } => Status::ChecksumMismatch,
                EngineError::UnsupportedVersion { .. } | EngineError::UnsupportedDtype { .. } => {
                    Status::UnsupportedVersion
                }
                EngineError::EmbeddingLength { .. } | EngineError::CoordinateCount { .. } => {
                    Status::DimensionMismatch
                }
                EngineError::NonFiniteInput { .. } => Status::NonFiniteInput,
                EngineError::NumericalOverflow { .. } => Status::NumericalOverflow,
                EngineError::CapacityExceeded { .. } => Status::CapacityExceeded,
                EngineError::EmptySession => Status::EmptySession,
                EngineError::BufferTooSmall { .. } => Status::BufferTooSmall,
                _ => Status::InvalidArgument,
            },
        }
    }
}

/// Runs an entry point's body: `Ok` gives [`Status::Ok`]; an error records its message and
/// gives its status; a panic is caught, recorded and gives [`Status::Panic`].
pub(crate) fn guard(function: &'static str, body: impl FnOnce() -> Result<(), FfiError>) -> Status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(error)) => {
            let status = error.status();
            match &error {
                FfiError::Engine(e) => set_last_error(format_args!("{function}: {e}")),
                FfiError::Null(arg) => set_last_error(format_args!("{function}: argument `{arg}` must not be NULL")),
                FfiError::Invalid(why) => set_last_error(format_args!("{function}: {why}")),
                FfiError::TooSmall { what, needed, given } => set_last_error(format_args!(
                    "{function}: `{what}` has room for {given}, {needed} needed"
                )),
                FfiError::NotFound(what) => set_last_error(format_args!("{function}: {what} not found")),
                FfiError::Dimension { given, expected } => set_last_error(format_args!(
                    "{function}: embeddings have {given} features per tile, the model expects {expected}"
                )),
                FfiError::Unsupported(why) => set_last_error(format_args!("{function}: {why}")),
                FfiError::Message(_, message) => set_last_error(format_args!("{function}: {message}")),
            }
            log::debug!("{function} failed with {status:?}");
            status
        }
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            set_last_error(format_args!("{function}: internal panic: {text}"));
            Status::Panic
        }
    }
}

/// `&T` from a pointer that must not be NULL.
///
/// # Safety
/// A non-NULL `ptr` must point to a valid `T` that outlives `'a` and is not mutated meanwhile.
pub(crate) unsafe fn reference<'a, T>(
    ptr: *const T,
    name: &'static str,
) -> Result<&'a T, FfiError> {
    // SAFETY: non-NULL pointers are valid per this function's contract.
    unsafe { ptr.as_ref() }.ok_or(FfiError::Null(name))
}

/// `&mut T` from a pointer that must not be NULL.
///
/// # Safety
/// A non-NULL `ptr` must point to a valid `T` that outlives `'a`, used by no one else meanwhile.
pub(crate) unsafe fn reference_mut<'a, T>(
    ptr: *mut T,
    name: &'static str,
) -> Result<&'a mut T, FfiError> {
    // SAFETY: non-NULL pointers are valid and exclusive per this function's contract.
    unsafe { ptr.as_mut() }.ok_or(FfiError::Null(name))
}

/// The checks every non-empty caller buffer passes before a slice is made of it: not NULL,
/// aligned for `T`, and `len` elements fit in the address space.
fn check_buffer<T>(ptr: *const T, len: usize, name: &'static str) -> Result<(), FfiError> {
    if ptr.is_null() {
        return Err(FfiError::Null(name));
    }
    if !ptr.is_aligned() {
        return Err(FfiError::Invalid(
            "a buffer is not aligned for its element type",
        ));
    }
    if len
        .checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(FfiError::Invalid(
            "a buffer length overflows the address space",
        ));
    }
    Ok(())
}

/// A slice of `len` elements at `ptr`; `ptr` may be NULL only when `len` is 0.
///
/// # Safety
/// A non-NULL `ptr` must point to `len` readable elements that outlive `'a`.
pub(crate) unsafe fn slice_in<'a, T>(
    ptr: *const T,
    len: usize,
    name: &'static str,
) -> Result<&'a [T], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    check_buffer(ptr, len, name)?;
    // SAFETY: `ptr` is non-NULL and aligned, and `len` elements fit in `isize::MAX` bytes
    // (check_buffer above); this function's caller guarantees that it points to `len` readable
    // elements that outlive `'a`.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A mutable slice of `len` elements at `ptr`; `ptr` may be NULL only when `len` is 0.
///
/// # Safety
/// A non-NULL `ptr` must point to `len` writable elements that outlive `'a`, used by no one
/// else meanwhile.
pub(crate) unsafe fn slice_out<'a, T>(
    ptr: *mut T,
    len: usize,
    name: &'static str,
) -> Result<&'a mut [T], FfiError> {
    if len == 0 {
        return Ok(&mut []);
    }
    check_buffer(ptr.cast_const(), len, name)?;
    // SAFETY: `ptr` is non-NULL and aligned, and `len` elements fit in `isize::MAX` bytes
    // (check_buffer above); this function's caller guarantees that it points to `len` writable
    // elements that outlive `'a` and that nothing else uses meanwhile.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A C path as a file system path. POSIX paths are bytes: any name that open() takes is
/// accepted, UTF-8 or not; elsewhere the path must be UTF-8.
pub(crate) fn c_path(path: &std::ffi::CStr) -> Result<&std::path::Path, FfiError> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::path::Path::new(std::ffi::OsStr::from_bytes(
            path.to_bytes(),
        )))
    }
    #[cfg(not(unix))]
    {
        path.to_str()
            .map(std::path::Path::new)
            .map_err(|_| FfiError::Invalid("path is not valid UTF-8"))
    }
}

/// Writes `value` through an optional output pointer (NULL means "not wanted").
///
/// # Safety
/// A non-NULL `ptr` must be valid for writing a `T`.
pub(crate) unsafe fn write_optional<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: valid for writes per this function's contract.
        unsafe { ptr.write(value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last_error() -> String {
        // SAFETY: msclam_last_error_message returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(crate::msclam_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn panics_become_a_status_and_a_message() {
        let status = guard("test_fn", || panic!("boom {}", 42));
        assert_eq!(status, Status::Panic);
        assert_eq!(last_error(), "test_fn: internal panic: boom 42");
        let status = guard("test_fn", || panic!("static"));
        assert_eq!(status, Status::Panic);
        assert!(last_error().ends_with("static"));
    }

    #[test]
    fn errors_map_to_statuses_with_messages() {
        assert_eq!(
            guard("f", || Err(FfiError::Null("model"))),
            Status::NullArgument
        );
        assert_eq!(last_error(), "f: argument `model` must not be NULL");
        assert_eq!(
            guard("f", || Err(EngineError::EmptySession.into())),
            Status::EmptySession
        );
        assert!(last_error().contains("holds no tiles"));
        assert_eq!(guard("f", || Ok(())), Status::Ok);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(2000);
        set_last_error(format_args!("{long}"));
        let msg = last_error();
        assert!(msg.len() <= 1023 && msg.chars().all(|c| c == 'é'));
    }
}
