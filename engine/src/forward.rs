//! The network's forward pass over one block of tiles, folded into the slide's running
//! attention-weighted sum: the arithmetic of a push, without the session's bookkeeping.
//!
//! [`compute_block`], for each tile: `h = ReLU(W1 x + b1)`, the attention logit from
//! `tanh(Va h)` (gated by `sigmoid(Ua h)`), the tumor probability from the tile classifier.
//! [`fold_block`]: each `h` added to the slide accumulator with weight `exp(logit - max)` (an
//! online softmax in f64). Blocks may be computed on several threads, but are always folded in
//! slide order, so the result does not depend on the thread count. Every function here is
//! compiled once per instruction set, so the row-wise activations vectorise as widely as the
//! matrix kernels.

use crate::kernels::{dense, padded_rows, rows, Isa, KernelPlan};
use crate::model::WeightViews;

/// Tiles processed together by the matrix kernels (the scratch buffers hold this many rows).
pub const BLOCK_TILES: usize = 64;

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
            match isa {
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
}

dispatch_by_isa! {
    /// Runs the network over `block.n <= BLOCK_TILES` tiles: attention logits and tumor
    /// probabilities into the block's outputs, hidden vectors left in `scratch.hidden`.
    ///
    /// Returns the block's largest attention logit, or the index (in the block) of the first
    /// tile whose attention or tile logit is not finite.
    fn compute_block(
        plan: &KernelPlan,
        w: &WeightViews<'_>,
        dims: (usize, usize, usize),
        block: Block<'_>,
        scratch: &mut BlockScratch<'_>
    ) -> Result<f64, usize> = compute_body
}

dispatch_by_isa! {
    /// Folds a computed block (`n` attention logits, and the hidden vectors in `hidden`,
    /// `padded_rows(H)` apart) into the slide's aggregate, given the block's largest logit.
    fn fold_block(
        agg: &mut Aggregate<'_>,
        logits: &[f32],
        hidden: &[f32],
        h: usize,
        block_max: f64
    ) -> () = fold_body
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

#[inline(always)]
fn find_non_finite_body(x: &[f32], n: usize, stride: usize, d: usize) -> Option<(usize, usize)> {
    (0..n).find_map(|tile| {
        let row = &x[tile * stride..tile * stride + d];
        if rows::all_finite(row) {
            None
        } else {
            row.iter().position(|v| !v.is_finite()).map(|f| (tile, f))
        }
    })
}

/// The pass itself, inlined into each instruction set's wrapper. Its row-wise arithmetic uses
/// no fused multiply-add, so only the matrix kernels differ between instruction sets.
#[inline(always)]
fn compute_body(
    plan: &KernelPlan,
    w: &WeightViews<'_>,
    (d, h, k): (usize, usize, usize),
    block: Block<'_>,
    scratch: &mut BlockScratch<'_>,
) -> Result<f64, usize> {
    let (h16, k16) = (padded_rows(h), padded_rows(k));
    let Block {
        x,
        n,
        stride,
        logits,
        probs,
    } = block;
    let (hidden, pack) = (&mut *scratch.hidden, &mut *scratch.pack);
    let (w1, b1) = (w.fc_weight, w.fc_bias);
    dense(plan, x, n, d, stride, w1, h, b1, hidden, h16, pack);
    rows::relu_in_place(&mut hidden[..n * h16]);
    let (va, ba) = (w.attention_a_weight, w.attention_a_bias);
    dense(plan, hidden, n, h, h16, va, k, ba, scratch.att_a, k16, pack);
    if let Some((ua, bu)) = w.attention_b {
        dense(plan, hidden, n, h, h16, ua, k, bu, scratch.att_b, k16, pack);
    }
    let mut block_max = f64::NEG_INFINITY;
    for r in 0..n {
        let hr = &hidden[r * h16..r * h16 + h];
        let terms = &mut scratch.att_a[r * k16..r * k16 + k];
        let gate = w.attention_b.map(|_| &scratch.att_b[r * k16..r * k16 + k]);
        rows::attention_terms(terms, gate);
        let s = rows::dot_f64(terms, w.attention_c_weight, w.attention_c_bias as f64);
        let z = rows::dot_f64(hr, w.tile_tumor.0, w.tile_tumor.1 as f64)
            - rows::dot_f64(hr, w.tile_not_tumor.0, w.tile_not_tumor.1 as f64);
        let s32 = s as f32;
        if !s32.is_finite() || !z.is_finite() {
            return Err(r);
        }
        logits[r] = s32;
        probs[r] = rows::sigmoid(z) as f32;
        block_max = block_max.max(s32 as f64);
    }
    Ok(block_max)
}

/// Online softmax: rescale the aggregate to the new maximum, then add the block.
#[inline(always)]
fn fold_body(agg: &mut Aggregate<'_>, logits: &[f32], hidden: &[f32], h: usize, block_max: f64) {
    let h16 = padded_rows(h);
    if block_max > agg.max_logit {
        let scale = (agg.max_logit - block_max).exp();
        agg.weight_sum *= scale;
        agg.acc.iter_mut().for_each(|a| *a *= scale);
        agg.max_logit = block_max;
    }
    for (r, logit) in logits.iter().enumerate() {
        let weight = (*logit as f64 - agg.max_logit).exp();
        agg.weight_sum += weight;
        rows::axpy_f64(agg.acc, weight, &hidden[r * h16..r * h16 + h]);
    }
}
