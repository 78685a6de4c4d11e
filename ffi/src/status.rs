//! Status codes, their texts, and the thread-local last-error message.

use std::cell::RefCell;
use std::ffi::c_char;
use std::fmt::Write;

/// What a call did. `MSCLAM_STATUS_OK` is 0; every other value is a failure, with details in
/// msclam_last_error_message(). New codes may be added in minor versions: treat unknown
/// non-zero values as failures.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A pointer that must not be NULL was NULL.
    NullArgument = 1,
    /// An argument is out of range, misaligned or inconsistent (see the message).
    InvalidArgument = 2,
    /// A file could not be opened, read or mapped.
    IoError = 3,
    /// The bytes are not a valid .mscl model (wrong magic, truncated, inconsistent structure).
    InvalidModel = 4,
    /// The model's integrity checksum does not match: the file is corrupted.
    ChecksumMismatch = 5,
    /// The model needs a newer library (format version or element type not supported).
    UnsupportedVersion = 6,
    /// Embedding dimension, embedding count or coordinate count does not match.
    DimensionMismatch = 7,
    /// An embedding contains NaN or infinity; the whole push was rejected.
    NonFiniteInput = 8,
    /// Finite input overflowed the arithmetic; the whole push was rejected.
    NumericalOverflow = 9,
    /// The push would exceed the session's max_tiles; it was rejected.
    CapacityExceeded = 10,
    /// The session has no tiles yet.
    EmptySession = 11,
    /// An output buffer or arena is too small (the required size is reported).
    BufferTooSmall = 12,
    /// A metadata key or index does not exist, or the model has no embedding statistics.
    NotFound = 13,
    /// A bug inside the library was caught at the boundary. Please report it with the message.
    Panic = 14,
    /// This build of the library does not have the feature (e.g. the ONNX tile encoder).
    Unsupported = 15,
}

impl Status {
    fn text(self) -> &'static str {
        match self {
            Status::Ok => "ok\0",
            Status::NullArgument => "null argument\0",
            Status::InvalidArgument => "invalid argument\0",
            Status::IoError => "I/O error\0",
            Status::InvalidModel => "invalid model file\0",
            Status::ChecksumMismatch => "model checksum mismatch (corrupted file)\0",
            Status::UnsupportedVersion => "model needs a newer library\0",
            Status::DimensionMismatch => "dimension mismatch\0",
            Status::NonFiniteInput => "non-finite input (NaN or infinity)\0",
            Status::NumericalOverflow => "numerical overflow\0",
            Status::CapacityExceeded => "session capacity exceeded\0",
            Status::EmptySession => "session holds no tiles\0",
            Status::BufferTooSmall => "buffer too small\0",
            Status::NotFound => "not found\0",
            Status::Panic => "internal error (panic caught at the API boundary)\0",
            Status::Unsupported => "not supported by this build of the library\0",
        }
    }

    const ALL: [Status; 16] = [
        Status::Ok,
        Status::NullArgument,
        Status::InvalidArgument,
        Status::IoError,
        Status::InvalidModel,
        Status::ChecksumMismatch,
        Status::UnsupportedVersion,
        Status::DimensionMismatch,
        Status::NonFiniteInput,
        Status::NumericalOverflow,
        Status::CapacityExceeded,
        Status::EmptySession,
        Status::BufferTooSmall,
        Status::NotFound,
        Status::Panic,
        Status::Unsupported,
    ];
}

/// A short static description of a status code (any integer; unknown codes give
/// "unknown status"). Never NULL; never free it.
#[no_mangle]
pub extern "C" fn msclam_status_string(status: i32) -> *const c_char {
    let text = Status::ALL
        .iter()
        .find(|s| **s as i32 == status)
        .map_or("unknown status\0", |s| s.text());
    text.as_ptr().cast()
}

/// Longest last-error message kept, in bytes (longer ones are cut at a character boundary).
const LAST_ERROR_CAPACITY: usize = 1024;

struct MessageBuffer {
    bytes: [u8; LAST_ERROR_CAPACITY],
    len: usize,
}

impl Write for MessageBuffer {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Keep one byte for the terminating NUL; cut at a character boundary.
        let room = LAST_ERROR_CAPACITY - 1 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

thread_local! {
    // A fixed buffer: recording an error never allocates.
    static LAST_ERROR: RefCell<MessageBuffer> = const {
        RefCell::new(MessageBuffer { bytes: [0; LAST_ERROR_CAPACITY], len: 0 })
    };
}

/// Records `message` as this thread's last error.
pub(crate) fn set_last_error(message: std::fmt::Arguments<'_>) {
    let _ = LAST_ERROR.try_with(|cell| {
        if let Ok(mut buf) = cell.try_borrow_mut() {
            buf.len = 0;
            let _ = buf.write_fmt(message);
            let end = buf.len;
            buf.bytes[end] = 0;
        }
    });
}

/// A description of the most recent failed call on the calling thread ("" if none failed
/// yet). The text stays valid until the next failing msclam call on this thread; copy it to
/// keep it. Never NULL; never free it. Recording it never allocates.
#[no_mangle]
pub extern "C" fn msclam_last_error_message() -> *const c_char {
    static EMPTY: &str = "\0";
    LAST_ERROR
        .try_with(|cell| cell.as_ptr() as *const MessageBuffer)
        // SAFETY: the pointer is to this thread's buffer, alive as long as the thread; the
        // bytes field is always NUL-terminated (zero-initialised, then terminated on write).
        .map(|buf| unsafe { (*buf).bytes.as_ptr() }.cast())
        .unwrap_or(EMPTY.as_ptr().cast())
}
