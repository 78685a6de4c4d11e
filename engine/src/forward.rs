//! The network's forward pass over one block of tiles, folded into the slide's running
//! attention-weighted sum: the arithmetic of a push, without the session's bookkeeping.
//!
//! [`compute_block`], for each tile: `h = ReLU(W1 x + b1)`, the attention logit from
//! `tanh(Va h)` (gated by `sigmoid(Ua h)`), the tumor probability from the tile classifier.
//! It also sums the block's own attention-weighted hidden vectors, `sum_i exp(s_i - m_b) h_i`
//! with `m_b` the block's largest logit (a [`Partial`], in f64). [`combine`] then adds the
//! partials to the slide's aggregate in slide order (an online softmax over blocks). Blocks may
//! be computed on several threads; the partials are combined in the same order whatever the
//! thread count, so the result does not depend on it. One block may also be split between
//! threads by the layers' outputs ([`compute_block_share`], [`SplitBlock`]): each computes its
//! share of every layer with the same kernels, thread 0 gathers the shares and ends the pass.
//! Every function here is compiled once per instruction set, so the row-wise activations
//! vectorise as widely as the matrix kernels.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::kernels::{
    dense, padded_rows, rows, Isa, KernelPlan, PanelOrder, PACK_FLOATS, PANEL_WIDTH,
};
use crate::memory::ScratchLayout;
use crate::model::{MatrixWeights, WeightViews};
use crate::session::MAX_THREADS;
use crate::workers::Arrivals;

/// Tiles processed together by the matrix kernels (the scratch buffers hold this many rows).
pub const BLOCK_TILES: usize = 128;

/// Blocks of at least this many tiles read 16-bit weights from their f32 copies. Measured on an
/// Intel Xeon (2 MiB L2), one process alternating both: with AVX-512, 16-bit weights at 8
/// tiles (8-row tiles) were 1.08x the f32 copy, at 12 and 16 tiles 0.92-0.99x (the widening
/// costs more than the L2-resident bytes save), at 32 and more 0.82-0.86x; AVX2, whose
/// widening takes more instructions per multiply-add, switches from 8 tiles on.
fn wide_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Amx => 9,
        _ => 8,
    }
}

/// Scratch for one block: hidden and attention pre-activations of [`BLOCK_TILES`] tiles.
pub(crate) struct BlockScratch<'a> {
    /// `BLOCK_TILES x padded_rows(H)`.
    pub hidden: &'a mut [f32],
    /// `BLOCK_TILES x padded_rows(K)`.
    pub att_a: &'a mut [f32],
    /// `BLOCK_TILES x padded_rows(K)` if gated, else empty.
    pub att_b: &'a mut [f32],
    /// [`crate::kernels::PACK_FLOATS`]: the matrix kernels' packed input rows.
    pub pack: &'a mut [f32],
}

/// One block's attention-weighted sum of hidden vectors, relative to its largest logit.
pub(crate) struct Partial<'a> {
    /// `sum_i exp(s_i - max_logit) h_i`, `H` values.
    pub acc: &'a mut [f64],
    /// The block's largest attention logit.
    pub max_logit: f64,
    /// `sum_i exp(s_i - max_logit)`.
    pub weight_sum: f64,
}

/// The slide's running attention-weighted sum of hidden vectors (online softmax).
pub(crate) struct Aggregate<'a> {
    /// `sum_i exp(s_i - max_logit) h_i`, `H` values.
    pub acc: &'a mut [f64],
    /// Largest attention logit so far (`-inf` before the first tile).
    pub max_logit: f64,
    /// `sum_i exp(s_i - max_logit)`.
    pub weight_sum: f64,
}

/// Defines `$name(isa, args..)`, which runs `$body(args..)` compiled for `isa`.
macro_rules! dispatch_by_isa {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident) => {
        $(#[$doc])*
        pub(crate) fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            fn avx512($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            match isa.vector() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a session only runs an instruction set this CPU supports (checked
                // when it is created); the body needs nothing else.
                Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Isa::Avx2Fma => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}

/// Why a block's pass stopped, with the tile's index in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockError {
    /// The tile's embedding holds a NaN or an infinity at `feature`.
    NonFiniteInput { tile: usize, feature: usize },
    /// The tile's attention or tile logit is not finite, from finite embeddings.
    Overflow { tile: usize },
}

/// The block's input and where its per-tile outputs go.
pub(crate) struct Block<'a> {
    /// `n` rows of `D` embeddings, `stride` apart.
    pub x: &'a [f32],
    pub n: usize,
    pub stride: usize,
    /// Attention logit of each tile (`n` values).
    pub logits: &'a mut [f32],
    /// Tumor probability of each tile (`n` values).
    pub probs: &'a mut [f32],
    /// The order of the weights' panels for a block of a few tiles: alternated between
    /// consecutive blocks (speed only; see [`dense`]).
    pub order: PanelOrder,
}

dispatch_by_isa! {
    /// Runs the network over `block.n <= BLOCK_TILES` tiles: attention logits and tumor
    /// probabilities into the block's outputs, and the block's [`Partial`] into `partial`
    /// (`acc` of `H` values; its other fields are set here).
    ///
    /// Errors with the first tile (in the block) whose embedding is not finite, else with the
    /// first whose attention or tile logit is not finite. The embeddings are checked on the
    /// way (see [`compute_body`]), so a caller needs no pass over them of its own.
    fn compute_block(
        plan: &KernelPlan,
        w: &WeightViews<'_>,
        dims: (usize, usize, usize),
        block: Block<'_>,
        scratch: &mut BlockScratch<'_>,
        partial: &mut Partial<'_>
    ) -> Result<(), BlockError> = compute_body
}

dispatch_by_isa! {
    /// Thread `joined.part`'s share of a block split between the threads of `joined.split`
    /// ([`SplitBlock`]), called by every one of them at once: its [`panel_share`] of the
    /// hidden layer, then of the attention products. Thread 0 then gathers the other shares
    /// and runs the row-wise end of the pass, as [`compute_block`] does: into `block`'s
    /// outputs and `partial` (the other threads' are not touched and may be empty), with the
    /// same errors. Every output is computed by the same operations as in [`compute_block`],
    /// so the results are the same bits.
    fn compute_block_share(
        plan: &KernelPlan,
        w: &WeightViews<'_>,
        dims: (usize, usize, usize),
        block: Block<'_>,
        joined: SplitPart<'_>,
        partial: &mut Partial<'_>
    ) -> Result<(), BlockError> = compute_share_body
}

/// Adds a block's partial sum (`acc`, relative to `max_logit`, with `weight_sum`) to the
/// slide's aggregate: an online softmax over blocks.
pub(crate) fn combine(agg: &mut Aggregate<'_>, acc: &[f64], max_logit: f64, weight_sum: f64) {
    let max = agg.max_logit.max(max_logit);
    let (old, new) = ((agg.max_logit - max).exp(), (max_logit - max).exp());
    agg.weight_sum = agg.weight_sum * old + weight_sum * new;
    for (a, p) in agg.acc.iter_mut().zip(acc) {
        *a = *a * old + *p * new;
    }
    agg.max_logit = max;
}

dispatch_by_isa! {
    /// The first `(tile, feature)` of `n` rows of `d` embeddings (`stride` apart) that is NaN
    /// or infinite, if any: the check before a push, vectorised as widely as the pass.
    fn find_non_finite(
        x: &[f32],
        n: usize,
        stride: usize,
        d: usize
    ) -> Option<(usize, usize)> = find_non_finite_body
}

// A plain loop: iterator adapters would not be inlined into the per-instruction-set wrappers.
#[inline(always)]
fn find_non_finite_body(x: &[f32], n: usize, stride: usize, d: usize) -> Option<(usize, usize)> {
    for tile in 0..n {
        let row = &x[tile * stride..tile * stride + d];
        if !rows::all_finite(row) {
            return row.iter().position(|v| !v.is_finite()).map(|f| (tile, f));
        }
    }
    None
}

/// The pass itself, inlined into each instruction set's wrapper. Its row-wise arithmetic uses
/// no fused multiply-add, so only the matrix kernels differ between instruction sets.
///
/// The embeddings' finiteness check rides on the ReLU: the weights are finite (the reader
/// checks), so a NaN or an infinity in a tile's embedding makes every one of its hidden
/// pre-activations NaN or infinite (`inf * w` is infinite or, for `w = 0`, NaN, and sums
/// keep it). Only a tile flagged there has its embedding scanned, to name the feature; a
/// flagged tile with a finite embedding has overflowed, which the logit check reports. (int8
/// rows with such a value get a NaN scale, bf16 pairs keep NaN and infinity: the same holds.)
#[inline(always)]
fn compute_body<'a>(
    plan: &KernelPlan,
    w: &WeightViews<'a>,
    (d, h, k): (usize, usize, usize),
    block: Block<'_>,
    scratch: &mut BlockScratch<'_>,
    partial: &mut Partial<'_>,
) -> Result<(), BlockError> {
    let (h16, k16, isa) = (padded_rows(h), padded_rows(k), plan.isa);
    let Block {
        x,
        n,
        stride,
        logits,
        probs,
        order,
    } = block;
    let (hidden, pack) = (&mut *scratch.hidden, &mut *scratch.pack);
    // 16-bit weights halve the bytes read per block, which is what limits blocks of a few
    // tiles; from `wide_rows` tiles on, the multiply-adds are the limit and the f32 copy saves
    // the widening. Same values, same operations: the results do not depend on the choice.
    let pick = |m: MatrixWeights<'a>, widened: &'a [f32]| {
        if n >= wide_rows(isa) && !widened.is_empty() {
            MatrixWeights::F32(widened)
        } else {
            m
        }
    };
    let (w1, b1) = (pick(w.fc_weight, w.widened[0]), w.fc_bias);
    dense(plan, x, n, d, stride, w1, h, b1, hidden, h16, pack, order);
    let mut flagged = false;
    for r in 0..n {
        flagged |= !rows::relu_in_place_finite(&mut hidden[r * h16..r * h16 + h]);
    }
    if flagged {
        if let Some((tile, feature)) = find_non_finite_body(x, n, stride, d) {
            return Err(BlockError::NonFiniteInput { tile, feature });
        }
    }
    let (va, ba) = (pick(w.attention_a_weight, w.widened[1]), w.attention_a_bias);
    dense(
        plan,
        hidden,
        n,
        h,
        h16,
        va,
        k,
        ba,
        scratch.att_a,
        k16,
        pack,
        order,
    );
    if let Some((ua, bu)) = w.attention_b {
        let ua = pick(ua, w.widened[2]);
        dense(
            plan,
            hidden,
            n,
            h,
            h16,
            ua,
            k,
            bu,
            scratch.att_b,
            k16,
            pack,
            order,
        );
    }
    let outputs = BlockOutputs {
        logits,
        probs,
        partial,
    };
    finish_body(
        isa,
        w,
        (h, k),
        n,
        hidden,
        scratch.att_a,
        scratch.att_b,
        outputs,
    )
}

/// A block's per-tile outputs and its partial sum.
struct BlockOutputs<'o, 'p> {
    /// Attention logit of each tile (`n` values).
    logits: &'o mut [f32],
    /// Tumor probability of each tile (`n` values).
    probs: &'o mut [f32],
    /// The block's attention-weighted sum.
    partial: &'o mut Partial<'p>,
}

/// The row-wise end of a block's pass, from its hidden layer and attention pre-activations
/// (`att_a` is overwritten with the attention terms): the tiles' attention logits and tumor
/// probabilities, then the block's [`Partial`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn finish_body(
    isa: Isa,
    w: &WeightViews<'_>,
    (h, k): (usize, usize),
    n: usize,
    hidden: &[f32],
    att_a: &mut [f32],
    att_b: &[f32],
    outputs: BlockOutputs<'_, '_>,
) -> Result<(), BlockError> {
    let (h16, k16) = (padded_rows(h), padded_rows(k));
    let BlockOutputs {
        logits,
        probs,
        partial,
    } = outputs;
    let mut block_max = f64::NEG_INFINITY;
    for r in 0..n {
        let hr = &hidden[r * h16..r * h16 + h];
        let terms = &mut att_a[r * k16..r * k16 + k];
        let gate = w.attention_b.map(|_| &att_b[r * k16..r * k16 + k]);
        rows::attention_terms(terms, gate);
        let s = rows::dot_f64(isa, terms, w.attention_c_weight, w.attention_c_bias as f64);
        let (tumor, not_tumor) = rows::dot2_f64(
            isa,
            hr,
            w.tile_tumor.0,
            w.tile_not_tumor.0,
            w.tile_tumor.1 as f64,
            w.tile_not_tumor.1 as f64,
        );
        let z = tumor - not_tumor;
        let s32 = s as f32;
        if !s32.is_finite() || !z.is_finite() {
            return Err(BlockError::Overflow { tile: r });
        }
        logits[r] = s32;
        probs[r] = rows::sigmoid(z) as f32;
        block_max = block_max.max(s32 as f64);
    }
    partial.acc.fill(0.0);
    partial.max_logit = block_max;
    partial.weight_sum = 0.0;
    for (r, logit) in logits.iter().enumerate() {
        let weight = (*logit as f64 - block_max).exp();
        partial.weight_sum += weight;
        rows::axpy_f64(partial.acc, weight, &hidden[r * h16..r * h16 + h]);
    }
    Ok(())
}

/// The output panels, out of `panels`, that thread `part` of `parts` computes when a block is
/// split between threads: contiguous ranges of whole pairs of panels, in thread order (every
/// panel once; a range may be empty).
pub(crate) fn panel_share(panels: usize, part: usize, parts: usize) -> Range<usize> {
    let pairs = panels.div_ceil(2);
    let at = |t: usize| (pairs * t / parts * 2).min(panels);
    at(part)..at(part + 1)
}

/// One thread's scratch buffers, as raw pointers (see [`SplitBlock`]).
#[derive(Clone, Copy)]
struct ScratchPointers {
    hidden: *mut f32,
    att_a: *mut f32,
    att_b: *mut f32,
    pack: *mut f32,
}

/// What the threads splitting one block share: every thread's scratch (each writes its own;
/// the others read it only after the point that says it is written) and those points.
///
/// The protocol of [`compute_block_share`]: each thread writes its share of the hidden layer
/// into its own `hidden` and arrives at `hidden_done`; once all have, each copies the others'
/// shares into its own `hidden` (reading only their shares' columns, which no thread writes
/// any more), then writes its share of the attention products into its own `att_a`/`att_b`
/// and arrives at `attention_done`, after which only thread 0 reads them. Each thread takes
/// its part once ([`SplitBlock::join`]); a thread that panics still arrives (when its
/// [`SplitPart`] is dropped), so the others never wait forever.
pub(crate) struct SplitBlock<'s> {
    parts: usize,
    scratch: *mut u8,
    layout: &'s ScratchLayout,
    hidden_done: Arrivals,
    attention_done: Arrivals,
    /// Whether a thread's share of the hidden layer has a non-finite value.
    flagged: AtomicBool,
    /// Which parts were taken.
    joined: [AtomicBool; MAX_THREADS],
}

// SAFETY: the threads reach the scratch behind `scratch` only as the protocol above says:
// each writes its own buffers, and reads another's only where the arrivals say that no
// thread writes any more; the counters and the flag are atomics.
unsafe impl Sync for SplitBlock<'_> {}

impl<'s> SplitBlock<'s> {
    /// A block split between `parts` threads, whose scratch slices start at `scratch`,
    /// `layout.stride` bytes apart.
    ///
    /// # Safety
    /// `scratch` must be valid for reads and writes of `parts * layout.stride` bytes, aligned
    /// to 4, and not accessed otherwise while the returned value is used.
    pub unsafe fn new(scratch: *mut u8, layout: &'s ScratchLayout, parts: usize) -> Self {
        assert!((1..=MAX_THREADS).contains(&parts));
        SplitBlock {
            parts,
            scratch,
            layout,
            hidden_done: Arrivals::new(),
            attention_done: Arrivals::new(),
            flagged: AtomicBool::new(false),
            joined: [const { AtomicBool::new(false) }; MAX_THREADS],
        }
    }

    /// Thread `part`'s part of the block; each part is taken once. Take it before anything
    /// else, so that even a panic lets the other threads go on.
    pub fn join(&'s self, part: usize) -> SplitPart<'s> {
        assert!(
            part < self.parts && !self.joined[part].swap(true, Ordering::Relaxed),
            "part {part} of a block split {} ways, taken once",
            self.parts
        );
        SplitPart {
            split: self,
            part,
            hidden: false,
            attention: false,
        }
    }

    /// Whether each thread's scratch holds a block of a model with `h` hidden and `k`
    /// attention outputs.
    fn fits(&self, h: usize, k: usize, gated: bool) -> bool {
        let l = self.layout;
        let floats = |r: &Range<usize>| r.len() / 4;
        floats(&l.hidden) >= BLOCK_TILES * padded_rows(h)
            && floats(&l.att_a) >= BLOCK_TILES * padded_rows(k)
            && floats(&l.att_b)
                >= if gated {
                    BLOCK_TILES * padded_rows(k)
                } else {
                    0
                }
            && floats(&l.pack) >= PACK_FLOATS
    }

    /// Thread `part`'s buffers.
    fn buffers(&self, part: usize) -> ScratchPointers {
        assert!(part < self.parts);
        let l = self.layout;
        // SAFETY: `part < parts`, so the slice starts inside the scratch (`new`'s contract),
        // and its layout's ranges lie inside its `stride` bytes.
        let at = |start: usize| unsafe { self.scratch.add(part * l.stride + start).cast() };
        ScratchPointers {
            hidden: at(l.hidden.start),
            att_a: at(l.att_a.start),
            att_b: at(l.att_b.start),
            pack: at(l.pack.start),
        }
    }
}

/// One thread's part in a [`SplitBlock`] ([`SplitBlock::join`]): which points it has arrived
/// at. Dropped, it arrives at the rest, so that a panic does not leave the others waiting.
pub(crate) struct SplitPart<'a> {
    split: &'a SplitBlock<'a>,
    /// The thread's index, `0..parts`.
    part: usize,
    hidden: bool,
    attention: bool,
}

impl SplitPart<'_> {
    fn hidden_done(&mut self) {
        self.hidden = true;
        self.split.hidden_done.arrive();
    }
    fn attention_done(&mut self) {
        self.attention = true;
        self.split.attention_done.arrive();
    }
}

impl Drop for SplitPart<'_> {
    fn drop(&mut self) {
        if !self.hidden {
            self.hidden_done();
        }
        if !self.attention {
            self.attention_done();
        }
    }
}

/// Copies, for rows `0..n` of `width`-float rows, columns `cols` from `from` to `to`.
///
/// # Safety
/// Both must be valid for those columns of those rows; nothing writes `from`'s or reads `to`'s
/// columns meanwhile.
unsafe fn copy_columns(from: *const f32, to: *mut f32, n: usize, width: usize, cols: Range<usize>) {
    for r in 0..n {
        let at = r * width + cols.start;
        // SAFETY: the caller's contract; the ranges are in distinct threads' buffers.
        unsafe { std::ptr::copy_nonoverlapping(from.add(at), to.add(at), cols.len()) };
    }
}

/// [`compute_block_share`]'s body, inlined into each instruction set's wrapper.
#[inline(always)]
fn compute_share_body<'a>(
    plan: &KernelPlan,
    w: &WeightViews<'a>,
    (d, h, k): (usize, usize, usize),
    block: Block<'_>,
    mut joined: SplitPart<'_>,
    partial: &mut Partial<'_>,
) -> Result<(), BlockError> {
    let (split, part) = (joined.split, joined.part);
    let (h16, k16, isa, parts) = (padded_rows(h), padded_rows(k), plan.isa, split.parts);
    let Block {
        x,
        n,
        stride,
        logits,
        probs,
        order,
    } = block;
    let gated = w.attention_b.is_some();
    // The raw accesses below stay inside each thread's buffers.
    assert!(n <= BLOCK_TILES && split.fits(h, k, gated));
    let mine = split.buffers(part);
    let (hidden_len, att_len) = (BLOCK_TILES * h16, BLOCK_TILES * k16);
    // SAFETY: this thread's packing buffer, which no other thread touches.
    let pack = unsafe { std::slice::from_raw_parts_mut(mine.pack, PACK_FLOATS) };
    let pick = |m: MatrixWeights<'a>, widened: &'a [f32]| {
        if n >= wide_rows(isa) && !widened.is_empty() {
            MatrixWeights::F32(widened)
        } else {
            m
        }
    };
    let cut = |m: MatrixWeights<'a>, inputs: usize, panels: &Range<usize>| {
        m.panels(inputs, panels.clone())
            .expect("the model's matrices hold every panel of their output")
    };
    // The hidden layer: this thread's panels, into its own buffer.
    let share = panel_share(h16 / PANEL_WIDTH, part, parts);
    let cols = share.start * PANEL_WIDTH..(share.end * PANEL_WIDTH).min(h);
    if !share.is_empty() {
        // SAFETY: this thread's hidden buffer; no other thread reads it before it arrives
        // at `hidden_done`, after this reference's last use.
        let hidden = unsafe { std::slice::from_raw_parts_mut(mine.hidden, hidden_len) };
        let w1 = cut(pick(w.fc_weight, w.widened[0]), d, &share);
        let (b1, out) = (&w.fc_bias[cols.start..], &mut hidden[cols.start..]);
        dense(
            plan,
            x,
            n,
            d,
            stride,
            w1,
            cols.len(),
            b1,
            out,
            h16,
            pack,
            order,
        );
        let mut flagged = false;
        for r in 0..n {
            let row = &mut hidden[r * h16..r * h16 + h];
            flagged |= !rows::relu_in_place_finite(&mut row[cols.clone()]);
        }
        if flagged {
            split.flagged.store(true, Ordering::Relaxed);
        }
    }
    joined.hidden_done();
    split.hidden_done.wait_for(parts);
    for other in (0..parts).filter(|&t| t != part) {
        let share = panel_share(h16 / PANEL_WIDTH, other, parts);
        let cols = share.start * PANEL_WIDTH..share.end * PANEL_WIDTH;
        // SAFETY: the other thread has arrived at `hidden_done`: it no longer writes its
        // share's columns, and nothing else writes them; this thread alone writes those
        // columns of its own buffer. Both lie inside `n <= BLOCK_TILES` rows of `h16` floats.
        unsafe { copy_columns(split.buffers(other).hidden, mine.hidden, n, h16, cols) };
    }
    // SAFETY: complete now; other threads only read this buffer from here on.
    let hidden = unsafe { std::slice::from_raw_parts(mine.hidden, hidden_len) };
    // The attention products: this thread's panels of each.
    let share = panel_share(k16 / PANEL_WIDTH, part, parts);
    let cols = share.start * PANEL_WIDTH..(share.end * PANEL_WIDTH).min(k);
    let mut products = [(
        w.attention_a_weight,
        w.attention_a_bias,
        w.widened[1],
        mine.att_a,
    )]
    .into_iter()
    .chain(w.attention_b.map(|(m, b)| (m, b, w.widened[2], mine.att_b)));
    if !share.is_empty() {
        for (m, bias, widened, out) in &mut products {
            // SAFETY: this thread's buffer; only thread 0 reads it, after `attention_done`.
            let out = unsafe { std::slice::from_raw_parts_mut(out, att_len) };
            let m = cut(pick(m, widened), h, &share);
            let (bias, out) = (&bias[cols.start..], &mut out[cols.start..]);
            dense(
                plan,
                hidden,
                n,
                h,
                h16,
                m,
                cols.len(),
                bias,
                out,
                k16,
                pack,
                order,
            );
        }
    }
    joined.attention_done();
    if part != 0 {
        return Ok(());
    }
    split.attention_done.wait_for(parts);
    for other in 1..parts {
        let share = panel_share(k16 / PANEL_WIDTH, other, parts);
        let cols = share.start * PANEL_WIDTH..share.end * PANEL_WIDTH;
        let theirs = split.buffers(other);
        let pairs = [(theirs.att_a, mine.att_a), (theirs.att_b, mine.att_b)];
        for (from, to) in &pairs[..1 + gated as usize] {
            // SAFETY: every thread has arrived at `attention_done` and writes nothing more;
            // within `n` rows of `k16` floats of both buffers.
            unsafe { copy_columns(*from, *to, n, k16, cols.clone()) };
        }
    }
    if split.flagged.load(Ordering::Relaxed) {
        if let Some((tile, feature)) = find_non_finite_body(x, n, stride, d) {
            return Err(BlockError::NonFiniteInput { tile, feature });
        }
    }
    // SAFETY: thread 0's own buffers, which no other thread touches any more.
    let (att_a, att_b) = unsafe {
        (
            std::slice::from_raw_parts_mut(mine.att_a, att_len),
            std::slice::from_raw_parts(mine.att_b, if gated { att_len } else { 0 }),
        )
    };
    let outputs = BlockOutputs {
        logits,
        probs,
        partial,
    };
    finish_body(isa, w, (h, k), n, hidden, att_a, att_b, outputs)
}
