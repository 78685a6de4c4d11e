//! A session's memory plan: one region, sized once from the model and the tile capacity and
//! carved into typed buffers, either allocated by the session or provided by the caller.

use std::ops::Range;

use crate::config::AttentionKind;
use crate::forward::BLOCK_TILES;
use crate::kernels::{padded_rows, PACK_FLOATS};
use crate::model::Model;

/// Alignment of the session's memory region and of each buffer in it.
pub const SESSION_ALIGNMENT: usize = 64;

/// Blocks per thread in one round of a push: the threads synchronise once per round. (One
/// under Miri, so that its small tests run several rounds.)
pub(crate) const BLOCKS_PER_JOB: usize = if cfg!(miri) { 1 } else { 4 };

/// Byte offsets of one worker's scratch buffers inside its slice of [`Plan::scratch`].
#[derive(Debug, Clone)]
pub(crate) struct ScratchLayout {
    /// `BLOCK_TILES x padded_rows(H)` f32.
    pub hidden: Range<usize>,
    /// `BLOCK_TILES x padded_rows(K)` f32.
    pub att_a: Range<usize>,
    /// `BLOCK_TILES x padded_rows(K)` f32 if gated, else empty.
    pub att_b: Range<usize>,
    /// [`PACK_FLOATS`] f32.
    pub pack: Range<usize>,
    /// Bytes of one worker's scratch, a multiple of [`SESSION_ALIGNMENT`].
    pub stride: usize,
}

/// Byte ranges of each buffer inside the session's region, in region order.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    // f64 buffers first.
    pub acc: Range<usize>,
    pub snapshot: Range<usize>,
    /// One [`ScratchLayout`] per worker thread, `stride` apart.
    pub scratch: Range<usize>,
    pub layout: ScratchLayout,
    /// `threads x BLOCKS_PER_JOB` partial sums of `H` f64 each, `partial_stride` bytes apart:
    /// one per block of a round, whichever thread computes it.
    pub partials: Range<usize>,
    /// Bytes between two partial sums (`8 H` rounded up to 64).
    pub partial_stride: usize,
    pub slide_logits: Range<usize>,
    pub slide_probs: Range<usize>,
    // Per tile.
    pub logits: Range<usize>,
    pub probs: Range<usize>,
    pub attention: Range<usize>,
    pub coords: Range<usize>,
    pub mask: Range<usize>,
    pub total: usize,
}

/// Hands out 64-byte-aligned ranges one after the other, checking every size for overflow.
struct Cursor(usize);

impl Cursor {
    fn take(&mut self, bytes: Option<usize>) -> Option<Range<usize>> {
        let start = self.0;
        let end = start.checked_add(bytes?)?;
        self.0 = end.checked_add(SESSION_ALIGNMENT - 1)? / SESSION_ALIGNMENT * SESSION_ALIGNMENT;
        Some(start..end)
    }
}

impl Plan {
    /// The plan for `capacity` tiles and `workers` threads (at least 1), or `None` if a size
    /// overflows.
    pub fn new(model: &Model, capacity: usize, workers: usize) -> Option<Plan> {
        let c = model.config();
        let (h, k, nc) = (c.hidden_dim, c.attention_dim, c.num_classes);
        let gated = c.attention == AttentionKind::Gated;
        let partial_stride = (h * 8).div_ceil(SESSION_ALIGNMENT) * SESSION_ALIGNMENT;
        let mut inner = Cursor(0);
        let layout = ScratchLayout {
            hidden: inner.take(Some(BLOCK_TILES * padded_rows(h) * 4))?,
            att_a: inner.take(Some(BLOCK_TILES * padded_rows(k) * 4))?,
            att_b: inner.take(Some(if gated {
                BLOCK_TILES * padded_rows(k) * 4
            } else {
                0
            }))?,
            pack: inner.take(Some(PACK_FLOATS * 4))?,
            stride: inner.0,
        };
        let mut cursor = Cursor(0);
        let per_tile = |size: usize| capacity.checked_mul(size);
        Some(Plan {
            acc: cursor.take(Some(h * 8))?,
            snapshot: cursor.take(Some(h * 8))?,
            scratch: cursor.take(layout.stride.checked_mul(workers.max(1)))?,
            layout,
            partials: cursor.take(
                partial_stride
                    .checked_mul(BLOCKS_PER_JOB)?
                    .checked_mul(workers.max(1)),
            )?,
            partial_stride,
            slide_logits: cursor.take(Some(nc * 4))?,
            slide_probs: cursor.take(Some(nc * 4))?,
            logits: cursor.take(per_tile(4))?,
            probs: cursor.take(per_tile(4))?,
            attention: cursor.take(per_tile(4))?,
            coords: cursor.take(per_tile(8))?,
            mask: cursor.take(per_tile(1))?,
            total: cursor.0,
        })
    }
}

/// Splits `bytes` into the disjoint, increasing `ranges` as separate mutable slices.
pub(crate) fn split_disjoint<'b, const N: usize>(
    mut bytes: &'b mut [u8],
    ranges: [&Range<usize>; N],
) -> [&'b mut [u8]; N] {
    let mut consumed = 0;
    let mut parts: [&'b mut [u8]; N] = std::array::from_fn(|_| <&mut [u8]>::default());
    for (part, range) in parts.iter_mut().zip(ranges) {
        let (_, rest) = std::mem::take(&mut bytes).split_at_mut(range.start - consumed);
        let (mine, rest) = rest.split_at_mut(range.len());
        *part = mine;
        bytes = rest;
        consumed = range.end;
    }
    parts
}

/// 64 bytes with 64-byte alignment: the unit of session-owned memory.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Block64(pub [u8; 64]);

/// The session's memory: allocated by the session, or borrowed from the caller.
pub(crate) enum Region<'m> {
    /// Allocated once, at session creation.
    Owned(Vec<Block64>),
    /// A caller's buffer, already aligned to [`SESSION_ALIGNMENT`].
    Borrowed(&'m mut [u8]),
}

impl Region<'_> {
    /// The whole region.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Region::Owned(blocks) => bytemuck::cast_slice(blocks),
            Region::Borrowed(bytes) => bytes,
        }
    }
    /// The whole region, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Region::Owned(blocks) => bytemuck::cast_slice_mut(blocks),
            Region::Borrowed(bytes) => bytes,
        }
    }
}
