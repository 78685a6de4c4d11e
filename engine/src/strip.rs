//! How a push's strip is computed on the session's threads, block by block, with each block's
//! partial sum handed back in slide order.
//!
//! - A strip of one block ([`BLOCK_TILES`] tiles or fewer) on several threads is split by the
//!   layers' output panels ([`compute_block_share`]): every thread computes its share of every
//!   layer, reading only that share of the weights (while the workers are awake; see
//!   [`score_strip`]).
//! - A longer strip is cut into blocks, computed in rounds of up to [`BLOCKS_PER_JOB`] blocks
//!   per thread: the threads take the round's blocks one at a time, in slide order, as they
//!   become free (a thread slowed down by other work on its core takes fewer).
//!
//! Either way every output is computed by the same operations as on one thread, and the
//! partial sums are folded in slide order, so the results do not depend on the thread count.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Result;
use crate::forward::{
    compute_block, compute_block_share, Block, BlockError, BlockScratch, Partial, SplitBlock,
    BLOCK_TILES,
};
use crate::kernels::{KernelPlan, PanelOrder};
use crate::memory::{split_disjoint, ScratchLayout, BLOCKS_PER_JOB};
use crate::model::WeightViews;
use crate::session::{SmallStripSplit, MAX_THREADS};
use crate::workers::Workers;

/// The network and the tiles of one push.
pub(crate) struct Strip<'a> {
    pub kernels: KernelPlan,
    pub weights: WeightViews<'a>,
    /// `(D, H, K)`.
    pub dims: (usize, usize, usize),
    /// `n` rows of `D` embeddings, `stride` apart.
    pub x: &'a [f32],
    pub n: usize,
    pub stride: usize,
    /// The slide's index of the strip's first tile.
    pub base: usize,
}

/// The session's buffers a push writes.
pub(crate) struct StripBuffers<'a> {
    /// One [`ScratchLayout`] per thread, `layout.stride` bytes apart.
    pub scratch: &'a mut [u8],
    pub layout: &'a ScratchLayout,
    /// `threads x BLOCKS_PER_JOB` partial sums of `H` f64, `partial_stride` bytes apart.
    pub partials: &'a mut [u8],
    pub partial_stride: usize,
    /// The slide's per-tile outputs (the strip's tiles from `base` on).
    pub logits: &'a mut [f32],
    pub probs: &'a mut [f32],
}

/// What a block's pass reported: its partial sum's scalars, or why it failed.
#[derive(Debug, Default, Clone, Copy)]
struct BlockReport {
    /// The block's largest attention logit and weight sum (its [`Partial`]'s scalars).
    scalars: (f64, f64),
    /// Why the block failed, if it did.
    failure: Option<BlockError>,
}

impl BlockReport {
    /// The report of a block's pass that ended with `done`, leaving `partial`.
    fn of(done: std::result::Result<(), BlockError>, partial: &Partial<'_>) -> BlockReport {
        match done {
            Ok(()) => BlockReport {
                scalars: (partial.max_logit, partial.weight_sum),
                failure: None,
            },
            Err(e) => BlockReport {
                scalars: (0.0, 0.0),
                failure: Some(e),
            },
        }
    }
}

/// A block's result, as [`score_strip`] hands it back.
pub(crate) struct BlockResult<'a> {
    /// The strip's index of the block's first tile.
    pub first_tile: usize,
    /// The block's attention-weighted sum (`H` values), largest logit and weight sum; or the
    /// failure, with the tile's index in the block.
    pub partial: std::result::Result<(&'a [f64], f64, f64), BlockError>,
}

/// Computes the strip on `workers` and calls `fold` with each block's result, in slide order.
/// Stops at the first error `fold` returns (a failed block is reported to `fold` like any
/// other; the blocks after it may have been computed, and their outputs written).
///
/// A strip of one block is split between the threads as `small_strips` says: with
/// [`SmallStripSplit::WhenBackToBack`], if the pushes come `back_to_back` (this one started
/// less than [`crate::workers::SPIN`] after the last ended) or the workers are polling for
/// work anyway. Otherwise it runs on this thread: a split block waits for every thread, and
/// waking a sleeping one took 0.2-0.3 ms on the virtual machines measured, longer than a
/// strip of one tile takes on one thread.
pub(crate) fn score_strip(
    workers: &mut Workers,
    strip: &Strip<'_>,
    buffers: StripBuffers<'_>,
    (small_strips, back_to_back): (SmallStripSplit, bool),
    mut fold: impl FnMut(BlockResult<'_>) -> Result<()>,
) -> Result<()> {
    let threads = workers.threads();
    let n = strip.n;
    let h = strip.dims.1;
    let blocks = n.div_ceil(BLOCK_TILES);
    let split = blocks == 1
        && threads > 1
        && match small_strips {
            SmallStripSplit::WhenBackToBack => back_to_back || workers.polling(),
            SmallStripSplit::Always => true,
            SmallStripSplit::Never => false,
        };
    let mut reports = [BlockReport::default(); MAX_THREADS * BLOCKS_PER_JOB];
    let StripBuffers {
        scratch,
        layout,
        partials,
        partial_stride,
        logits,
        probs,
    } = buffers;
    let mut first = 0;
    while first < blocks {
        // Made anew for each round: the reads of `reports` and `partials` below, between two
        // rounds, end the previous round's pointers' exclusive access.
        let out = Outputs {
            scratch: SharedMut(scratch.as_mut_ptr()),
            layout,
            partials: SharedMut(partials.as_mut_ptr()),
            partial_stride,
            logits: SharedMut(logits.as_mut_ptr()),
            probs: SharedMut(probs.as_mut_ptr()),
            reports: SharedMut(reports.as_mut_ptr()),
        };
        let count = if split {
            // SAFETY: the scratch region holds `threads` slices laid out by `layout` (the plan
            // was made for this session's thread count), 64-byte aligned, and nothing else
            // reaches it until `run` returns, after the split block's last use.
            let split = unsafe { SplitBlock::new(out.scratch.get(), layout, threads) };
            workers.run(&|worker| out.split_part(strip, worker, &split))?;
            1
        } else {
            // A round of `count` blocks on `used` threads (at most BLOCKS_PER_JOB each).
            let per = BLOCKS_PER_JOB.min((blocks - first).div_ceil(threads));
            let used = threads.min((blocks - first).div_ceil(per));
            let count = (used * per).min(blocks - first);
            let next = AtomicUsize::new(0);
            let job = |worker: usize| {
                if worker < used {
                    out.take_blocks(strip, worker, first, count, &next);
                }
            };
            if used == 1 {
                // One thread: the others would only be woken to find nothing to do.
                job(0);
            } else {
                workers.run(&job)?;
            }
            count
        };
        for (slot, report) in reports[..count].iter().enumerate() {
            let at = slot * partial_stride;
            let (max_logit, weight_sum) = report.scalars;
            fold(BlockResult {
                first_tile: (first + slot) * BLOCK_TILES,
                partial: match report.failure {
                    Some(e) => Err(e),
                    None => Ok((
                        bytemuck::cast_slice(&partials[at..at + h * 8]),
                        max_logit,
                        weight_sum,
                    )),
                },
            })?;
        }
        first += count;
    }
    Ok(())
}

/// The buffers a job's threads write, as raw pointers: each thread writes only its own
/// scratch and the blocks (outputs, partial sum, report) handed to it; the threads of a split
/// block also read each other's scratch, as [`SplitBlock`]'s protocol says.
struct Outputs<'a> {
    scratch: SharedMut<u8>,
    layout: &'a ScratchLayout,
    partials: SharedMut<u8>,
    partial_stride: usize,
    logits: SharedMut<f32>,
    probs: SharedMut<f32>,
    /// [`MAX_THREADS`]` * `[`BLOCKS_PER_JOB`] reports.
    reports: SharedMut<BlockReport>,
}

impl Outputs<'_> {
    /// Worker `worker`'s part of a strip of one block split between the threads of `split`;
    /// worker 0 writes the block's outputs, partial sum and report (slot 0).
    fn split_part(&self, strip: &Strip<'_>, worker: usize, split: &SplitBlock<'_>) {
        // Taken first: from here on, a panic still lets the other threads go on.
        let part = split.join(worker);
        let (n, h) = (strip.n, strip.dims.1);
        // Only worker 0 writes the block's results; the others compute their share of the
        // layers into their own scratch.
        let (logits, probs, acc, report): (&mut [f32], &mut [f32], &mut [f64], _) = if worker == 0 {
            // SAFETY: only worker 0 writes the strip's outputs `base..base + n` (inside the
            // capacity, checked before the push), the first partial sum (the plan holds at
            // least one) and the first report; all alive until the job returns.
            unsafe {
                (
                    std::slice::from_raw_parts_mut(self.logits.get().add(strip.base), n),
                    std::slice::from_raw_parts_mut(self.probs.get().add(strip.base), n),
                    bytemuck::cast_slice_mut(std::slice::from_raw_parts_mut(
                        self.partials.get(),
                        h * 8,
                    )),
                    Some(&mut *self.reports.get()),
                )
            }
        } else {
            (&mut [], &mut [], &mut [], None)
        };
        let block = Block {
            x: strip.x,
            n,
            stride: strip.stride,
            logits,
            probs,
            order: panel_order(strip.base, n),
        };
        let mut partial = Partial {
            acc,
            max_logit: f64::NEG_INFINITY,
            weight_sum: 0.0,
        };
        let done = compute_block_share(
            strip.kernels.isa,
            &strip.kernels,
            &strip.weights,
            strip.dims,
            block,
            part,
            &mut partial,
        );
        if let Some(report) = report {
            *report = BlockReport::of(done, &partial);
        }
    }

    /// Worker `worker`'s part of a round of blocks `first..first + count`: takes the round's
    /// blocks from `next` one at a time until none is left.
    fn take_blocks(
        &self,
        strip: &Strip<'_>,
        worker: usize,
        first: usize,
        count: usize,
        next: &AtomicUsize,
    ) {
        let (n, h, layout) = (strip.n, strip.dims.1, self.layout);
        // SAFETY: worker `w < used <= threads` uses only scratch slice `w` (the scratch region
        // holds `threads` slices): disjoint between workers, and alive until `run` returns.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(
                self.scratch.get().add(worker * layout.stride),
                layout.stride,
            )
        };
        let [hidden, att_a, att_b, pack] = split_disjoint(
            mine,
            [&layout.hidden, &layout.att_a, &layout.att_b, &layout.pack],
        );
        let mut scratch = BlockScratch {
            hidden: bytemuck::cast_slice_mut(hidden),
            att_a: bytemuck::cast_slice_mut(att_a),
            att_b: bytemuck::cast_slice_mut(att_b),
            pack: bytemuck::cast_slice_mut(pack),
        };
        loop {
            // Each slot of the round is handed out once, to one thread.
            let slot = next.fetch_add(1, Ordering::Relaxed);
            if slot >= count {
                return;
            }
            let start = (first + slot) * BLOCK_TILES;
            let nb = BLOCK_TILES.min(n - start);
            let tile = strip.base + start;
            // SAFETY: `fetch_add` hands slot `slot` to this thread alone, and distinct slots
            // are distinct blocks: its tiles `tile..tile + nb` lie inside the per-tile outputs
            // (the push was checked against the capacity); `slot < count <= used * per <=
            // threads * BLOCKS_PER_JOB`, the number of partial sums the plan gives the partials
            // region (built for this session's thread count), and `<= MAX_THREADS *
            // BLOCKS_PER_JOB`, the number of reports. All alive until `run` returns.
            let (logits, probs, acc, report) = unsafe {
                (
                    std::slice::from_raw_parts_mut(self.logits.get().add(tile), nb),
                    std::slice::from_raw_parts_mut(self.probs.get().add(tile), nb),
                    std::slice::from_raw_parts_mut(
                        self.partials.get().add(slot * self.partial_stride),
                        h * 8,
                    ),
                    &mut *self.reports.get().add(slot),
                )
            };
            let mut partial = Partial {
                acc: bytemuck::cast_slice_mut(acc),
                max_logit: f64::NEG_INFINITY,
                weight_sum: 0.0,
            };
            let block = Block {
                x: &strip.x[start * strip.stride..],
                n: nb,
                stride: strip.stride,
                logits,
                probs,
                order: panel_order(tile, nb),
            };
            let done = compute_block(
                strip.kernels.isa,
                &strip.kernels,
                &strip.weights,
                strip.dims,
                block,
                &mut scratch,
                &mut partial,
            );
            *report = BlockReport::of(done, &partial);
        }
    }
}

/// The order of the weights' panels for a block of `tiles` tiles from tile `first` of the
/// slide: consecutive blocks walk the weights in turn forward and backward (for strips of one
/// tile: every other push).
fn panel_order(first: usize, tiles: usize) -> PanelOrder {
    if (first / tiles).is_multiple_of(2) {
        PanelOrder::Forward
    } else {
        PanelOrder::Backward
    }
}

/// A raw pointer shared with the worker threads for the duration of one job.
struct SharedMut<T>(*mut T);

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: the workers write through these pointers only to disjoint ranges, one per worker or
// per block of a round (see `Outputs`), and read another worker's scratch only as
// `SplitBlock`'s protocol allows, while the session waits for them.
unsafe impl<T> Sync for SharedMut<T> {}
unsafe impl<T> Send for SharedMut<T> {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::format::ModelWriter;
    use crate::{
        AttentionKind, Isa, Model, ModelConfig, ModelWeights, SessionOptions, SlideSession,
        SmallStripSplit, TileClassifierKind,
    };

    /// Small enough for Miri (`cargo +nightly miri test -p msclam-engine --lib strip`), which
    /// checks the threads' raw-pointer protocol for data races and aliasing: split strips (1,
    /// 5 and 40 tiles) and a strip of 3 blocks in rounds (under Miri, one block per thread and
    /// round: 3 rounds on 1 thread, 2 on 2) give the bits of one thread. `scripts/miri` runs it
    /// under both of Miri's aliasing models.
    #[test]
    fn split_and_claimed_blocks_give_the_bits_of_one_thread() {
        let config = ModelConfig {
            input_dim: 9,
            hidden_dim: 40, // 3 panels
            attention_dim: 20,
            attention: AttentionKind::Gated,
            num_classes: 2,
            tile_classifier: TileClassifierKind::SingleBinary,
            tumor_class: 1,
            threshold: 0.5,
        };
        let mut weights = ModelWeights::zeros(config);
        let mut v = 0.37f32;
        for id in crate::format::TensorId::ALL {
            for w in weights.tensor_mut(id).into_iter().flatten() {
                v = (v * 3.7 + 0.11).fract();
                *w = v - 0.5;
            }
        }
        let model =
            Arc::new(Model::from_bytes(&ModelWriter::new(&weights).to_bytes().unwrap()).unwrap());
        let n = 300 + 46;
        let x: Vec<f32> = (0..n * 9)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let run = |threads: usize| {
            let options = SessionOptions {
                isa: Isa::Portable,
                threads,
                small_strips: SmallStripSplit::Always,
                ..SessionOptions::default()
            };
            let mut s = SlideSession::with_options(model.clone(), n, options).unwrap();
            let mut start = 0;
            for size in [1, 5, 300, 40] {
                s.push(&x[start * 9..(start + size) * 9], None).unwrap();
                start += size;
            }
            let r = s.finalize().unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (
                bits(r.attention),
                bits(r.tile_probabilities),
                bits(r.slide_logits),
            )
        };
        let one = run(1);
        assert!(run(2) == one && run(3) == one);
    }
}
