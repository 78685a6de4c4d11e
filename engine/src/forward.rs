//! The network's forward pass over one block of tiles, folded into the slide's running
//! attention-weighted sum: the arithmetic of a push, without the session's bookkeeping.
//!
//! [`compute_block`], for each tile: `h = ReLU(W1 x + b1)`, the attention logit from
//! `tanh(Va h)` (gated by `sigmoid(Ua h)`), the tumor probability from the tile classifier.
//! It also sums the block's own attention-weighted hidden vectors, `sum_i exp(s_i - m_b) h_i`
//! with `m_b` the block's largest logit (a [`Partial`], in f64). [`combine`] then adds the
//! partials to the slide's aggregate in slide order (an online softmax over blocks). Blocks may
//! be computed on several threads; the partials are combined in the same order whatever the
//! thread count, so the result does not depend on it. Every function here is
//! compiled once per instruction set, so the row-wise activations vectorise as widely as the
//! matrix kernels.

use crate::kernels::{dense, padded_rows, rows, Isa, KernelPlan, PanelOrder};
use crate::model::{MatrixWeights, WeightViews};

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
    let mut block_max = f64::NEG_INFINITY;
    for r in 0..n {
        let hr = &hidden[r * h16..r * h16 + h];
        let terms = &mut scratch.att_a[r * k16..r * k16 + k];
        let gate = w.attention_b.map(|_| &scratch.att_b[r * k16..r * k16 + k]);
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
