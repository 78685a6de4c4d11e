//! RGB tiles in: an ONNX tile encoder run by tract-onnx (`msclam_encoder`), whose embeddings
//! are pushed into a session. Built with the cargo feature `onnx`; without it the functions
//! exist (the ABI does not depend on the build) and answer MSCLAM_STATUS_UNSUPPORTED.

use std::ffi::{c_char, CStr};

use crate::boundary::{guard, reference_mut, slice_in, slice_out, write_optional, FfiError};
use crate::session::Session;
use crate::status::Status;
use crate::versioned::{read_fields, read_struct_size, versioned};

/// `msclam_encoder_options.channel_order`: the encoder expects red, green, blue (PyTorch).
pub const MSCLAM_CHANNELS_RGB: u32 = 0;
/// `msclam_encoder_options.channel_order`: the encoder expects blue, green, red (OpenCV).
pub const MSCLAM_CHANNELS_BGR: u32 = 1;

/// How tiles are prepared for a tile encoder. Start from msclam_encoder_options_default()
/// (224-pixel tiles, ImageNet mean and std, RGB, batches of 16) and change what differs.
/// `struct_size` works as in msclam_session_options.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderOptions {
    /// `sizeof(msclam_encoder_options)`.
    pub struct_size: u32,
    /// Side of a tile in pixels, and of the encoder's square input (1 to 4096).
    pub tile_size: u32,
    /// Per-channel mean subtracted from the pixel values scaled to [0, 1], in the encoder's
    /// channel order.
    pub mean: [f32; 3],
    /// Per-channel standard deviation the values are divided by (positive), in the encoder's
    /// channel order.
    pub std: [f32; 3],
    /// MSCLAM_CHANNELS_RGB or MSCLAM_CHANNELS_BGR: the order the encoder's input expects
    /// (tiles are always given as interleaved RGB).
    pub channel_order: u32,
    /// Tiles per run of the encoder (1 to 1024); the encoder is optimised for this batch.
    pub batch: u32,
}

versioned!(EncoderOptions {
    struct_size,
    tile_size,
    mean,
    std,
    channel_order,
    batch
});

/// The default encoder options, with `struct_size` set.
#[no_mangle]
pub extern "C" fn msclam_encoder_options_default() -> EncoderOptions {
    EncoderOptions {
        struct_size: std::mem::size_of::<EncoderOptions>() as u32,
        tile_size: 224,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        channel_order: MSCLAM_CHANNELS_RGB,
        batch: 16,
    }
}

/// A loaded tile encoder (opaque). One thread at a time; it is not tied to a session or
/// model, but can only push into sessions of models it fits.
pub struct Encoder {
    #[cfg(feature = "onnx")]
    inner: msclam_onnx::TileEncoder,
    #[cfg(feature = "onnx")]
    embeddings: Vec<f32>,
    #[cfg(not(feature = "onnx"))]
    _never: std::convert::Infallible,
}

/// What a library built without the `onnx` feature answers.
const UNSUPPORTED: FfiError = FfiError::Unsupported(
    "this libmsclam was built without the ONNX tile encoder (cargo feature `onnx`)",
);

#[cfg(feature = "onnx")]
fn onnx_error(e: msclam_onnx::OnnxError) -> FfiError {
    use msclam_onnx::OnnxError as E;
    let status = match &e {
        E::Load { .. } => Status::InvalidModel,
        E::Dimension { .. } => Status::DimensionMismatch,
        E::Mismatch(_) | E::InvalidArgument(_) | E::Run(_) => Status::InvalidArgument,
        E::Engine(_) => match e {
            E::Engine(inner) => return FfiError::Engine(inner),
            _ => Status::InvalidArgument,
        },
    };
    FfiError::Message(status, e.to_string())
}

/// Loads an ONNX tile encoder (NCHW float32 input `[batch, 3, tile_size, tile_size]`, output
/// `[batch, D]` or `[batch, D, 1, 1]`) and prepares it with tract-onnx for `options` (NULL:
/// the defaults). `name` (may be NULL) is the embedder's name: pushes into a session whose
/// model names another embedder (`embedder.name`) are refused. On success `*out_encoder`
/// receives an encoder to release with msclam_encoder_free().
///
/// MSCLAM_STATUS_UNSUPPORTED, before any other check, when the library was built without
/// the `onnx` feature; MSCLAM_STATUS_IO_ERROR for a file that cannot be read,
/// MSCLAM_STATUS_INVALID_MODEL for a file tract cannot load or prepare,
/// MSCLAM_STATUS_INVALID_ARGUMENT for options out of range (tile_size 1 to 4096, batch 1 to
/// 1024, batch x 3 x tile_size^2 at most 2^28). Allocates (tract). A model whose
/// `embedder.name` is "unknown" (msclam convert's default) is not checked by name.
///
/// # Safety
/// `path` must be a NUL-terminated string; `name` NULL or NUL-terminated; `options` NULL or
/// valid for reading `options->struct_size` bytes; `out_encoder` valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn msclam_encoder_load(
    path: *const c_char,
    name: *const c_char,
    options: *const EncoderOptions,
    out_encoder: *mut *mut Encoder,
) -> Status {
    guard("msclam_encoder_load", || {
        if cfg!(not(feature = "onnx")) {
            return Err(UNSUPPORTED);
        }
        if path.is_null() {
            return Err(FfiError::Null("path"));
        }
        // SAFETY: `path` is non-NULL (checked above) and the header requires a NUL-terminated
        // string that stays valid and unchanged for the call.
        let path = unsafe { CStr::from_ptr(path) };
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: `name` is non-NULL here and the header requires a NUL-terminated string
            // that stays valid and unchanged for the call.
            let name = unsafe { CStr::from_ptr(name) };
            Some(
                name.to_str()
                    .map_err(|_| FfiError::Invalid("name is not valid UTF-8"))?
                    .to_owned(),
            )
        };
        let defaults = msclam_encoder_options_default();
        let options = if options.is_null() {
            defaults
        } else {
            // SAFETY: `options` is non-NULL here and the header requires it to be readable for
            // its first 4 bytes (struct_size) and then for `struct_size` bytes.
            let size = unsafe {
                read_struct_size(
                    options,
                    "options",
                    "options->struct_size must be set to sizeof(msclam_encoder_options)",
                )
            }?;
            // SAFETY: the caller's struct is readable for `size` bytes (see above) and cannot
            // overlap the local `defaults`.
            unsafe { read_fields(options, size, defaults) }
        };
        if options.channel_order > MSCLAM_CHANNELS_BGR {
            return Err(FfiError::Invalid(
                "options->channel_order must be MSCLAM_CHANNELS_RGB or MSCLAM_CHANNELS_BGR",
            ));
        }
        // SAFETY: reference_mut refuses a NULL `out_encoder`; otherwise the header requires it
        // to point to writable storage for one pointer, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_encoder, "out_encoder") }?;
        load(path, name, options, out)
    })
}

#[cfg(feature = "onnx")]
fn load(
    path: &CStr,
    name: Option<String>,
    options: EncoderOptions,
    out: &mut *mut Encoder,
) -> Result<(), FfiError> {
    let path = crate::boundary::c_path(path)?;
    let bytes = std::fs::read(path)
        .map_err(|e| FfiError::Message(Status::IoError, format!("{}: {e}", path.display())))?;
    let options = msclam_onnx::EncoderOptions {
        tile_size: options.tile_size as usize,
        mean: options.mean,
        std: options.std,
        channel_order: if options.channel_order == MSCLAM_CHANNELS_BGR {
            msclam_onnx::ChannelOrder::Bgr
        } else {
            msclam_onnx::ChannelOrder::Rgb
        },
        batch: options.batch as usize,
        name,
    };
    let inner = msclam_onnx::TileEncoder::from_bytes(&bytes, &path.display().to_string(), options)
        .map_err(onnx_error)?;
    *out = Box::into_raw(Box::new(Encoder {
        inner,
        embeddings: Vec::new(),
    }));
    Ok(())
}

#[cfg(not(feature = "onnx"))]
fn load(
    _: &CStr,
    _: Option<String>,
    _: EncoderOptions,
    _: &mut *mut Encoder,
) -> Result<(), FfiError> {
    Err(UNSUPPORTED)
}

/// Releases an encoder (NULL is ignored).
///
/// # Safety
/// `encoder` must be NULL or from msclam_encoder_load(), not yet freed.
#[no_mangle]
pub unsafe extern "C" fn msclam_encoder_free(encoder: *mut Encoder) {
    guard("msclam_encoder_free", || {
        if !encoder.is_null() {
            // SAFETY: a non-NULL `encoder` was created by Box::into_raw in msclam_encoder_load
            // and the header requires that it is freed once.
            drop(unsafe { Box::from_raw(encoder) });
        }
        Ok(())
    });
}

/// Dimension D of the embeddings the encoder gives (0 for NULL).
///
/// # Safety
/// `encoder` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn msclam_encoder_embedding_dim(encoder: *const Encoder) -> usize {
    // SAFETY: the header requires `encoder` to be NULL (as_ref gives None) or a live encoder
    // used by one thread at a time.
    let encoder = unsafe { encoder.as_ref() };
    #[cfg(feature = "onnx")]
    return encoder.map_or(0, |e| e.inner.output_dim());
    #[cfg(not(feature = "onnx"))]
    return encoder.map_or(0, |e| match e._never {});
}

/// Encodes `n_tiles` RGB tiles with `encoder` and pushes their embeddings into `session`,
/// as msclam_session_push() does with embeddings.
///
/// - `rgb`: `n_tiles * tile_size * tile_size * 3` bytes, tile after tile, each row-major
///   with interleaved R, G, B bytes. May be NULL only if `n_tiles` is 0.
/// - `coords`, `out_tile_probabilities`, `out_slide_tumor_probability`: as in
///   msclam_session_push().
///
/// The encoder must fit the session's model: the same embedding dimension (else
/// MSCLAM_STATUS_DIMENSION_MISMATCH) and, when both are named, the same embedder (else
/// MSCLAM_STATUS_INVALID_ARGUMENT). Errors leave the session as it was. Unlike
/// msclam_session_push(), this allocates (tract, and the encoder's embedding buffer).
/// MSCLAM_STATUS_UNSUPPORTED, before any other check, in a library built without the `onnx`
/// feature. The encoding runs outside the session: a failure inside the encoder leaves the
/// session usable.
///
/// # Safety
/// Every non-NULL pointer must be valid for the sizes above; `session` and `encoder` live and
/// not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_push_rgb(
    session: *mut Session,
    encoder: *mut Encoder,
    rgb: *const u8,
    n_tiles: usize,
    coords: *const u32,
    out_tile_probabilities: *mut f32,
    out_slide_tumor_probability: *mut f32,
) -> Status {
    guard("msclam_session_push_rgb", || {
        if cfg!(not(feature = "onnx")) {
            return Err(UNSUPPORTED);
        }
        // SAFETY: reference_mut refuses a NULL `session`; otherwise the header requires a live
        // session that no other thread uses during the call.
        let session = unsafe { reference_mut(session, "session") }?;
        // SAFETY: as for `session`, for a live encoder.
        let encoder = unsafe { reference_mut(encoder, "encoder") }?;
        for ptr in [out_tile_probabilities, out_slide_tumor_probability] {
            if !ptr.is_null() && !ptr.is_aligned() {
                return Err(FfiError::Invalid(
                    "an output buffer is not aligned for float",
                ));
            }
        }
        let tile_bytes = encoder_tile_bytes(encoder);
        let bytes = n_tiles
            .checked_mul(tile_bytes)
            .ok_or(FfiError::Invalid("n_tiles * tile bytes overflows"))?;
        // SAFETY: slice_in refuses a NULL `rgb` unless `bytes` is 0; the header requires a
        // non-NULL one to hold `n_tiles` whole tiles (`bytes`) of readable bytes, unchanged
        // during the call.
        let rgb = unsafe { slice_in(rgb, bytes, "rgb") }?;
        let coords: Option<&[[u32; 2]]> = if coords.is_null() {
            None
        } else {
            // SAFETY: `coords` is non-NULL here and the header requires it to hold
            // `2 * n_tiles` readable uint32_t, unchanged during the call: `n_tiles` pairs
            // ([u32; 2] has u32's alignment, which slice_in checks, and no padding).
            Some(unsafe { slice_in(coords.cast::<[u32; 2]>(), n_tiles, "coords") }?)
        };
        let (first, slide_probability) = push(session, encoder, rgb, coords)?;
        if slide_probability.is_none() && !out_slide_tumor_probability.is_null() {
            return Err(msclam_engine::Error::EmptySession.into());
        }
        if !out_tile_probabilities.is_null() {
            // SAFETY: non-NULL and aligned (checked above); the header requires room for
            // `n_tiles` floats, used by nothing else during the call.
            let out =
                unsafe { slice_out(out_tile_probabilities, n_tiles, "out_tile_probabilities") }?;
            out.copy_from_slice(&session.inner.tile_probabilities()[first..first + n_tiles]);
        }
        if let Some(p) = slide_probability {
            // SAFETY: `out_slide_tumor_probability` is NULL or aligned (checked above), and
            // the header requires a non-NULL one to be writable for one float.
            unsafe { write_optional(out_slide_tumor_probability, p) };
        }
        Ok(())
    })
}

#[cfg(feature = "onnx")]
fn encoder_tile_bytes(encoder: &Encoder) -> usize {
    encoder.inner.tile_bytes()
}

#[cfg(not(feature = "onnx"))]
fn encoder_tile_bytes(encoder: &Encoder) -> usize {
    match encoder._never {}
}

/// The push itself: (index of the strip's first tile, the slide's tumor probability).
#[cfg(feature = "onnx")]
fn push(
    session: &mut Session,
    encoder: &mut Encoder,
    rgb: &[u8],
    coords: Option<&[[u32; 2]]>,
) -> Result<(usize, Option<f32>), FfiError> {
    let Encoder { inner, embeddings } = encoder;
    // Encoded outside the session: tract's run builds its state afresh each time, so a panic
    // in it leaves neither the encoder nor the session inconsistent.
    inner
        .encode_for(session.inner.model(), rgb, coords, embeddings)
        .map_err(onnx_error)?;
    let pushed = session.mutate(|s| s.push(embeddings, coords))??;
    Ok((pushed.first_tile, pushed.slide_tumor_probability))
}

#[cfg(not(feature = "onnx"))]
fn push(
    _: &mut Session,
    encoder: &mut Encoder,
    _: &[u8],
    _: Option<&[[u32; 2]]>,
) -> Result<(usize, Option<f32>), FfiError> {
    match encoder._never {}
}

#[cfg(all(test, not(feature = "onnx")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_loading_says_unsupported() {
        let mut encoder: *mut Encoder = std::ptr::null_mut();
        // SAFETY: a static NUL-terminated path, NULL name and options, a local out pointer.
        let status = unsafe {
            msclam_encoder_load(
                c"x.onnx".as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                &mut encoder,
            )
        };
        assert_eq!(status, Status::Unsupported);
        assert!(encoder.is_null());
    }
}
