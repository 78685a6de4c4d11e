//! Incremental scoring of one slide at a time: push strips of tile embeddings, read the current
//! slide score after each, finalize for the attention map and the tumor mask.
//!
//! A session's memory is one region, sized once from the model and the tile capacity
//! ([`SlideSession::memory_bytes`]) and carved into typed buffers. Nothing is allocated after
//! creation: pushes, reads, [`SlideSession::finalize`] and [`SlideSession::reset`] only write
//! into that region. The region is either allocated by the session ([`SlideSession::new`]) or
//! provided by the caller ([`SlideSession::in_buffer`], for firmware without a heap).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use ndarray::ArrayView2;

use crate::config::MAX_CLASSES;
use crate::error::{Error, Result};
use crate::forward::{combine, find_non_finite, Aggregate, BlockError};
use crate::kernels::{Isa, KernelPlan};
use crate::memory::{split_disjoint, Block64, Plan, Region, SESSION_ALIGNMENT};
use crate::model::Model;
use crate::strip::{score_strip, Strip, StripBuffers};
use crate::workers::{Workers, SPIN};
/// Largest number of threads of one session.
pub const MAX_THREADS: usize = 64;

/// How a session runs: kernels and threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Instruction set of the kernels (default: the best this CPU has).
    pub isa: Isa,
    /// Threads that score a strip together (default 1). The extra `threads - 1` are created
    /// with the session and parked between pushes (each polls for up to 0.1 ms before it
    /// sleeps, which saves most wake-ups between the rounds of a push and between
    /// back-to-back pushes). A strip of at most [`BLOCK_TILES`](crate::BLOCK_TILES) tiles is split between all
    /// the threads by the layers' outputs: each computes its share of every layer and reads
    /// only that share of the weights, which can stay in its core's L2 cache (a strip of one
    /// tile is bound by reading the weights). A longer strip is cut into blocks of
    /// [`BLOCK_TILES`](crate::BLOCK_TILES) tiles, which the threads take as they become free, so strips of at
    /// least `threads * BLOCK_TILES` tiles use them all. Results are bit-identical for any
    /// thread count. A split strip waits for every thread, so each needs a core of its own:
    /// on a core shared with other work, fewer threads are faster. When a strip is split:
    /// [`SessionOptions::small_strips`]. One session per core, each with one thread, is the
    /// alternative for scoring several slides at once.
    pub threads: usize,
    /// With several threads: when a strip of at most [`BLOCK_TILES`](crate::BLOCK_TILES)
    /// tiles is split between them (default [`SmallStripSplit::WhenBackToBack`]).
    pub small_strips: SmallStripSplit,
    /// For a model whose large matrices are bf16: use bf16 dot products (default false),
    /// which also round every input and hidden value to bf16. They run on the AMX tile unit
    /// with [`Isa::Amx`] and on AVX-512 BF16 with [`Isa::Avx512`] (where the CPU has them;
    /// the two round their sums differently). Measured on an Intel Xeon with AMX, one core:
    /// AMX 3.5-5.4x ONNX Runtime's f32 and 3-4x the widened kernels at strips of 16 and more,
    /// 5.8x the f32 engine at strips of 1; AVX-512 BF16 1.3x the widened kernels at strips of
    /// 1 but 0.5x at 64 and more (the dot product's throughput). By default the bf16 weights
    /// are widened to f32 in the kernels, exactly: the results equal f32 kernels over the
    /// widened weights.
    pub bf16_dot: bool,
    /// For a model with embedding statistics: count the tiles that do not look like the
    /// training data (default true; [`crate::statistics`]). Costs 4-7 % of the time at large
    /// strips on an Intel Xeon with AVX-512 (docs/PERFORMANCE.md); without it the
    /// out-of-distribution share is `None`, as for a model without statistics.
    pub embedding_check: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            isa: Isa::detect(),
            threads: 1,
            small_strips: SmallStripSplit::WhenBackToBack,
            bf16_dot: false,
            embedding_check: true,
        }
    }
}

impl SessionOptions {
    /// The defaults with `isa`.
    pub fn with_isa(isa: Isa) -> Self {
        SessionOptions {
            isa,
            ..SessionOptions::default()
        }
    }
}

/// When a session with several threads splits a strip of at most
/// [`BLOCK_TILES`](crate::BLOCK_TILES) tiles between them (longer strips are cut into blocks,
/// which the threads take as they become free, whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmallStripSplit {
    /// When pushes come back to back (a push starts within 0.1 ms of the last one's end) or
    /// the workers are still polling; after a pause on the calling thread, since waking a
    /// sleeping thread can take longer than the strip. Measured on a 2-core virtual machine,
    /// strips of one tile pushed every 1-5 ms: 0.11 ms a push (median), as with one thread,
    /// and 2.3x faster than one thread back to back.
    #[default]
    WhenBackToBack,
    /// Always, waking the workers if they sleep: 0.33 ms a push in the measurement above,
    /// which pays a wake-up each time. For pushes that come while the workers poll anyway,
    /// and for tests that must reach the split path whatever the timing.
    Always,
    /// Never: strips of at most one block run on the calling thread, and the workers take
    /// only the blocks of longer strips (keeps the other cores free for the caller's work
    /// between large strips).
    Never,
}

/// Largest tile capacity of a session (2^32 tiles, far beyond any slide; it keeps every
/// size computation far from overflow).
pub const MAX_CAPACITY: usize = 1 << 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coordinates {
    NotYetKnown,
    Present,
    Absent,
}

/// What one push did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushSummary {
    /// Index (in the slide) of the first tile of this push.
    pub first_tile: usize,
    /// Number of tiles pushed.
    pub tiles: usize,
    /// Current probability of the tumor slide class, over every tile pushed so far; `None`
    /// while the slide has no tile (an empty push on a new slide).
    pub slide_tumor_probability: Option<f32>,
    /// Share of the slide's tiles so far whose embeddings lie outside the training data's
    /// range ([`crate::statistics`]); `None` for a model without embedding statistics or a
    /// slide without tiles. Above [`crate::statistics::UNTRUSTED_FRACTION`], do not trust the
    /// slide's scores.
    pub out_of_distribution_fraction: Option<f32>,
}

/// The result of a slide, borrowed from its session (valid until the next push or reset).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlideResult<'s> {
    /// Slide class logits (C).
    pub slide_logits: &'s [f32],
    /// Slide class probabilities (softmax of the logits).
    pub slide_probabilities: &'s [f32],
    /// Index of the most probable class (lowest index on ties).
    pub predicted_class: usize,
    /// Probability of the tumor class.
    pub tumor_probability: f32,
    /// Normalised attention of every tile (softmax over the slide; sums to 1).
    pub attention: &'s [f32],
    /// Raw attention logit of every tile.
    pub attention_logits: &'s [f32],
    /// Tumor probability of every tile.
    pub tile_probabilities: &'s [f32],
    /// Tumor mask: 1 where the tile probability is at or above the model's threshold, else 0.
    pub tile_mask: &'s [u8],
    /// Number of tiles in the mask.
    pub tumor_tiles: usize,
    /// Tile coordinates, if they were pushed.
    pub coordinates: Option<&'s [[u32; 2]]>,
    /// Share of the tiles whose embeddings lie outside the training data's range
    /// ([`crate::statistics`]); `None` for a model without embedding statistics. Above
    /// [`crate::statistics::UNTRUSTED_FRACTION`], do not trust the slide's scores.
    pub out_of_distribution_fraction: Option<f32>,
}

/// Tiles checked at once before scoring (finiteness, then the embedding statistics): 64 tiles
/// of 1,024 values are 256 KiB, in L2.
const CHECK_BLOCK: usize = 64;

/// Scores one slide at a time, incrementally. Create once, then for each slide: push strips,
/// read, finalize, reset. Used by one thread at a time (it is `Send`, not shared).
pub struct SlideSession<'m> {
    model: Arc<Model>,
    kernels: KernelPlan,
    /// Whether the kernels read the model's bf16 pairs (AVX-512 BF16 dot products).
    bf16_pairs: bool,
    /// Whether pushes count out-of-distribution tiles (options and model allow it).
    embedding_check: bool,
    /// [`SessionOptions::small_strips`].
    small_strips: SmallStripSplit,
    /// When the last push of a session with threads ended.
    last_push_end: Option<Instant>,
    workers: Workers,
    capacity: usize,
    plan: Plan,
    region: Region<'m>,
    len: usize,
    max_logit: f64,
    weight_sum: f64,
    coordinates: Coordinates,
    finalized: bool,
    /// Tiles of the slide outside the model's embedding distance range.
    outside_tiles: usize,
}

impl std::fmt::Debug for SlideSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlideSession")
            .field("kernels", &self.kernels)
            .field("threads", &self.workers.threads())
            .field("bf16_pairs", &self.bf16_pairs)
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .field("memory_bytes", &self.plan.total)
            .finish_non_exhaustive()
    }
}

impl SlideSession<'static> {
    /// A session for up to `capacity` tiles per slide, with memory it allocates now (and never
    /// again) and the best kernels for this CPU.
    pub fn new(model: Arc<Model>, capacity: usize) -> Result<Self> {
        Self::with_isa(model, capacity, Isa::detect())
    }

    /// Like [`SlideSession::new`] with a chosen instruction set (e.g. [`Isa::Portable`] for
    /// results that are identical on every x86-64 machine). Errors if this CPU lacks it.
    pub fn with_isa(model: Arc<Model>, capacity: usize, isa: Isa) -> Result<Self> {
        Self::with_options(model, capacity, SessionOptions::with_isa(isa))
    }

    /// Like [`SlideSession::new`] with chosen kernels and threads ([`SessionOptions`]).
    pub fn with_options(
        model: Arc<Model>,
        capacity: usize,
        options: SessionOptions,
    ) -> Result<Self> {
        let plan = Self::plan(&model, capacity, options.threads)?;
        let blocks = plan.total.div_ceil(64);
        let mut memory = Vec::new();
        // Fallible: a capacity the machine cannot hold is an error, not an abort.
        memory.try_reserve_exact(blocks).map_err(|_| {
            Error::invalid_argument(format!(
                "cannot allocate {} bytes for a {capacity}-tile session",
                plan.total
            ))
        })?;
        memory.resize(blocks, Block64([0; 64]));
        Self::build(model, capacity, options, plan, Region::Owned(memory))
    }
}

impl<'m> SlideSession<'m> {
    /// Bytes of memory a session for `capacity` tiles needs with this model:
    ///
    /// `21 * capacity` (attention logit, tile probability and normalised attention as f32,
    /// coordinates as two u32, mask as u8) `+ 16 * H` (the f64 slide accumulator and its
    /// rollback copy) `+ 512 * (H16 + K16 * g)` (scratch for 128 tiles of hidden and attention
    /// values, `H16`/`K16` rounded up to 16, `g` = 2 if gated else 1) `+ 147,456` (the matrix
    /// kernels' packed inputs, [`crate::kernels::PACK_FLOATS`] floats) `+ 4 * 8 * H` (the f64
    /// sums of 4 blocks) `+ 8 * C`, each buffer rounded up to 64 bytes. Add 63 bytes for
    /// [`SlideSession::in_buffer`] if the buffer is not 64-byte aligned.
    pub fn memory_bytes(model: &Model, capacity: usize) -> Result<usize> {
        Ok(Self::plan(model, capacity, 1)?.total)
    }

    /// [`SlideSession::memory_bytes`] for a session of `threads` threads: each thread beyond
    /// the first adds its own scratch (`512 * (H16 + K16 * g) + 147,456` bytes) and 4 slots
    /// of the shared partial sums (`32 * H` bytes).
    pub fn memory_bytes_with_threads(
        model: &Model,
        capacity: usize,
        threads: usize,
    ) -> Result<usize> {
        Ok(Self::plan(model, capacity, threads)?.total)
    }

    fn plan(model: &Model, capacity: usize, threads: usize) -> Result<Plan> {
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(Error::invalid_argument(format!(
                "a session runs on 1 to {MAX_THREADS} threads, not {threads}"
            )));
        }
        if capacity == 0 {
            return Err(Error::invalid_argument(
                "a session needs a capacity of at least 1 tile",
            ));
        }
        if capacity > MAX_CAPACITY {
            return Err(Error::invalid_argument(format!(
                "capacity {capacity} exceeds the maximum of {MAX_CAPACITY} tiles"
            )));
        }
        Plan::new(model, capacity, threads).ok_or_else(|| {
            Error::invalid_argument(format!(
                "capacity {capacity} tiles overflows the address space"
            ))
        })
    }

    /// A session living entirely in `buffer` (no heap allocation at all), for firmware. The
    /// buffer needs [`SlideSession::memory_bytes`] bytes after aligning its start to 64 bytes.
    pub fn in_buffer(model: Arc<Model>, capacity: usize, buffer: &'m mut [u8]) -> Result<Self> {
        Self::in_buffer_with_isa(model, capacity, buffer, Isa::detect())
    }

    /// [`SlideSession::in_buffer`] with a chosen instruction set.
    pub fn in_buffer_with_isa(
        model: Arc<Model>,
        capacity: usize,
        buffer: &'m mut [u8],
        isa: Isa,
    ) -> Result<Self> {
        Self::in_buffer_with_options(model, capacity, buffer, SessionOptions::with_isa(isa))
    }

    /// [`SlideSession::in_buffer`] with chosen options; `threads` must be 1 (a session in a
    /// caller's buffer creates no thread).
    pub fn in_buffer_with_options(
        model: Arc<Model>,
        capacity: usize,
        buffer: &'m mut [u8],
        options: SessionOptions,
    ) -> Result<Self> {
        if options.threads != 1 {
            return Err(Error::invalid_argument(
                "a session in a caller's buffer runs on one thread",
            ));
        }
        let plan = Self::plan(&model, capacity, 1)?;
        let skip = buffer
            .as_ptr()
            .align_offset(SESSION_ALIGNMENT)
            .min(buffer.len());
        let given = buffer.len();
        let buffer = &mut buffer[skip..];
        if buffer.len() < plan.total {
            return Err(Error::BufferTooSmall {
                needed: plan.total + skip,
                given,
                unit: "bytes",
            });
        }
        let region = Region::Borrowed(&mut buffer[..plan.total]);
        Self::build(model, capacity, options, plan, region)
    }

    fn build(
        model: Arc<Model>,
        capacity: usize,
        options: SessionOptions,
        plan: Plan,
        region: Region<'m>,
    ) -> Result<Self> {
        let isa = options.isa;
        if !isa.is_supported() {
            return Err(Error::invalid_argument(format!(
                "this CPU does not support the {} kernels",
                isa.name()
            )));
        }
        let bf16_pairs =
            options.bf16_dot && matches!(isa, Isa::Avx512 | Isa::Amx) && model.has_bf16_pairs();
        let embedding_check = options.embedding_check && model.embedding_statistics().is_some();
        let mut session = SlideSession {
            model,
            kernels: KernelPlan::for_isa(isa),
            bf16_pairs,
            embedding_check,
            small_strips: options.small_strips,
            last_push_end: None,
            workers: Workers::start(options.threads)?,
            capacity,
            plan,
            region,
            len: 0,
            max_logit: f64::NEG_INFINITY,
            weight_sum: 0.0,
            coordinates: Coordinates::NotYetKnown,
            finalized: false,
            outside_tiles: 0,
        };
        session.reset();
        log::debug!("{session:?} created");
        Ok(session)
    }

    /// The model this session scores with.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The instruction set of the kernels in use.
    pub fn isa(&self) -> Isa {
        self.kernels.isa
    }

    /// Whether this session computes with AVX-512 BF16 dot products (a bf16 model on a CPU
    /// that has them, unless [`SessionOptions::bf16_dot`] was false).
    pub fn uses_bf16_dot(&self) -> bool {
        self.bf16_pairs
    }

    /// The kernels in use and their blocking, chosen from the CPU when the session was created.
    pub fn kernel_plan(&self) -> KernelPlan {
        self.kernels
    }

    /// Maximum number of tiles per slide.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of tiles pushed so far for the current slide.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no tile has been pushed for the current slide.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory this session uses (see [`SlideSession::memory_bytes`]).
    pub fn memory_used(&self) -> usize {
        self.plan.total
    }

    fn f32s(&self, range: &Range<usize>) -> &[f32] {
        bytemuck::cast_slice(&self.region.bytes()[range.clone()])
    }

    /// Tumor probability of each tile pushed so far, in push order.
    pub fn tile_probabilities(&self) -> &[f32] {
        &self.f32s(&self.plan.probs)[..self.len]
    }

    /// Raw attention logit of each tile pushed so far, in push order.
    pub fn attention_logits(&self) -> &[f32] {
        &self.f32s(&self.plan.logits)[..self.len]
    }

    /// Coordinates of the tiles pushed so far, if they were given.
    pub fn coordinates(&self) -> Option<&[[u32; 2]]> {
        (self.coordinates == Coordinates::Present).then(|| {
            &bytemuck::cast_slice(&self.region.bytes()[self.plan.coords.clone()])[..self.len]
        })
    }

    /// Current slide class probabilities over every tile pushed so far.
    pub fn slide_probabilities(&self) -> Result<&[f32]> {
        if self.len == 0 {
            return Err(Error::EmptySession);
        }
        Ok(self.f32s(&self.plan.slide_probs))
    }

    /// Current slide class logits over every tile pushed so far.
    pub fn slide_logits(&self) -> Result<&[f32]> {
        if self.len == 0 {
            return Err(Error::EmptySession);
        }
        Ok(self.f32s(&self.plan.slide_logits))
    }

    /// Number of the slide's tiles whose embeddings lie outside the model's distance range
    /// ([`crate::statistics`]); `None` for a model without embedding statistics or a session
    /// without [`SessionOptions::embedding_check`].
    pub fn out_of_distribution_tiles(&self) -> Option<usize> {
        self.embedding_check.then_some(self.outside_tiles)
    }

    /// Share of the slide's tiles outside the model's distance range; `None` for a model without
    /// embedding statistics or a slide without tiles. Above
    /// [`crate::statistics::UNTRUSTED_FRACTION`], do not trust the slide's scores.
    pub fn out_of_distribution_fraction(&self) -> Option<f32> {
        let outside = self.out_of_distribution_tiles()?;
        (self.len > 0).then(|| (outside as f64 / self.len as f64) as f32)
    }

    /// Current probability of the tumor class.
    pub fn tumor_probability(&self) -> Result<f32> {
        let tumor = self.model.config().tumor_class;
        Ok(self.slide_probabilities()?[tumor])
    }

    /// Pushes `n` tiles: `embeddings` is `n x D` row-major, `coordinates` (optional) one
    /// `[x, y]` pair per tile. Either every push of a slide has coordinates or none has.
    ///
    /// On error nothing changes: the tiles pushed before are kept as they were.
    pub fn push(
        &mut self,
        embeddings: &[f32],
        coordinates: Option<&[[u32; 2]]>,
    ) -> Result<PushSummary> {
        let d = self.model.config().input_dim;
        if !embeddings.len().is_multiple_of(d) {
            return Err(Error::EmbeddingLength {
                len: embeddings.len(),
                dim: d,
            });
        }
        self.push_rows(embeddings, embeddings.len() / d, d, coordinates)
    }

    /// [`SlideSession::push`] for an `n x D` array view in standard (row-major, contiguous)
    /// layout; other layouts are refused rather than copied behind the caller's back.
    pub fn push_array(
        &mut self,
        embeddings: ArrayView2<'_, f32>,
        coordinates: Option<ArrayView2<'_, u32>>,
    ) -> Result<PushSummary> {
        let (n, d) = embeddings.dim();
        if d != self.model.config().input_dim {
            return Err(Error::EmbeddingLength {
                len: n * d,
                dim: self.model.config().input_dim,
            });
        }
        let coords: Option<&[[u32; 2]]> = match coordinates {
            None => None,
            Some(c) => {
                if c.ncols() != 2 {
                    return Err(Error::UnsupportedLayout {
                        reason: "coordinates must be an n x 2 array",
                    });
                }
                let flat = c.to_slice().ok_or(Error::UnsupportedLayout {
                    reason: "coordinates must be a contiguous row-major array",
                })?;
                Some(bytemuck::cast_slice(flat))
            }
        };
        let flat = embeddings.to_slice().ok_or(Error::UnsupportedLayout {
            reason: "embeddings must be a contiguous row-major (standard layout) array: \
                     use .as_standard_layout()",
        })?;
        self.push_rows(flat, n, d, coords)
    }

    fn push_rows(
        &mut self,
        x: &[f32],
        n: usize,
        stride: usize,
        coords: Option<&[[u32; 2]]>,
    ) -> Result<PushSummary> {
        let config = *self.model.config();
        let d = config.input_dim;
        // Validate everything before touching any state.
        if let Some(c) = coords {
            if c.len() != n {
                return Err(Error::CoordinateCount {
                    coords: c.len(),
                    tiles: n,
                });
            }
        }
        match (self.coordinates, coords.is_some()) {
            (Coordinates::Present, false) if n > 0 => {
                return Err(Error::CoordinatesInconsistent { had: "had" })
            }
            (Coordinates::Absent, true) => {
                return Err(Error::CoordinatesInconsistent { had: "had no" })
            }
            _ => {}
        }
        if n > self.capacity - self.len {
            return Err(Error::CapacityExceeded {
                capacity: self.capacity,
                len: self.len,
                requested: n,
            });
        }
        // With embedding statistics: one pass over the embeddings, in cache-sized blocks, the
        // finiteness check, then the out-of-distribution count while the block is still in
        // cache. Without, the forward pass checks finiteness on the way (`compute_block`).
        let statistics = self
            .model
            .embedding_statistics()
            .filter(|_| self.embedding_check);
        let mut outside = 0;
        if let Some(statistics) = &statistics {
            for start in (0..n).step_by(CHECK_BLOCK) {
                let m = CHECK_BLOCK.min(n - start);
                let block = &x[start * stride..];
                if let Some((tile, feature)) =
                    find_non_finite(self.kernels.isa, block, m, stride, d)
                {
                    return Err(non_finite_input(x, stride, start + tile, feature));
                }
                outside += statistics.count_outside_with(self.kernels.isa, block, m, stride);
            }
        }
        let summary_first = self.len;
        if n == 0 {
            return Ok(PushSummary {
                first_tile: summary_first,
                tiles: 0,
                slide_tumor_probability: self.tumor_probability().ok(),
                out_of_distribution_fraction: self.out_of_distribution_fraction(),
            });
        }

        let saved = (self.max_logit, self.weight_sum);
        let scored = self.score_tiles(x, n, stride).and_then(|()| {
            if self.update_slide_outputs() {
                Ok(())
            } else {
                Err(Error::NumericalOverflow { tile: n - 1 })
            }
        });
        match scored {
            Ok(()) => {}
            Err(e) => {
                // Roll back the aggregate; per-tile buffers beyond `len` are not observable.
                (self.max_logit, self.weight_sum) = saved;
                let plan = self.plan.clone();
                let [acc, snapshot] =
                    split_disjoint(self.region.bytes_mut(), [&plan.acc, &plan.snapshot]);
                acc.copy_from_slice(snapshot);
                if self.len > 0 {
                    // Recompute the previous slide outputs from the restored aggregate.
                    self.update_slide_outputs();
                }
                return Err(e);
            }
        }
        if let Some(c) = coords {
            let plan = self.plan.clone();
            let all: &mut [[u32; 2]] =
                bytemuck::cast_slice_mut(&mut self.region.bytes_mut()[plan.coords]);
            all[self.len..self.len + n].copy_from_slice(c);
        }
        self.coordinates = if coords.is_some() {
            Coordinates::Present
        } else {
            Coordinates::Absent
        };
        self.outside_tiles += outside;
        self.len += n;
        self.finalized = false;
        Ok(PushSummary {
            first_tile: summary_first,
            tiles: n,
            slide_tumor_probability: Some(self.f32s(&self.plan.slide_probs)[config.tumor_class]),
            out_of_distribution_fraction: self.out_of_distribution_fraction(),
        })
    }

    /// Runs the network over `n` validated tiles, writing their logits and probabilities after
    /// the current `len` and folding them into the aggregate. Saves the aggregate first.
    ///
    /// The threads compute the strip's blocks ([`score_strip`]); this thread folds their
    /// partial sums into the aggregate in slide order, so which thread computed a block
    /// changes nothing in the results.
    fn score_tiles(&mut self, x: &[f32], n: usize, stride: usize) -> Result<()> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let plan = self.plan.clone();
        let [acc, snapshot, scratch, partials, logits, probs] = split_disjoint(
            self.region.bytes_mut(),
            [
                &plan.acc,
                &plan.snapshot,
                &plan.scratch,
                &plan.partials,
                &plan.logits,
                &plan.probs,
            ],
        );
        snapshot.copy_from_slice(acc);
        let mut agg = Aggregate {
            acc: bytemuck::cast_slice_mut(acc),
            max_logit: self.max_logit,
            weight_sum: self.weight_sum,
        };
        let strip = Strip {
            kernels: self.kernels,
            weights: model.weights(self.kernels.isa, self.bf16_pairs),
            dims: (config.input_dim, config.hidden_dim, config.attention_dim),
            x,
            n,
            stride,
            base: self.len,
        };
        let buffers = StripBuffers {
            scratch,
            layout: &plan.layout,
            partials,
            partial_stride: plan.partial_stride,
            logits: bytemuck::cast_slice_mut(logits),
            probs: bytemuck::cast_slice_mut(probs),
        };
        // Back to back: this push started within the workers' poll after the last one ended.
        let back_to_back = self.last_push_end.is_some_and(|end| end.elapsed() < SPIN);
        let scored = score_strip(
            &mut self.workers,
            &strip,
            buffers,
            (self.small_strips, back_to_back),
            |block| {
                let first = block.first_tile;
                match block.partial {
                    Ok((acc, max_logit, weight_sum)) => {
                        combine(&mut agg, acc, max_logit, weight_sum);
                        Ok(())
                    }
                    Err(BlockError::NonFiniteInput { tile, feature }) => {
                        Err(non_finite_input(x, stride, first + tile, feature))
                    }
                    Err(BlockError::Overflow { tile }) => {
                        Err(Error::NumericalOverflow { tile: first + tile })
                    }
                }
            },
        );
        if self.workers.threads() > 1 {
            self.last_push_end = Some(Instant::now());
        }
        scored?;
        (self.max_logit, self.weight_sum) = (agg.max_logit, agg.weight_sum);
        if !agg.acc.iter().all(|v| v.is_finite()) {
            return Err(Error::NumericalOverflow { tile: n - 1 });
        }
        Ok(())
    }

    /// Recomputes the slide logits and probabilities from the aggregate (at least one tile);
    /// returns whether they are all finite.
    fn update_slide_outputs(&mut self) -> bool {
        let model = Arc::clone(&self.model);
        let w = model.weights(self.kernels.isa, self.bf16_pairs);
        let h = model.config().hidden_dim;
        let plan = self.plan.clone();
        let [acc, logits_out, probs_out] = split_disjoint(
            self.region.bytes_mut(),
            [&plan.acc, &plan.slide_logits, &plan.slide_probs],
        );
        let acc: &[f64] = bytemuck::cast_slice(acc);
        let logits_out: &mut [f32] = bytemuck::cast_slice_mut(logits_out);
        let probs_out: &mut [f32] = bytemuck::cast_slice_mut(probs_out);
        let inv = 1.0 / self.weight_sum;
        // The softmax runs on the f64 logits: with f32-rounded ones, a logit of 1e10 rounds
        // by hundreds and a "probability" above 1 came out (found by the session fuzz target).
        let mut z = [0.0f64; MAX_CLASSES];
        let z = &mut z[..logits_out.len()];
        for (c, (z, out)) in z.iter_mut().zip(logits_out.iter_mut()).enumerate() {
            let row = &w.classifier_weight[c * h..(c + 1) * h];
            *z = w.classifier_bias[c] as f64
                + inv * row.iter().zip(acc).map(|(w, a)| *w as f64 * a).sum::<f64>();
            *out = *z as f32;
        }
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for z in z.iter_mut() {
            *z = (*z - max).exp();
            sum += *z;
        }
        for (p, e) in probs_out.iter_mut().zip(z.iter()) {
            *p = (*e / sum) as f32;
        }
        logits_out
            .iter()
            .chain(probs_out.iter())
            .all(|v| v.is_finite())
    }

    /// The slide's result over every tile pushed so far: slide probabilities, predicted class,
    /// normalised attention, tile probabilities and the tumor mask. Does not end the slide:
    /// more tiles may be pushed afterwards (and `finalize` called again).
    pub fn finalize(&mut self) -> Result<SlideResult<'_>> {
        if self.len == 0 {
            return Err(Error::EmptySession);
        }
        if !self.finalized {
            let threshold = self.model.threshold();
            let plan = self.plan.clone();
            let [logits, probs, attention, mask] = split_disjoint(
                self.region.bytes_mut(),
                [&plan.logits, &plan.probs, &plan.attention, &plan.mask],
            );
            let logits: &[f32] = bytemuck::cast_slice(logits);
            let probs: &[f32] = bytemuck::cast_slice(probs);
            let attention: &mut [f32] = bytemuck::cast_slice_mut(attention);
            let inv = 1.0 / self.weight_sum;
            for i in 0..self.len {
                attention[i] = ((logits[i] as f64 - self.max_logit).exp() * inv) as f32;
                mask[i] = u8::from(probs[i] >= threshold);
            }
            self.finalized = true;
        }
        Ok(self.result())
    }

    fn result(&self) -> SlideResult<'_> {
        let n = self.len;
        let bytes = self.region.bytes();
        let slide_probabilities = self.f32s(&self.plan.slide_probs);
        let mut predicted_class = 0;
        for (c, p) in slide_probabilities.iter().enumerate() {
            if *p > slide_probabilities[predicted_class] {
                predicted_class = c;
            }
        }
        let tile_mask = &bytes[self.plan.mask.clone()][..n];
        SlideResult {
            slide_logits: self.f32s(&self.plan.slide_logits),
            slide_probabilities,
            predicted_class,
            tumor_probability: slide_probabilities[self.model.config().tumor_class],
            attention: &self.f32s(&self.plan.attention)[..n],
            attention_logits: self.attention_logits(),
            tile_probabilities: self.tile_probabilities(),
            tile_mask,
            tumor_tiles: tile_mask.iter().filter(|m| **m != 0).count(),
            coordinates: self.coordinates(),
            out_of_distribution_fraction: self.out_of_distribution_fraction(),
        }
    }

    /// Forgets the current slide and starts the next one, keeping all memory.
    pub fn reset(&mut self) {
        self.len = 0;
        self.max_logit = f64::NEG_INFINITY;
        self.weight_sum = 0.0;
        self.coordinates = Coordinates::NotYetKnown;
        self.finalized = false;
        self.outside_tiles = 0;
        let plan = self.plan.clone();
        bytemuck::cast_slice_mut::<u8, f64>(&mut self.region.bytes_mut()[plan.acc]).fill(0.0);
    }
}

/// The error for the value at `feature` of tile `tile` (in the push) of `x`.
fn non_finite_input(x: &[f32], stride: usize, tile: usize, feature: usize) -> Error {
    Error::NonFiniteInput {
        tile,
        feature,
        value: x[tile * stride + feature],
    }
}
