//! Session handles: creation (heap or caller arena), pushing strips, reading results.

use msclam_engine::{
    Isa, SessionOptions as EngineOptions, SlideSession, SmallStripSplit, SESSION_ALIGNMENT,
};

use crate::boundary::{
    guard, reference, reference_mut, slice_in, slice_out, write_optional, FfiError,
};
use crate::model::Model;
use crate::status::Status;
use crate::versioned::{self, versioned};

/// A slide session (opaque): scores one slide at a time, incrementally. Use it from one
/// thread at a time; it may move between threads.
pub struct Session {
    pub(crate) inner: SlideSession<'static>,
    in_arena: bool,
    /// Set when a panic was caught in the middle of changing the session: its state may be
    /// inconsistent, so every call but reset and free refuses it until reset.
    poisoned: bool,
}

impl Session {
    /// Refuses a poisoned session.
    fn check_usable(&self) -> Result<(), FfiError> {
        if self.poisoned {
            return Err(FfiError::Invalid(
                "the session is unusable after an internal error: call msclam_session_reset",
            ));
        }
        Ok(())
    }

    fn usable_ref(&self) -> Result<&SlideSession<'static>, FfiError> {
        self.check_usable()?;
        Ok(&self.inner)
    }

    /// Runs `f` on the session (refused if poisoned); a panic inside poisons the session
    /// before it propagates. What `f` returns may borrow from the session.
    pub(crate) fn mutate<'s, T>(
        &'s mut self,
        f: impl FnOnce(&'s mut SlideSession<'static>) -> T,
    ) -> Result<T, FfiError> {
        self.check_usable()?;
        let Session {
            inner, poisoned, ..
        } = self;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(inner))) {
            Ok(value) => Ok(value),
            Err(payload) => {
                *poisoned = true;
                std::panic::resume_unwind(payload)
            }
        }
    }
}

/// `msclam_session_options.isa`: the best kernels this CPU supports (default).
pub const MSCLAM_ISA_AUTO: u32 = 0;
/// `msclam_session_options.isa`: portable kernels; results identical on every x86-64 CPU.
pub const MSCLAM_ISA_PORTABLE: u32 = 1;
/// `msclam_session_options.isa`: AVX2 + FMA kernels (error if the CPU lacks them).
pub const MSCLAM_ISA_AVX2: u32 = 2;
/// `msclam_session_options.isa`: AVX-512 kernels (error if the CPU lacks them).
pub const MSCLAM_ISA_AVX512: u32 = 3;
/// `msclam_session_options.isa`: the AVX-512 kernels, with bf16 dot products and int8 sums on
/// the AMX tile unit (Intel Xeon from Sapphire Rapids on; error if the CPU or the OS lacks it).
/// The default where available. (Added in 0.1.1.)
pub const MSCLAM_ISA_AMX: u32 = 4;
/// `msclam_session_options.small_strips`: split a strip of at most 128 tiles between the
/// threads when pushes come back to back (one starts within 0.1 ms of the last one's end) or
/// the threads still poll for work; after a pause run it on the calling thread, as waking a
/// sleeping thread can take longer than the strip. Measured on a 2-core virtual machine,
/// strips of one tile every 1-5 ms: 0.11 ms a push (as with one thread); back to back 2.3x
/// faster than one thread. (Added in 0.1.1.)
pub const MSCLAM_SMALL_STRIPS_BACK_TO_BACK: u32 = 0;
/// `msclam_session_options.small_strips`: always split such strips, waking the threads if
/// they sleep (0.33 ms a push in the measurement above). (Added in 0.1.1.)
pub const MSCLAM_SMALL_STRIPS_ALWAYS: u32 = 1;
/// `msclam_session_options.small_strips`: never split them: they run on the calling thread,
/// and the other threads score only the blocks of longer strips. (Added in 0.1.1.)
pub const MSCLAM_SMALL_STRIPS_NEVER: u32 = 2;
/// Alignment, in bytes, that msclam_session_create_in_arena() requires of its arena.
pub const MSCLAM_ARENA_ALIGNMENT: usize = 64;

/// How to create a session. Get one from msclam_session_options_default() and change fields;
/// `struct_size` lets later versions add fields without breaking programs built today: the
/// library reads only the whole fields within it (it must hold at least `struct_size` and
/// `isa`: 8 bytes), and the fields a shorter, older struct lacks take their defaults
/// (`max_tiles` 100000, `threads` 1, `bf16_dot` 0, `check_embeddings` 1, `small_strips`
/// MSCLAM_SMALL_STRIPS_BACK_TO_BACK).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// sizeof(msclam_session_options), set by msclam_session_options_default().
    pub struct_size: u32,
    /// Kernels to use: MSCLAM_ISA_AUTO (default), _PORTABLE, _AVX2, _AVX512 or _AMX.
    pub isa: u32,
    /// Maximum number of tiles per slide, 1 to 2^32 (default 100000; else
    /// MSCLAM_STATUS_INVALID_ARGUMENT). Memory grows by 21 bytes per tile.
    pub max_tiles: usize,
    /// Threads that score a strip together (default 1, at most 64): the extra threads are
    /// created with the session and parked between pushes (after polling for up to 0.1 ms).
    /// A strip of at most 128 tiles is split between all of them by the layers' outputs (each
    /// thread reads its share of the weights: strips of one tile ran 2.3-2.8x faster on 2
    /// cores), as `small_strips` says. Longer strips are cut into blocks of 128 tiles, which
    /// the threads take as they become free. Each thread needs a core of its own. Results are
    /// bit-identical for any count. Sessions created in an arena run on one thread. (Added in
    /// 0.1.1: an older, shorter struct means 1.)
    pub threads: u32,
    /// For a bf16 model (msclam_model_info.weight_dtype == MSCLAM_DTYPE_BF16): 1 to use bf16
    /// dot products, which also round inputs to bf16: on the AMX tiles with MSCLAM_ISA_AMX
    /// (3-5x faster than f32 at strips of 16 tiles and more), on AVX-512 BF16 with
    /// MSCLAM_ISA_AVX512 (faster at strips of a few tiles, slower at large strips); 0
    /// (default) to widen the weights to f32 in the kernels, exactly. (Added in 0.1.1.)
    pub bf16_dot: u32,
    /// For a model with embedding statistics (msclam_model_info.has_embedding_statistics):
    /// 1 (default) to count the tiles that do not look like the training data
    /// (msclam_session_out_of_distribution()), 0 to skip it (about 5 % faster at large strips).
    /// (Added in 0.1.1.)
    pub check_embeddings: u32,
    /// With `threads` > 1, when a strip of at most 128 tiles is split between the threads:
    /// MSCLAM_SMALL_STRIPS_BACK_TO_BACK (default), _ALWAYS or _NEVER. (Added in 0.1.1.)
    pub small_strips: u32,
}
versioned!(SessionOptions {
    struct_size,
    isa,
    max_tiles,
    threads,
    bf16_dot,
    check_embeddings,
    small_strips,
});

/// Default session options: automatic kernels, 100000 tiles per slide, one thread.
#[no_mangle]
pub extern "C" fn msclam_session_options_default() -> SessionOptions {
    SessionOptions {
        struct_size: std::mem::size_of::<SessionOptions>() as u32,
        isa: MSCLAM_ISA_AUTO,
        max_tiles: 100_000,
        threads: 1,
        bf16_dot: 0,
        check_embeddings: 1,
        small_strips: MSCLAM_SMALL_STRIPS_BACK_TO_BACK,
    }
}

/// Results of a slide from msclam_session_finalize(). Set `struct_size` (use
/// msclam_slide_result_init()); only the fields within it are written, and on return
/// `struct_size` holds the number of bytes written (the smaller of the caller's and the
/// library's `sizeof(msclam_slide_result)`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlideResult {
    /// Size of this struct as the caller knows it, in bytes.
    pub struct_size: u32,
    /// Most probable slide class (lowest index on ties).
    pub predicted_class: u32,
    /// Probability of the tumor class.
    pub tumor_probability: f32,
    /// Number of slide classes (entries of msclam_session_copy_slide_probabilities()).
    pub num_classes: u32,
    /// Number of tiles in the slide.
    pub num_tiles: usize,
    /// Number of tiles in the tumor mask (tile probability >= the model's threshold).
    pub tumor_tiles: usize,
    /// Share of the tiles whose embeddings lie outside the training data's range, 0 to 1
    /// (see msclam_session_out_of_distribution()); -1 when the model carries no embedding
    /// statistics or the session was created with `check_embeddings` 0. (Added in 0.1.1.)
    pub out_of_distribution_fraction: f32,
}
versioned!(SlideResult {
    struct_size,
    predicted_class,
    tumor_probability,
    num_classes,
    num_tiles,
    tumor_tiles,
    out_of_distribution_fraction,
});

/// A msclam_slide_result with `struct_size` set and every other field zero.
#[no_mangle]
pub extern "C" fn msclam_slide_result_init() -> SlideResult {
    SlideResult {
        struct_size: std::mem::size_of::<SlideResult>() as u32,
        predicted_class: 0,
        tumor_probability: 0.0,
        num_classes: 0,
        num_tiles: 0,
        tumor_tiles: 0,
        out_of_distribution_fraction: 0.0,
    }
}

/// Reads options (NULL means defaults; only fields within `struct_size` are read).
///
/// # Safety
/// `options` must be NULL or valid for reading `struct_size` bytes.
unsafe fn read_options(options: *const SessionOptions) -> Result<ReadOptions, FfiError> {
    let mut opts = msclam_session_options_default();
    if !options.is_null() {
        // SAFETY: `options` is non-NULL (checked above) and this function's caller guarantees
        // it is valid for reading `struct_size` bytes, so its first 4 bytes are readable.
        let size = unsafe {
            versioned::read_struct_size(
                options,
                "options",
                "options->struct_size must be sizeof(msclam_session_options)",
            )
        }?;
        // SAFETY: the caller's struct is readable for its `struct_size` (`size`) bytes, as
        // above, and does not overlap the local `opts`.
        opts = unsafe { versioned::read_fields(options, size, opts) };
    }
    let isa = match opts.isa {
        MSCLAM_ISA_AUTO => Isa::detect(),
        MSCLAM_ISA_PORTABLE => Isa::Portable,
        MSCLAM_ISA_AVX2 => Isa::Avx2Fma,
        MSCLAM_ISA_AVX512 => Isa::Avx512,
        MSCLAM_ISA_AMX => Isa::Amx,
        _ => {
            return Err(FfiError::Invalid(
                "options->isa is not one of the MSCLAM_ISA_* values",
            ))
        }
    };
    if !isa.is_supported() {
        return Err(FfiError::Invalid(
            "options->isa names kernels this CPU does not support",
        ));
    }
    if !(1..=msclam_engine::MAX_THREADS as u32).contains(&opts.threads) {
        return Err(FfiError::Invalid("options->threads must be from 1 to 64"));
    }
    if opts.bf16_dot > 1 {
        return Err(FfiError::Invalid("options->bf16_dot must be 0 or 1"));
    }
    if opts.check_embeddings > 1 {
        return Err(FfiError::Invalid(
            "options->check_embeddings must be 0 or 1",
        ));
    }
    let small_strips = match opts.small_strips {
        MSCLAM_SMALL_STRIPS_BACK_TO_BACK => SmallStripSplit::WhenBackToBack,
        MSCLAM_SMALL_STRIPS_ALWAYS => SmallStripSplit::Always,
        MSCLAM_SMALL_STRIPS_NEVER => SmallStripSplit::Never,
        _ => {
            return Err(FfiError::Invalid(
                "options->small_strips is not one of the MSCLAM_SMALL_STRIPS_* values",
            ))
        }
    };
    Ok(ReadOptions {
        max_tiles: opts.max_tiles,
        isa,
        threads: opts.threads as usize,
        small_strips,
        bf16_dot: opts.bf16_dot == 1,
        embedding_check: opts.check_embeddings == 1,
    })
}

/// Validated session options.
struct ReadOptions {
    max_tiles: usize,
    isa: Isa,
    threads: usize,
    small_strips: SmallStripSplit,
    bf16_dot: bool,
    embedding_check: bool,
}

/// Bytes before the session's memory region in an arena: the handle, rounded up.
const ARENA_HEADER: usize =
    std::mem::size_of::<Session>().div_ceil(SESSION_ALIGNMENT) * SESSION_ALIGNMENT;
const _: () = assert!(ARENA_HEADER >= std::mem::size_of::<Session>());
const _: () = assert!(std::mem::align_of::<Session>() <= MSCLAM_ARENA_ALIGNMENT);
const _: () = assert!(MSCLAM_ARENA_ALIGNMENT == SESSION_ALIGNMENT);

/// Bytes of arena a session needs: the handle plus the session's memory, overflow-checked.
fn arena_bytes_needed(model: &Model, max_tiles: usize) -> Result<usize, FfiError> {
    let session = SlideSession::memory_bytes(&model.inner, max_tiles)?;
    ARENA_HEADER
        .checked_add(session)
        .ok_or(FfiError::Invalid("max_tiles is too large"))
}

/// Creates a session for `model` in memory the library allocates now, once: pushes, reads,
/// finalize and reset allocate nothing afterwards. `options` may be NULL (defaults).
/// `*out_session` receives the session; release it with msclam_session_free().
///
/// # Safety
/// `model` live; `options` NULL or valid; `out_session` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_create(
    model: *const Model,
    options: *const SessionOptions,
    out_session: *mut *mut Session,
) -> Status {
    guard("msclam_session_create", || {
        // SAFETY: reference refuses a NULL `model`; otherwise the header requires a live model
        // (from msclam_model_load*(), not yet freed), which is immutable.
        let model = unsafe { reference(model, "model") }?;
        // SAFETY: read_options takes a NULL `options` as the defaults; otherwise the header
        // requires a msclam_session_options readable for its `struct_size` bytes.
        let o = unsafe { read_options(options) }?;
        // SAFETY: reference_mut refuses a NULL `out_session`; otherwise the header requires it
        // to point to writable storage for one pointer, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_session, "out_session") }?;
        let options = EngineOptions {
            isa: o.isa,
            threads: o.threads,
            small_strips: o.small_strips,
            bf16_dot: o.bf16_dot,
            embedding_check: o.embedding_check,
        };
        let inner = SlideSession::with_options(model.inner.clone(), o.max_tiles, options)?;
        *out = Box::into_raw(Box::new(Session {
            inner,
            in_arena: false,
            poisoned: false,
        }));
        Ok(())
    })
}

/// The exact number of bytes of arena msclam_session_create_in_arena() needs for this model
/// and options (`options` may be NULL). The formula: a fixed part (the handle, scratch for 64
/// tiles, the slide accumulator) plus 21 bytes per tile of `max_tiles`.
///
/// # Safety
/// `model` live; `options` NULL or valid; `out_bytes` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_arena_size(
    model: *const Model,
    options: *const SessionOptions,
    out_bytes: *mut usize,
) -> Status {
    guard("msclam_session_arena_size", || {
        // SAFETY: reference refuses a NULL `model`; otherwise the header requires a live model
        // (from msclam_model_load*(), not yet freed), which is immutable.
        let model = unsafe { reference(model, "model") }?;
        // SAFETY: read_options takes a NULL `options` as the defaults; otherwise the header
        // requires a msclam_session_options readable for its `struct_size` bytes.
        let o = unsafe { read_options(options) }?;
        let max_tiles = o.max_tiles;
        if o.threads != 1 {
            return Err(FfiError::Invalid(
                "a session in an arena runs on one thread",
            ));
        }
        // SAFETY: reference_mut refuses a NULL `out_bytes`; otherwise the header requires it to
        // point to a writable size_t, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_bytes, "out_bytes") }?;
        *out = arena_bytes_needed(model, max_tiles)?;
        Ok(())
    })
}

/// Creates a session entirely inside `arena` (no heap allocation at all, now or later), for
/// firmware. `arena` must be aligned to MSCLAM_ARENA_ALIGNMENT (64) bytes and hold at least
/// msclam_session_arena_size() bytes; it must stay valid, and be used for nothing else, until
/// msclam_session_free() is called on the session (which does not free the arena).
///
/// # Safety
/// `model` live; `options` NULL or valid; `arena` valid for `arena_bytes` bytes as described;
/// `out_session` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_create_in_arena(
    model: *const Model,
    options: *const SessionOptions,
    arena: *mut std::ffi::c_void,
    arena_bytes: usize,
    out_session: *mut *mut Session,
) -> Status {
    guard("msclam_session_create_in_arena", || {
        // SAFETY: reference refuses a NULL `model`; otherwise the header requires a live model
        // (from msclam_model_load*(), not yet freed), which is immutable.
        let model = unsafe { reference(model, "model") }?;
        // SAFETY: read_options takes a NULL `options` as the defaults; otherwise the header
        // requires a msclam_session_options readable for its `struct_size` bytes.
        let o = unsafe { read_options(options) }?;
        let (max_tiles, isa) = (o.max_tiles, o.isa);
        if o.threads != 1 {
            return Err(FfiError::Invalid(
                "a session in an arena runs on one thread",
            ));
        }
        // SAFETY: reference_mut refuses a NULL `out_session`; otherwise the header requires it
        // to point to writable storage for one pointer, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_session, "out_session") }?;
        if arena.is_null() {
            return Err(FfiError::Null("arena"));
        }
        if !(arena as usize).is_multiple_of(MSCLAM_ARENA_ALIGNMENT) {
            return Err(FfiError::Invalid(
                "arena must be aligned to MSCLAM_ARENA_ALIGNMENT (64) bytes",
            ));
        }
        let needed = arena_bytes_needed(model, max_tiles)?;
        if arena_bytes < needed {
            return Err(FfiError::TooSmall {
                what: "arena",
                needed,
                given: arena_bytes,
            });
        }
        let base = arena.cast::<u8>();
        // SAFETY: `arena` is non-NULL (checked above) and the header requires it to be valid
        // for `arena_bytes` bytes, which hold `needed > ARENA_HEADER` (checked above), and to
        // stay valid and unused by anything else until the session is freed; the region after
        // the header is disjoint from the handle's slot.
        let region: &'static mut [u8] = unsafe {
            std::slice::from_raw_parts_mut(base.add(ARENA_HEADER), arena_bytes - ARENA_HEADER)
        };
        let options = EngineOptions {
            isa,
            threads: 1,
            bf16_dot: o.bf16_dot,
            embedding_check: o.embedding_check,
            ..EngineOptions::default()
        };
        let inner =
            SlideSession::in_buffer_with_options(model.inner.clone(), max_tiles, region, options)?;
        let slot = base.cast::<Session>();
        // SAFETY: the slot is the start of the arena: non-NULL, 64-byte aligned (checked above;
        // >= align_of Session), writable for `arena_bytes > ARENA_HEADER >= size_of Session`
        // bytes as the header requires, and disjoint from `region`.
        unsafe {
            slot.write(Session {
                inner,
                in_arena: true,
                poisoned: false,
            })
        };
        *out = slot;
        Ok(())
    })
}

/// Releases a session (an arena session is ended in place; the arena itself is the caller's).
/// NULL is a no-op.
///
/// # Safety
/// `session` must be NULL or a live session, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_free(session: *mut Session) {
    let _ = guard("msclam_session_free", || {
        if session.is_null() {
            return Ok(());
        }
        // SAFETY: `session` is non-NULL (checked above) and the header requires a live session
        // (from msclam_session_create*(), not yet freed), so it points to a valid Session.
        let in_arena = unsafe { (*session).in_arena };
        if in_arena {
            // SAFETY: written in place by msclam_session_create_in_arena; dropped once.
            unsafe { std::ptr::drop_in_place(session) };
        } else {
            // SAFETY: created by Box::into_raw in msclam_session_create; freed once.
            drop(unsafe { Box::from_raw(session) });
        }
        Ok(())
    });
}

/// Pushes a strip of `n_tiles` tiles and scores them.
///
/// - `embeddings`: `n_tiles * embedding_dim` floats, tile after tile; `embedding_dim` must
///   equal the model's input_dim (else MSCLAM_STATUS_DIMENSION_MISMATCH). May be NULL only if
///   `n_tiles` is 0 (else MSCLAM_STATUS_NULL_ARGUMENT).
/// - `coords`: may be NULL; else `2 * n_tiles` values, (x, y) per tile. Give coordinates for
///   every push of a slide or for none (mixing them is MSCLAM_STATUS_INVALID_ARGUMENT).
/// - `out_tile_probabilities`, `out_attention_logits`: may be NULL; else room for `n_tiles`
///   floats: this strip's tumor probabilities and raw attention logits.
/// - `out_slide_tumor_probability`: may be NULL; else receives the slide's tumor probability
///   over every tile pushed so far (MSCLAM_STATUS_EMPTY_SESSION for an empty push on a slide
///   without tiles: there is no score to give).
/// - Every buffer must be aligned for its element type (4 bytes for float and uint32_t, as
///   malloc and arrays of them are; else MSCLAM_STATUS_INVALID_ARGUMENT). An output buffer may
///   be the input buffer.
///
/// Errors (NaN/Inf input, capacity exceeded, dimension mismatch) reject the whole strip and
/// leave the session exactly as it was. No allocation.
///
/// # Safety
/// Every non-NULL pointer must be valid for the sizes above; `session` live and not used by
/// another thread during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn msclam_session_push(
    session: *mut Session,
    embeddings: *const f32,
    n_tiles: usize,
    embedding_dim: usize,
    coords: *const u32,
    out_tile_probabilities: *mut f32,
    out_attention_logits: *mut f32,
    out_slide_tumor_probability: *mut f32,
) -> Status {
    guard("msclam_session_push", || {
        // SAFETY: reference_mut refuses a NULL `session`; otherwise the header requires a live
        // session (from msclam_session_create*(), not yet freed) that no other thread uses
        // during the call, so this is the only reference to it.
        let session = unsafe { reference_mut(session, "session") }?;
        let expected = session.inner.model().config().input_dim;
        if embedding_dim != expected {
            return Err(FfiError::Dimension {
                given: embedding_dim,
                expected,
            });
        }
        let values = n_tiles
            .checked_mul(embedding_dim)
            .ok_or(FfiError::Invalid("n_tiles * embedding_dim overflows"))?;
        // SAFETY: slice_in refuses a NULL or misaligned `embeddings` unless `values` is 0; the
        // header requires a non-NULL one to hold `n_tiles * embedding_dim` (`values`) readable
        // floats, unchanged during the call.
        let embeddings = unsafe { slice_in(embeddings, values, "embeddings") }?;
        let coords: Option<&[[u32; 2]]> = if coords.is_null() {
            None
        } else {
            // SAFETY: `coords` is non-NULL here and the header requires it to hold `2 * n_tiles`
            // readable uint32_t, unchanged during the call: `n_tiles` pairs, as [u32; 2] has
            // u32's alignment and no padding (slice_in checks the alignment).
            Some(unsafe { slice_in(coords.cast::<[u32; 2]>(), n_tiles, "coords") }?)
        };
        for ptr in [
            out_tile_probabilities,
            out_attention_logits,
            out_slide_tumor_probability,
        ] {
            if !ptr.is_null() && !ptr.is_aligned() {
                return Err(FfiError::Invalid(
                    "an output buffer is not aligned for float",
                ));
            }
        }
        let pushed = session.mutate(|inner| inner.push(embeddings, coords))??;
        let slide_probability = match pushed.slide_tumor_probability {
            Some(p) => p,
            // No tiles yet (an empty push on a new slide): there is no slide score to give.
            None if !out_slide_tumor_probability.is_null() => {
                return Err(msclam_engine::Error::EmptySession.into())
            }
            None => f32::NAN, // not written
        };
        let strip = pushed.first_tile..pushed.first_tile + pushed.tiles;
        // The output slices are made only now, after the input is no longer borrowed, so a
        // caller may reuse its input buffer for output.
        if !out_tile_probabilities.is_null() {
            // SAFETY: non-NULL and aligned (checked above); the header requires room for
            // `n_tiles` floats; the inputs are no longer borrowed (the header lets an output be
            // the input buffer) and this slice is dropped before the next output's is made.
            let out =
                unsafe { slice_out(out_tile_probabilities, n_tiles, "out_tile_probabilities") }?;
            out.copy_from_slice(&session.inner.tile_probabilities()[strip.clone()]);
        }
        if !out_attention_logits.is_null() {
            // SAFETY: non-NULL and aligned (checked above); the header requires room for
            // `n_tiles` floats; the inputs and the previous output are no longer borrowed.
            let out = unsafe { slice_out(out_attention_logits, n_tiles, "out_attention_logits") }?;
            out.copy_from_slice(&session.inner.attention_logits()[strip]);
        }
        // SAFETY: `out_slide_tumor_probability` is NULL or aligned (checked above), and the
        // header requires a non-NULL one to be writable for one float; no slice is borrowed.
        unsafe { write_optional(out_slide_tumor_probability, slide_probability) };
        Ok(())
    })
}

/// Number of tiles pushed for the current slide (0 for NULL).
///
/// # Safety
/// `session` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_tile_count(session: *const Session) -> usize {
    // SAFETY: the header requires `session` to be NULL (as_ref gives None) or a live session
    // used by one thread at a time, so nothing changes it during the call.
    unsafe { session.as_ref() }.map_or(0, |s| s.inner.len())
}

/// Maximum number of tiles per slide (0 for NULL).
///
/// # Safety
/// `session` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_capacity(session: *const Session) -> usize {
    // SAFETY: the header requires `session` to be NULL (as_ref gives None) or a live session
    // used by one thread at a time, so nothing changes it during the call.
    unsafe { session.as_ref() }.map_or(0, |s| s.inner.capacity())
}

/// The slide's current tumor probability over every tile pushed so far
/// (MSCLAM_STATUS_EMPTY_SESSION before the first tile).
///
/// # Safety
/// `session` live; `out_probability` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_tumor_probability(
    session: *const Session,
    out_probability: *mut f32,
) -> Status {
    guard("msclam_session_tumor_probability", || {
        // SAFETY: reference refuses a NULL `session`; otherwise the header requires a live
        // session (from msclam_session_create*(), not yet freed) used by one thread at a time,
        // so nothing changes it during the call.
        let session = unsafe { reference(session, "session") }?;
        // SAFETY: reference_mut refuses a NULL `out_probability`; otherwise the header requires
        // it to point to a writable float, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_probability, "out_probability") }?;
        *out = session.usable_ref()?.tumor_probability()?;
        Ok(())
    })
}

/// Share of the slide's tiles whose embeddings do not look like the model's training data:
/// outside the distance range stored with the model (the 0.1th to 99.9th percentiles, over
/// the training tiles, of a tile's Mahalanobis distance under a PCA model of the training
/// embeddings; docs/FORMAT.md). About 0.002 for slides like the training data; above
/// MSCLAM_OUT_OF_DISTRIBUTION_UNTRUSTED (0.1) the slide's scores should not be trusted
/// (another encoder or dimension order, magnification, stain, or scale). Updated by every
/// push, no allocation. `out_tiles` (may be NULL) receives the number of such tiles.
/// MSCLAM_STATUS_NOT_FOUND when the model carries no embedding statistics
/// (msclam_model_info.has_embedding_statistics) or the session was created with
/// `check_embeddings` 0, MSCLAM_STATUS_EMPTY_SESSION before the first tile. (Added in 0.1.1.)
///
/// # Safety
/// `session` live; `out_fraction` valid for writing; `out_tiles` NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_out_of_distribution(
    session: *const Session,
    out_fraction: *mut f32,
    out_tiles: *mut usize,
) -> Status {
    guard("msclam_session_out_of_distribution", || {
        // SAFETY: reference refuses a NULL `session`; otherwise the header requires a live
        // session (from msclam_session_create*(), not yet freed) used by one thread at a time,
        // so nothing changes it during the call.
        let session = unsafe { reference(session, "session") }?;
        // SAFETY: reference_mut refuses a NULL `out_fraction`; otherwise the header requires it
        // to point to a writable float, which nothing else uses during the call.
        let out = unsafe { reference_mut(out_fraction, "out_fraction") }?;
        let inner = session.usable_ref()?;
        let tiles = inner
            .out_of_distribution_tiles()
            .ok_or(FfiError::NotFound("embedding statistics"))?;
        let fraction = inner
            .out_of_distribution_fraction()
            .ok_or(msclam_engine::Error::EmptySession)?;
        *out = fraction;
        // SAFETY: the header requires `out_tiles` to be NULL (nothing is written) or to point
        // to a writable size_t; `out` is no longer used.
        unsafe { write_optional(out_tiles, tiles) };
        Ok(())
    })
}

/// Computes the slide's result over every tile pushed so far (class, tumor probability,
/// attention map and tumor mask, the latter two read with the copy functions). The slide is
/// not closed: more strips may be pushed and finalize called again. No allocation.
///
/// # Safety
/// `session` live; `out_result` valid, with `struct_size` set (msclam_slide_result_init()).
#[no_mangle]
pub unsafe extern "C" fn msclam_session_finalize(
    session: *mut Session,
    out_result: *mut SlideResult,
) -> Status {
    guard("msclam_session_finalize", || {
        // SAFETY: reference_mut refuses a NULL `session`; otherwise the header requires a live
        // session (from msclam_session_create*(), not yet freed) that no other thread uses
        // during the call, so this is the only reference to it.
        let session = unsafe { reference_mut(session, "session") }?;
        // SAFETY: a non-NULL `out_result` points, as the header requires, to a
        // msclam_slide_result whose `struct_size` the caller set (its first 4 bytes are
        // readable).
        let size = unsafe {
            versioned::read_struct_size(
                out_result,
                "out_result",
                "out_result->struct_size must be sizeof(msclam_slide_result)",
            )
        }?;
        let result = session.mutate(|inner| {
            inner.finalize().map(|r| SlideResult {
                struct_size: 0,
                predicted_class: r.predicted_class as u32,
                tumor_probability: r.tumor_probability,
                num_classes: r.slide_probabilities.len() as u32,
                num_tiles: r.tile_probabilities.len(),
                tumor_tiles: r.tumor_tiles,
                out_of_distribution_fraction: r.out_of_distribution_fraction.unwrap_or(-1.0),
            })
        })??;
        // SAFETY: `out_result` is non-NULL (read_struct_size checked it) and the header
        // requires it to be valid for writing the caller's msclam_slide_result, whose size the
        // caller set in `struct_size` (`size`).
        unsafe { versioned::write_fields(result, out_result, size) };
        Ok(())
    })
}

/// Copies `values` into the caller's buffer after checking its capacity.
///
/// # Safety
/// `out` valid for `capacity` elements; `out_count` NULL or valid for writing.
unsafe fn copy_out<T: Copy>(
    values: &[T],
    out: *mut T,
    capacity: usize,
    out_count: *mut usize,
) -> Result<(), FfiError> {
    // SAFETY: this function's caller guarantees that `out_count` is NULL (nothing is written)
    // or valid for writing a usize; no slice of `out` exists yet.
    unsafe { write_optional(out_count, values.len()) };
    if capacity < values.len() {
        return Err(FfiError::TooSmall {
            what: "out",
            needed: values.len(),
            given: capacity,
        });
    }
    // SAFETY: slice_out refuses a NULL or misaligned `out` unless `values` is empty; this
    // function's caller guarantees that `out` is valid for `capacity >= values.len()` (checked
    // above) writable elements, and it is not the session's memory that `values` borrows (the
    // library's, or an arena the header reserves to the session).
    let out = unsafe { slice_out(out, values.len(), "out") }?;
    out.copy_from_slice(values);
    Ok(())
}

/// The body of a copy function over a shared session.
///
/// # Safety
/// `session` NULL or live; `out` valid for `capacity` elements; `out_count` NULL or valid.
unsafe fn copy_from_ref<T: Copy>(
    function: &'static str,
    session: *const Session,
    out: *mut T,
    capacity: usize,
    out_count: *mut usize,
    values: impl for<'a> FnOnce(&'a SlideSession<'static>) -> Result<&'a [T], FfiError>,
) -> Status {
    guard(function, || {
        // SAFETY: reference refuses a NULL `session`; otherwise this function's caller
        // guarantees a live session (the header's requirement of the msclam_session_copy_*
        // functions), used by one thread at a time, so nothing changes it during the call.
        let session = unsafe { reference(session, "session") }?;
        let values = values(session.usable_ref()?)?;
        // SAFETY: this function's caller guarantees that `out` is valid for `capacity`
        // elements and `out_count` NULL or valid for writing: copy_out's contract.
        unsafe { copy_out(values, out, capacity, out_count) }
    })
}

/// The body of a copy function that may finalize the session first: `values` runs through
/// the session's poisoning guard ([`Session::mutate`]), as msclam_session_finalize() does, so a
/// poisoned session is refused and a panic inside poisons it (and becomes
/// MSCLAM_STATUS_PANIC at [`guard`]).
///
/// # Safety
/// As [`copy_from_ref`], and `session` not used by another thread during the call.
unsafe fn copy_from_mut<T: Copy>(
    function: &'static str,
    session: *mut Session,
    out: *mut T,
    capacity: usize,
    out_count: *mut usize,
    values: impl for<'a> FnOnce(&'a mut SlideSession<'static>) -> Result<&'a [T], FfiError>,
) -> Status {
    guard(function, || {
        // SAFETY: reference_mut refuses a NULL `session`; otherwise this function's caller
        // guarantees a live session (the header's requirement of the msclam_session_copy_*
        // functions) that no other thread uses during the call, so this is the only reference.
        let session = unsafe { reference_mut(session, "session") }?;
        let values = session.mutate(values)??;
        // SAFETY: this function's caller guarantees that `out` is valid for `capacity`
        // elements and `out_count` NULL or valid for writing: copy_out's contract.
        unsafe { copy_out(values, out, capacity, out_count) }
    })
}

/// Copies the tumor probability of every tile pushed so far, in push order.
///
/// Like every msclam_session_copy_* function: `out` has room for `capacity` elements (it may
/// be NULL if `capacity` is 0); `*out_count` (may be NULL) receives the number of elements,
/// also when `capacity` is too small (then MSCLAM_STATUS_BUFFER_TOO_SMALL, nothing copied).
///
/// # Safety
/// `session` live; `out` valid for `capacity` elements; `out_count` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_copy_tile_probabilities(
    session: *const Session,
    out: *mut f32,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    // SAFETY: the header requires what copy_from_ref does: `session` live, `out` valid for
    // `capacity` elements, `out_count` NULL or valid for writing.
    unsafe {
        copy_from_ref(
            "msclam_session_copy_tile_probabilities",
            session,
            out,
            capacity,
            out_count,
            |s| Ok(s.tile_probabilities()),
        )
    }
}

/// Copies the raw attention logit of every tile pushed so far, in push order.
///
/// # Safety
/// As msclam_session_copy_tile_probabilities().
#[no_mangle]
pub unsafe extern "C" fn msclam_session_copy_attention_logits(
    session: *const Session,
    out: *mut f32,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    // SAFETY: the header requires what copy_from_ref does: `session` live, `out` valid for
    // `capacity` elements, `out_count` NULL or valid for writing.
    unsafe {
        copy_from_ref(
            "msclam_session_copy_attention_logits",
            session,
            out,
            capacity,
            out_count,
            |s| Ok(s.attention_logits()),
        )
    }
}

/// Copies the slide's current class probabilities (num_classes values).
/// MSCLAM_STATUS_EMPTY_SESSION before the first tile.
///
/// # Safety
/// As msclam_session_copy_tile_probabilities().
#[no_mangle]
pub unsafe extern "C" fn msclam_session_copy_slide_probabilities(
    session: *const Session,
    out: *mut f32,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    // SAFETY: the header requires what copy_from_ref does: `session` live, `out` valid for
    // `capacity` elements, `out_count` NULL or valid for writing.
    unsafe {
        copy_from_ref(
            "msclam_session_copy_slide_probabilities",
            session,
            out,
            capacity,
            out_count,
            |s| Ok(s.slide_probabilities()?),
        )
    }
}

/// Copies the (x, y) coordinates pushed with the tiles: 2 values per tile, so `capacity` and
/// `*out_count` count values, not tiles. MSCLAM_STATUS_NOT_FOUND if the slide has none.
///
/// # Safety
/// As msclam_session_copy_tile_probabilities().
#[no_mangle]
pub unsafe extern "C" fn msclam_session_copy_coordinates(
    session: *const Session,
    out: *mut u32,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    // SAFETY: the header requires what copy_from_ref does: `session` live, `out` valid for
    // `capacity` elements, `out_count` NULL or valid for writing.
    unsafe {
        copy_from_ref(
            "msclam_session_copy_coordinates",
            session,
            out,
            capacity,
            out_count,
            |s| {
                let pairs = s.coordinates().ok_or(FfiError::NotFound("coordinates"))?;
                Ok(pairs.as_flattened())
            },
        )
    }
}

/// Copies the normalised attention of every tile (softmax over the slide; sums to 1),
/// finalizing the slide first if needed. MSCLAM_STATUS_EMPTY_SESSION before the first tile.
///
/// # Safety
/// As msclam_session_copy_tile_probabilities(); `session` not used by another thread
/// during the call.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_copy_attention(
    session: *mut Session,
    out: *mut f32,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    // SAFETY: the header requires what copy_from_mut does: `session` live and used by no
    // other thread during the call, `out` valid for `capacity` elements, `out_count` NULL or
    // valid for writing.
    unsafe {
        copy_from_mut(
            "msclam_session_copy_attention",
            session,
            out,
            capacity,
            out_count,
            |s| Ok(s.finalize()?.attention),
        )
    }
}

/// Copies the tumor mask: 1 for every tile whose probability is at or above the model's
/// threshold, else 0; finalizing the slide first if needed.
///
/// # Safety
/// As msclam_session_copy_attention().
#[no_mangle]
pub unsafe extern "C" fn msclam_session_copy_tile_mask(
    session: *mut Session,
    out: *mut u8,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    // SAFETY: the header requires what copy_from_mut does: `session` live and used by no
    // other thread during the call, `out` valid for `capacity` elements, `out_count` NULL or
    // valid for writing.
    unsafe {
        copy_from_mut(
            "msclam_session_copy_tile_mask",
            session,
            out,
            capacity,
            out_count,
            |s| Ok(s.finalize()?.tile_mask),
        )
    }
}

/// Forgets the current slide and starts the next one in the same memory. No allocation.
///
/// # Safety
/// `session` live and not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn msclam_session_reset(session: *mut Session) -> Status {
    guard("msclam_session_reset", || {
        // SAFETY: reference_mut refuses a NULL `session`; otherwise the header requires a live
        // session (from msclam_session_create*(), not yet freed) that no other thread uses
        // during the call, so this is the only reference to it.
        let session = unsafe { reference_mut(session, "session") }?;
        session.inner.reset();
        session.poisoned = false;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use msclam_engine::format::ModelWriter;
    use msclam_engine::{ModelConfig, ModelSize, ModelWeights};

    /// A session of a tiny all-zero model with `tiles` tiles pushed; free it with
    /// msclam_session_free().
    fn session_with_tiles(tiles: usize) -> *mut Session {
        let config = ModelConfig::ms_clam(ModelSize::Tiny);
        let bytes = ModelWriter::new(&ModelWeights::zeros(config))
            .to_bytes()
            .unwrap();
        let mut model = std::ptr::null_mut();
        let mut session = std::ptr::null_mut();
        let embeddings = vec![0.5f32; tiles * config.input_dim];
        // SAFETY: every pointer is a live local or buffer of the sizes given.
        unsafe {
            let status = crate::model::msclam_model_load_from_buffer(
                bytes.as_ptr().cast(),
                bytes.len(),
                &mut model,
            );
            assert_eq!(status, Status::Ok);
            let options = msclam_session_options_default();
            assert_eq!(
                msclam_session_create(model, &options, &mut session),
                Status::Ok
            );
            crate::model::msclam_model_free(model);
            let status = msclam_session_push(
                session,
                embeddings.as_ptr(),
                tiles,
                config.input_dim,
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            assert_eq!(status, Status::Ok);
        }
        session
    }

    #[test]
    fn a_panic_in_a_finalizing_copy_poisons_the_session_like_finalize() {
        let session = session_with_tiles(3);
        let mut attention = [0f32; 3];
        let mut mask = [0u8; 3];
        let mut count = 0usize;
        let mut result = msclam_slide_result_init();
        // SAFETY: `session` is live and used by this thread only; the buffers are locals of
        // the sizes given.
        unsafe {
            let status = copy_from_mut(
                "test_copy",
                session,
                attention.as_mut_ptr(),
                attention.len(),
                &mut count,
                |_| -> Result<&[f32], FfiError> { panic!("finalize failed") },
            );
            assert_eq!(status, Status::Panic);
            assert!((*session).poisoned);
            for status in [
                msclam_session_copy_attention(session, attention.as_mut_ptr(), 3, &mut count),
                msclam_session_copy_tile_mask(session, mask.as_mut_ptr(), 3, &mut count),
                msclam_session_finalize(session, &mut result),
            ] {
                assert_eq!(status, Status::InvalidArgument);
            }
            assert_eq!(msclam_session_reset(session), Status::Ok);
            assert!(!(*session).poisoned);
            msclam_session_free(session);
        }
    }

    #[test]
    fn finalizing_copies_give_the_slide_results() {
        let session = session_with_tiles(4);
        let mut attention = [0f32; 4];
        let mut mask = [9u8; 4];
        let mut count = 0usize;
        // SAFETY: `session` is live and used by this thread only; the buffers are locals of
        // the sizes given.
        unsafe {
            let status =
                msclam_session_copy_attention(session, attention.as_mut_ptr(), 4, &mut count);
            assert_eq!((status, count), (Status::Ok, 4));
            // Equal tiles share the attention equally.
            assert!(attention.iter().all(|a| (a - 0.25).abs() < 1e-6));
            let status = msclam_session_copy_tile_mask(session, mask.as_mut_ptr(), 4, &mut count);
            assert_eq!((status, count), (Status::Ok, 4));
            assert!(mask.iter().all(|m| *m <= 1));
            let status =
                msclam_session_copy_attention(session, attention.as_mut_ptr(), 3, &mut count);
            assert_eq!((status, count), (Status::BufferTooSmall, 4));
            msclam_session_free(session);
        }
    }

    #[test]
    fn versioned_structs_read_and_write_whole_fields_only() {
        let session = session_with_tiles(2);
        let mut result = msclam_slide_result_init();
        result.struct_size = 10; // ends inside tumor_probability
        result.tumor_probability = 7.0;
        // SAFETY: `session` is live and used by this thread only; `result` is a local.
        unsafe {
            assert_eq!(msclam_session_finalize(session, &mut result), Status::Ok);
            assert_eq!(result.struct_size, 8);
            assert_eq!(result.tumor_probability, 7.0);
            result.struct_size = 4;
            let status = msclam_session_finalize(session, &mut result);
            assert_eq!(status, Status::InvalidArgument);
            result.struct_size = std::mem::size_of::<SlideResult>() as u32;
            assert_eq!(msclam_session_finalize(session, &mut result), Status::Ok);
            assert_eq!(result.num_tiles, 2);
            assert_eq!(
                result.struct_size as usize,
                std::mem::size_of::<SlideResult>()
            );
            msclam_session_free(session);
        }
    }
}
