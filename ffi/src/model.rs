//! Model handles: loading, architecture and metadata queries, freeing.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

use msclam_engine::{AttentionKind, Model as EngineModel, TileClassifierKind};

use crate::boundary::{
    guard, reference, reference_mut, slice_in, slice_out, write_optional, FfiError,
};
use crate::status::Status;
use crate::versioned::{self, versioned};

/// A loaded, validated model (opaque). Immutable: any number of threads may use one model at
/// once. Sessions keep their model alive, so a model may be freed before its sessions.
pub struct Model {
    pub(crate) inner: Arc<EngineModel>,
}

/// Share of out-of-distribution tiles (msclam_session_out_of_distribution()) above which a
/// slide's scores should not be trusted. A float threshold: compare in float, as the library
/// does (`fraction > (float)MSCLAM_OUT_OF_DISTRIBUTION_UNTRUSTED`; in double, exactly 1 tile
/// in 10 would count as above). (Added in 0.1.1.)
pub const MSCLAM_OUT_OF_DISTRIBUTION_UNTRUSTED: f32 = 0.1;
const _: () = assert!(
    MSCLAM_OUT_OF_DISTRIBUTION_UNTRUSTED == msclam_engine::statistics::UNTRUSTED_FRACTION,
    "the C constant is the engine's"
);
/// Values of `msclam_model_info.attention`: plain attention.
pub const MSCLAM_ATTENTION_PLAIN: u32 = 0;
/// Values of `msclam_model_info.attention`: gated attention (CLAM's default).
pub const MSCLAM_ATTENTION_GATED: u32 = 1;
/// Values of `msclam_model_info.weight_dtype`: the large matrices are f32.
pub const MSCLAM_DTYPE_F32: u32 = 0;
/// Values of `msclam_model_info.weight_dtype`: f16 (read as f16 by the kernels: half the bytes
/// per tile).
pub const MSCLAM_DTYPE_F16: u32 = 1;
/// Values of `msclam_model_info.weight_dtype`: bf16 (read as bf16 by the kernels: half the
/// bytes per tile; see `msclam_session_options.bf16_dot`).
pub const MSCLAM_DTYPE_BF16: u32 = 2;
/// Values of `msclam_model_info.weight_dtype`: int8 with a scale per output (a quarter of the
/// bytes; integer kernels over each tile's inputs quantized to 8 bits, identical results on
/// every CPU; fastest with AVX-512 VNNI). (Added in 0.1.1.)
pub const MSCLAM_DTYPE_INT8: u32 = 3;
/// Values of `msclam_model_info.tile_classifier`: one binary tile classifier (MS-CLAM).
pub const MSCLAM_TILE_CLASSIFIER_SINGLE: u32 = 0;
/// Values of `msclam_model_info.tile_classifier`: one binary classifier per class (CLAM).
pub const MSCLAM_TILE_CLASSIFIER_PER_CLASS: u32 = 1;

/// A model's architecture and memory use. Set `struct_size` to `sizeof(msclam_model_info)`
/// (msclam_model_info_init() does) before calling msclam_model_get_info(); the library fills
/// only the fields that fit in `struct_size`, so programs built against an older header keep
/// working with a newer library.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInfo {
    /// Size of this struct as the caller knows it, in bytes.
    pub struct_size: u32,
    /// Tile embedding dimension D: floats per tile in msclam_session_push().
    pub input_dim: u32,
    /// Hidden dimension H.
    pub hidden_dim: u32,
    /// Attention dimension K.
    pub attention_dim: u32,
    /// Number of slide classes C.
    pub num_classes: u32,
    /// Index of the tumor class.
    pub tumor_class: u32,
    /// MSCLAM_ATTENTION_PLAIN or MSCLAM_ATTENTION_GATED.
    pub attention: u32,
    /// MSCLAM_TILE_CLASSIFIER_SINGLE or MSCLAM_TILE_CLASSIFIER_PER_CLASS.
    pub tile_classifier: u32,
    /// Tile probability at or above which a tile is in the tumor mask.
    pub threshold: f32,
    /// Format version of the file, major.
    pub format_version_major: u16,
    /// Format version of the file, minor.
    pub format_version_minor: u16,
    /// Number of metadata entries.
    pub metadata_count: u32,
    /// Element type of the three large matrices: MSCLAM_DTYPE_F32, _F16, _BF16 or _INT8. (This was a
    /// padding field, always 0 = f32, before 0.1.1.)
    pub weight_dtype: u32,
    /// Size of the model file in bytes.
    pub file_bytes: usize,
    /// Bytes of weights used in place from the file's memory (map or caller buffer).
    pub in_place_bytes: usize,
    /// Bytes of weights the library converted into memory it allocated.
    pub converted_bytes: usize,
    /// 1 if the model carries its training embeddings' statistics (format 1.1), so that
    /// sessions report the share of out-of-distribution tiles; 0 otherwise. (Added in 0.1.1.)
    pub has_embedding_statistics: u32,
}
versioned!(ModelInfo {
    struct_size,
    input_dim,
    hidden_dim,
    attention_dim,
    num_classes,
    tumor_class,
    attention,
    tile_classifier,
    threshold,
    format_version_major,
    format_version_minor,
    metadata_count,
    weight_dtype,
    file_bytes,
    in_place_bytes,
    converted_bytes,
    has_embedding_statistics,
});

/// A msclam_model_info with `struct_size` set and every other field zero.
#[no_mangle]
pub extern "C" fn msclam_model_info_init() -> ModelInfo {
    ModelInfo {
        struct_size: std::mem::size_of::<ModelInfo>() as u32,
        input_dim: 0,
        hidden_dim: 0,
        attention_dim: 0,
        num_classes: 0,
        tumor_class: 0,
        attention: 0,
        tile_classifier: 0,
        threshold: 0.0,
        format_version_major: 0,
        format_version_minor: 0,
        metadata_count: 0,
        weight_dtype: MSCLAM_DTYPE_F32,
        file_bytes: 0,
        in_place_bytes: 0,
        converted_bytes: 0,
        has_embedding_statistics: 0,
    }
}

fn publish(model: EngineModel, out_model: &mut *mut Model) {
    *out_model = Box::into_raw(Box::new(Model {
        inner: Arc::new(model),
    }));
}

/// Loads a .mscl model file by memory-mapping it (weights are used in place from the map) and
/// validates it completely (checksum, structure, finite weights).
///
/// `path` is a NUL-terminated file path. On success `*out_model` receives a new model to
/// release with msclam_model_free(); on failure it is left untouched. The file must not be
/// modified while the model is loaded (replace model files by renaming a new file over them).
/// On POSIX systems the path is passed to open() as bytes (any encoding); elsewhere it must be
/// UTF-8 (MSCLAM_STATUS_INVALID_ARGUMENT otherwise): read such files yourself and use
/// msclam_model_load_from_buffer(). Paths that are not regular files (a FIFO, a directory, a
/// device) are refused without being opened for reading.
///
/// # Safety
/// `path` must be a valid NUL-terminated string; `out_model` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_model_load(
    path: *const c_char,
    out_model: *mut *mut Model,
) -> Status {
    guard("msclam_model_load", || {
        if path.is_null() {
            return Err(FfiError::Null("path"));
        }
        // SAFETY: `path` is non-NULL (checked above) and the header requires a NUL-terminated
        // string that stays valid and unchanged for the call.
        let path = unsafe { CStr::from_ptr(path) };
        // SAFETY: reference_mut refuses a NULL `out_model`; otherwise the header requires it to
        // point to writable storage for one pointer, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_model, "out_model") }?;
        publish(EngineModel::load(crate::boundary::c_path(path)?)?, out);
        Ok(())
    })
}

/// Loads a model from `len` bytes at `data`, copying them: the caller may free or reuse its
/// buffer as soon as this returns.
///
/// # Safety
/// `data` must point to `len` readable bytes; `out_model` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_model_load_from_buffer(
    data: *const c_void,
    len: usize,
    out_model: *mut *mut Model,
) -> Status {
    guard("msclam_model_load_from_buffer", || {
        if data.is_null() {
            return Err(FfiError::Null("data"));
        }
        // SAFETY: `data` is non-NULL (checked above) and the header requires it to point to
        // `len` readable bytes, unchanged during the call (the bytes are copied before return).
        let bytes = unsafe { slice_in(data.cast::<u8>(), len, "data") }?;
        // SAFETY: reference_mut refuses a NULL `out_model`; otherwise the header requires it to
        // point to writable storage for one pointer, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_model, "out_model") }?;
        publish(EngineModel::from_bytes(bytes)?, out);
        Ok(())
    })
}

/// Loads a model from `len` bytes at `data` WITHOUT copying them (firmware: a model in flash
/// or a static array). f32 weights are used in place when `data` is 4-byte aligned (otherwise
/// they are copied). The caller must keep the bytes valid and unchanged until the model and
/// every session created from it are freed.
///
/// Heap use (counted by a test that wraps malloc): three allocations when the weights are f32
/// and `data` is 4-byte aligned: the handle (8 bytes), the model's bookkeeping (under 1 KiB)
/// and the metadata index (32 bytes per entry; no allocation for a file without metadata).
/// Weights stored otherwise (f16, bf16, int8, row-major) are converted at load through
/// temporary buffers, and the model keeps at most three more blocks: the converted copies
/// (msclam_model_info.converted_bytes says how large). No allocation after loading;
/// msclam_model_free() releases every block.
///
/// # Safety
/// `data` must point to `len` readable bytes that outlive the model and its sessions;
/// `out_model` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_model_load_from_borrowed_buffer(
    data: *const c_void,
    len: usize,
    out_model: *mut *mut Model,
) -> Status {
    guard("msclam_model_load_from_borrowed_buffer", || {
        if data.is_null() {
            return Err(FfiError::Null("data"));
        }
        // SAFETY: `data` is non-NULL (checked above) and the header requires it to point to
        // `len` readable bytes that stay valid and unchanged until the model and its sessions
        // are freed, which outlives this call.
        let bytes = unsafe { slice_in(data.cast::<u8>(), len, "data") }?;
        // SAFETY: reference_mut refuses a NULL `out_model`; otherwise the header requires it to
        // point to writable storage for one pointer, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_model, "out_model") }?;
        // SAFETY: the caller keeps the bytes alive and unchanged for the model's lifetime.
        let model = unsafe { EngineModel::from_borrowed_bytes(bytes) }?;
        publish(model, out);
        Ok(())
    })
}

/// Releases a model. Sessions created from it stay valid (they keep the model's weights
/// alive until they are freed). NULL is a no-op.
///
/// # Safety
/// `model` must be NULL or a model from msclam_model_load*() not yet freed.
#[no_mangle]
pub unsafe extern "C" fn msclam_model_free(model: *mut Model) {
    let _ = guard("msclam_model_free", || {
        if !model.is_null() {
            // SAFETY: `model` is non-NULL (checked above) and the header requires a model from
            // msclam_model_load*() not yet freed: a Box::into_raw from `publish`, freed once.
            drop(unsafe { Box::from_raw(model) });
        }
        Ok(())
    });
}

/// Fills `*out_info` with the model's architecture: only the fields within
/// `out_info->struct_size`, which must be at least 8 (the two size fields). On return,
/// `struct_size` holds the number of bytes this library filled: the smaller of the caller's
/// `struct_size` and its own `sizeof(msclam_model_info)`, so a program built against a newer
/// header learns which fields an older library left untouched.
///
/// # Safety
/// `model` must be a live model; `out_info` must be valid for reading and writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_model_get_info(
    model: *const Model,
    out_info: *mut ModelInfo,
) -> Status {
    guard("msclam_model_get_info", || {
        // SAFETY: reference refuses a NULL `model`; otherwise the header requires a live model
        // (from msclam_model_load*(), not yet freed), which is immutable.
        let model = unsafe { reference(model, "model") }?;
        // SAFETY: a non-NULL `out_info` points, as the header requires, to a
        // msclam_model_info readable for its `struct_size` bytes (so its first 4 bytes are).
        let size = unsafe {
            versioned::read_struct_size(
                out_info,
                "out_info",
                "out_info->struct_size must be set to sizeof(msclam_model_info)",
            )
        }?;
        let m = &model.inner;
        let c = m.config();
        let memory = m.memory();
        let (major, minor) = m.format_version();
        let info = ModelInfo {
            struct_size: 0, // set by write_fields
            input_dim: c.input_dim as u32,
            hidden_dim: c.hidden_dim as u32,
            attention_dim: c.attention_dim as u32,
            num_classes: c.num_classes as u32,
            tumor_class: c.tumor_class as u32,
            attention: match c.attention {
                AttentionKind::Plain => MSCLAM_ATTENTION_PLAIN,
                AttentionKind::Gated => MSCLAM_ATTENTION_GATED,
            },
            tile_classifier: match c.tile_classifier {
                TileClassifierKind::SingleBinary => MSCLAM_TILE_CLASSIFIER_SINGLE,
                TileClassifierKind::PerClass => MSCLAM_TILE_CLASSIFIER_PER_CLASS,
            },
            threshold: c.threshold,
            format_version_major: major,
            format_version_minor: minor,
            metadata_count: m.metadata().len() as u32,
            weight_dtype: match m.weight_dtype() {
                msclam_engine::format::Dtype::F32 => MSCLAM_DTYPE_F32,
                msclam_engine::format::Dtype::F16 => MSCLAM_DTYPE_F16,
                msclam_engine::format::Dtype::Bf16 => MSCLAM_DTYPE_BF16,
                msclam_engine::format::Dtype::Int8 => MSCLAM_DTYPE_INT8,
            },
            file_bytes: memory.file_bytes,
            in_place_bytes: memory.in_place_bytes,
            converted_bytes: memory.converted_bytes,
            has_embedding_statistics: u32::from(m.embedding_statistics().is_some()),
        };
        // SAFETY: `out_info` is non-NULL (read_struct_size checked it) and the header requires
        // it to be valid for writing its `struct_size` (`size`) bytes.
        unsafe { versioned::write_fields(info, out_info, size) };
        Ok(())
    })
}

/// Copies `text` plus a NUL into `out` (capacity bytes); `*out_len` (may be NULL) receives
/// the text's length without the NUL, also when the buffer is too small.
///
/// # Safety
/// `out_len` must be NULL or valid for writing a `usize` (aligned), and must not point into
/// `out`.
unsafe fn copy_text(
    text: &str,
    out: &mut [u8],
    out_len: *mut usize,
    what: &'static str,
) -> Result<(), FfiError> {
    // SAFETY: `out_len` is NULL or valid for writing a `usize`, and is not part of the borrowed
    // `out`, as this function's caller guarantees.
    unsafe { write_optional(out_len, text.len()) };
    if out.len() < text.len() + 1 {
        return Err(FfiError::TooSmall {
            what,
            needed: text.len() + 1,
            given: out.len(),
        });
    }
    out[..text.len()].copy_from_slice(text.as_bytes());
    out[text.len()] = 0;
    Ok(())
}

/// Copies the metadata value stored under `key` (e.g. "embedder.name", "embedder.dim",
/// "tile.size_px", "tile.magnification", "training.summary", "tool.version") into `out`, NUL
/// terminated. `*out_len` (may be NULL) receives the value's length in bytes without the NUL,
/// also when `capacity` is too small (MSCLAM_STATUS_BUFFER_TOO_SMALL; `out` may be NULL when
/// `capacity` is 0, to ask for the length). MSCLAM_STATUS_NOT_FOUND if there is no such key.
///
/// # Safety
/// `model` live; `key` NUL-terminated; `out` valid for `capacity` bytes; `out_len` NULL or
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_model_metadata_get(
    model: *const Model,
    key: *const c_char,
    out: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
) -> Status {
    guard("msclam_model_metadata_get", || {
        // SAFETY: reference refuses a NULL `model`; otherwise the header requires a live model
        // (from msclam_model_load*(), not yet freed), which is immutable.
        let model = unsafe { reference(model, "model") }?;
        if key.is_null() {
            return Err(FfiError::Null("key"));
        }
        // SAFETY: `key` is non-NULL (checked above) and the header requires a NUL-terminated
        // string that stays valid and unchanged for the call.
        let key = unsafe { CStr::from_ptr(key) }
            .to_str()
            .map_err(|_| FfiError::Invalid("key is not UTF-8"))?;
        // SAFETY: slice_out refuses a NULL `out` unless `capacity` is 0; the header requires it
        // to be writable for `capacity` bytes, and it is taken, as every output buffer the
        // header does not say may alias, not to overlap `key` or anything else in use.
        let out = unsafe { slice_out(out.cast::<u8>(), capacity, "out") }?;
        let value = model
            .inner
            .metadata()
            .get(key)
            .ok_or(FfiError::NotFound("metadata key"))?;
        // SAFETY: the header requires `out_len` to be NULL or valid for writing a size_t; an
        // output it does not say may alias, it is taken not to lie inside the buffer `out`.
        unsafe { copy_text(value, out, out_len, "out") }
    })
}

/// Copies the key of metadata entry `index` (0 to metadata_count - 1, in key order) into
/// `out`, like msclam_model_metadata_get(). MSCLAM_STATUS_NOT_FOUND past the last entry.
///
/// # Safety
/// As msclam_model_metadata_get().
#[no_mangle]
pub unsafe extern "C" fn msclam_model_metadata_key(
    model: *const Model,
    index: usize,
    out: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
) -> Status {
    guard("msclam_model_metadata_key", || {
        // SAFETY: reference refuses a NULL `model`; otherwise the header requires a live model
        // (from msclam_model_load*(), not yet freed), which is immutable.
        let model = unsafe { reference(model, "model") }?;
        // SAFETY: slice_out refuses a NULL `out` unless `capacity` is 0; the header requires it
        // to be writable for `capacity` bytes, and it is taken, as every output buffer the
        // header does not say may alias, not to overlap anything else in use.
        let out = unsafe { slice_out(out.cast::<u8>(), capacity, "out") }?;
        let (key, _) = model
            .inner
            .metadata()
            .entry(index)
            .ok_or(FfiError::NotFound("metadata index"))?;
        // SAFETY: the header requires `out_len` to be NULL or valid for writing a size_t; an
        // output it does not say may alias, it is taken not to lie inside the buffer `out`.
        unsafe { copy_text(key, out, out_len, "out") }
    })
}
