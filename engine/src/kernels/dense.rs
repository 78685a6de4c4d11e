//! `out = x W^T + b` over panel-packed weights, in register-blocked micro-tiles.
//!
//! One micro-tile is `R` input rows by `P` panels of 16 outputs: the `R x P` accumulators stay
//! in registers while a block of the input dimension streams by; each weight vector is loaded
//! once per `R` rows and each input value is broadcast once per `P` panels. The loops, from the
//! outside in: chunks of up to [`PACK_ROWS`] rows; blocks of [`KernelPlan::k_block`] inputs,
//! whose rows are first copied input-major into groups of `R` (so that a micro-tile reads one
//! sequential stream and addresses its rows by constant offsets); groups of `P` panels (the
//! group's slice of weights for the input block stays in L1 while every row group passes
//! over it); groups of `R` rows. The AVX-512 and AVX2 kernels over f32 weights skip the copy
//! for whole groups of rows (12 and 6) and read them in place, with scaled addressing (only a
//! last, partial group is packed): the copy was 6 % of a push. AVX-512 calls of 4 to 8 or 13
//! to 16 rows use packed tiles of 8 rows x 3 panels instead ([`eight_row_tiles`]). Calls of
//! one to three rows (strips of a few tiles, where the weights' bytes are the limit) use tiles
//! of more panels: 3 rows x 8 panels with AVX-512, 1 x 4 or 2 x 2 with AVX2, so that a single
//! row still has 8 independent accumulator chains.
//!
//! Determinism: every accumulator receives its fused multiply-adds in input order, starting
//! from the bias, whatever `R`, `P`, the input blocking or the number of rows in the call; a
//! partial sum parked in `out` between input blocks is an exact f32 round trip. So a row's
//! result is bit-identical however the slide was cut into strips.

// Register-blocked loops index several arrays by the same row: ranges are clearer than zips.
#![allow(clippy::needless_range_loop)]

use super::{padded_rows, Isa, KernelPlan, PANEL_WIDTH};
use crate::model::MatrixWeights;

/// Weight element kinds of the widening kernels (a const parameter of the micro-kernels).
const W_F32: u8 = 0;
/// bf16: the top half of an f32, widened by a shift.
const W_BF16: u8 = 1;
/// IEEE binary16, widened by F16C / AVX-512F conversions.
const W_F16: u8 = 2;

/// Calls of at most this many rows walk their weights once, in the caller's [`PanelOrder`]
/// (16 rather than 12: strips of 16 tiles, AVX-512 f32, measured 1.03-1.17x faster so on an
/// Intel Xeon whose L2 holds two thirds of the weights).
const SMALL_ROWS: usize = 16;

/// The order in which a call of a few rows walks the output panels (results are the same):
/// callers alternate it between calls that read the same weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelOrder {
    /// First panel to last.
    Forward,
    /// Last panel to first.
    Backward,
}

/// Calls of at most this many rows use the AVX-512 few-rows kernels: `FEW_ROWS` rows by
/// [`MAX_PANELS`] panels, so that even one row has 8 independent accumulator chains (the 12 x 2
/// kernel gives a single row 2, and waits on the multiply-add latency).
const FEW_ROWS: usize = 3;
/// Most panels of one micro-tile (the few-rows kernels').
const MAX_PANELS: usize = 8;

/// Whether an AVX-512 call of `n` rows uses packed tiles of 8 rows x 3 panels (24 accumulators)
/// instead of 12 rows x 2 panels. The 12 x 2 kernel leaves 4 rows of a 16-row call (and all of
/// a call of 4 to 8 rows) to tiles of 8 or fewer accumulator chains, which run at about half
/// its speed: on an Intel Xeon, one process alternating both, 8 x 3 was 1.04x at 4 rows, 1.09x
/// at 8 and 1.07x at 16, and 0.89-0.90x at 10 and 12 (where 12 x 2 keeps its chains).
#[cfg(target_arch = "x86_64")]
fn eight_row_tiles(n: usize) -> bool {
    matches!(n, 4..=8 | 13..=16)
}

/// How far ahead in each panel's weights the AVX-512 packed-row kernels prefetch in calls of
/// at most [`SMALL_ROWS`] rows. Those calls stream every panel's weights over all inputs at
/// once (from L3 and L2: the layers' 3 MiB do not fit a 2 MiB L2), each panel one sequential
/// stream, so a prefetch at a fixed distance keeps it ahead of the multiply-adds. Measured on
/// an Intel Xeon, one process alternating with and without (docs/PERFORMANCE.md): 1.06x at
/// strips of 16, 13, 8 and 5 tiles (8 x 3 tiles); unchanged at 1 to 4 (the few-row and 8 x 3
/// tiles, bound by the weights' bandwidth there) and at 12 (f32 rows in place, whose kernel
/// prefetches the next panels instead and ignores this); 256 bytes gained less, 768-2048 no
/// more. Not on AVX2: its 16-row calls read 12 rows in place, and the packed remainder's
/// prefetch measured 0.97x. Larger calls read each block's weights from L1 (input blocks),
/// where it would only add instructions.
const STREAM_PREFETCH_BYTES: usize = 512;

/// Rows packed at once: a session's block of tiles.
pub const PACK_ROWS: usize = 128;
/// Largest input block a plan uses.
pub const MAX_K_BLOCK: usize = 256;
/// Floats of the packing buffer [`dense`] needs: [`PACK_ROWS`] rounded up to whole row groups
/// of every kernel, times [`MAX_K_BLOCK`].
pub const PACK_FLOATS: usize = PACK_ROWS.div_ceil(24) * 24 * MAX_K_BLOCK;
/// Largest input block of the AMX kernels.
pub const MAX_TILE_K_BLOCK: usize = 1024;
// The AMX kernels' rows (32 x 1024 bf16, from the first cache line boundary) and weight tail
// (2 KiB) fit too.
const _: () = assert!(PACK_FLOATS * 4 >= 32 * MAX_TILE_K_BLOCK * 2 + 2048 + 64);

/// Computes `out[r][o] = bias[o] + sum_i x[r][i] * W[o][i]` for `n` rows, with the kernels and
/// blocking of `plan`.
///
/// - `x`: `n` rows of `in_dim` values, row `r` starting at `r * x_stride`;
/// - `weights`: `W` (`out_dim x in_dim`) in panel layout ([`super::pack_panels`]), as f32,
///   bf16 or f16 (widened to f32 in the kernel: the same result as f32 kernels over the
///   widened weights) or bf16 pairs (AVX-512 BF16 dot products, which also round the inputs to bf16;
///   only with [`Isa::Avx512`] on a CPU that has them), or int8 (integer kernels over inputs
///   quantized per row: see the `int8` module);
/// - `out`: `n` rows starting at `r * out_stride`, `out_stride >= padded_rows(out_dim)`; the
///   padding columns receive zeros;
/// - `pack`: scratch of at least [`PACK_FLOATS`] floats for the packed input rows;
/// - `order`: for calls of a few rows, the order of the output panels (speed only).
///
/// # Panics
/// If a buffer is shorter than the dimensions say (a bug in the caller, never an input
/// property: the session sizes every buffer from the validated model), or if the plan's
/// instruction set is not supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    plan: &KernelPlan,
    x: &[f32],
    n: usize,
    in_dim: usize,
    x_stride: usize,
    weights: MatrixWeights<'_>,
    out_dim: usize,
    bias: &[f32],
    out: &mut [f32],
    out_stride: usize,
    pack: &mut [f32],
    order: PanelOrder,
) {
    if n == 0 {
        return;
    }
    if let MatrixWeights::Int8(w) = weights {
        return super::int8::dense_int8(
            plan, x, n, in_dim, x_stride, w, out_dim, bias, out, out_stride, pack,
        );
    }
    // Every bound is checked with overflow-checked arithmetic: the raw-pointer kernels below
    // rely on these, whatever the caller passes.
    let span = |rows: usize, stride: usize, width: usize| {
        (rows - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(width))
    };
    let out_width = padded_rows(out_dim);
    assert!(x_stride >= in_dim && span(n, x_stride, in_dim).is_some_and(|need| x.len() >= need));
    let (weights_len, inputs_stored, packed) = match weights {
        MatrixWeights::F32(w) => (w.len(), in_dim, w.as_ptr().cast::<u8>()),
        MatrixWeights::Bf16(w) | MatrixWeights::F16(w) => {
            (w.len(), in_dim, w.as_ptr().cast::<u8>())
        }
        MatrixWeights::Bf16Pairs(w) => (w.len(), in_dim.div_ceil(2), w.as_ptr().cast::<u8>()),
        MatrixWeights::Int8(_) => unreachable!("int8 weights returned above"),
    };
    assert!(
        out_width
            .checked_mul(inputs_stored)
            .is_some_and(|need| weights_len >= need)
            && bias.len() >= out_dim
    );
    assert!(
        out_stride >= out_width
            && span(n, out_stride, out_width).is_some_and(|need| out.len() >= need)
    );
    assert!(
        plan.isa.is_supported(),
        "{} kernels on this CPU",
        plan.isa.name()
    );
    assert!(
        pack.len() >= PACK_FLOATS,
        "the packing buffer needs PACK_FLOATS floats"
    );
    let mut padded_bias = [0.0f32; PANEL_WIDTH];
    let mut args = DenseArgs {
        x: x.as_ptr(),
        n,
        in_dim,
        x_stride,
        packed,
        out_dim,
        bias,
        // Derived from the exclusive borrow of the output: the kernels write through it.
        out: out.as_mut_ptr(),
        out_stride,
        // Pairs of inputs stay together: blocks of an even number of inputs.
        k_block: match weights {
            MatrixWeights::Bf16Pairs(_) => plan.k_block.clamp(2, MAX_K_BLOCK) & !1,
            _ => plan.k_block.clamp(1, MAX_K_BLOCK),
        },
        prefetch_ahead: 0,
        pack: pack.as_mut_ptr(),
        reverse: false,
    };
    // A call of at most SMALL_ROWS rows reads each weight once or twice: no input blocking
    // (there is little to reuse from L1), and the panels in `order`. Alternating the order
    // between calls starts each call on the weights the previous one read last, which are
    // still in L2 (strips of 1 or 16 tiles: 3 MiB of f32 weights through a 2 MiB L2). The
    // block is bounded by the packing buffer: `n` rows take at most `n` rounded up to 12
    // packed rows (whole groups of 12, 8 or 3 for AVX-512, of 6, 2 or 1 for AVX2, of 2 for the
    // portable code; 16 rows in groups of 8 are 16 <= 24).
    if n <= SMALL_ROWS {
        args.reverse = order == PanelOrder::Backward;
        if !matches!(weights, MatrixWeights::Bf16Pairs(_)) {
            args.k_block = in_dim.min(PACK_FLOATS / n.next_multiple_of(12));
            if matches!(plan.isa, Isa::Avx512 | Isa::Amx) {
                args.prefetch_ahead = STREAM_PREFETCH_BYTES;
            }
        }
    }
    // The bias of a last, partial panel, padded with zeros.
    let tail = out_dim % PANEL_WIDTH;
    if tail != 0 {
        padded_bias[..tail].copy_from_slice(&bias[out_dim - tail..out_dim]);
    }
    let kind = match weights {
        MatrixWeights::Bf16(_) => W_BF16,
        MatrixWeights::F16(_) => W_F16,
        _ => W_F32,
    };
    match (plan.isa, weights) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Amx, MatrixWeights::Bf16Pairs(_)) => {
            assert!(plan.isa.is_supported(), "AMX bf16 tiles in this process");
            // SAFETY: the CPU has AVX-512F and BF16 and this process may use the AMX tiles
            // (`Isa::Amx` is supported, asserted above); `args` describes buffers whose
            // lengths were checked above, with bf16-pair weights; the packing buffer's
            // PACK_FLOATS floats hold 32 rows of up to MAX_TILE_K_BLOCK bf16 inputs (64 KiB)
            // and the 2 KiB tail (asserted at compile time).
            let tile_k_block = plan.tile_k_block.clamp(32, MAX_TILE_K_BLOCK) / 32 * 32;
            unsafe { super::amx::dense_amx_bf16(&args, &padded_bias, tile_k_block) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, MatrixWeights::Bf16Pairs(_)) => {
            assert!(
                crate::model::bf16_dot_supported(),
                "bf16 dot products on this CPU"
            );
            // SAFETY: the CPU supports AVX-512F and AVX-512 BF16 (asserted above); `args`
            // describes buffers whose lengths were checked above.
            unsafe { dense_avx512_bf16_pairs(&args, &padded_bias) }
        }
        (_, MatrixWeights::Bf16Pairs(_)) => {
            panic!("bf16 pairs need the AVX-512 or AMX kernels")
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (asserted above); `args` describes
        // buffers whose lengths were checked above.
        (Isa::Avx512 | Isa::Amx, _) => unsafe { dense_avx512(&args, &padded_bias, kind) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2, FMA and F16C (asserted above); buffers as above.
        (Isa::Avx2Fma, _) => unsafe { dense_avx2(&args, &padded_bias, kind) },
        // SAFETY: buffers as above; the portable kernel needs no CPU feature.
        // `walk` hands out tiles inside the buffers `dense` checked, as `portable_tile` needs.
        // Two rows: 8 of the 16 SSE registers hold the accumulators, with room for the weights
        // (four rows spill to the stack).
        _ if kind == W_BF16 => unsafe {
            walk::<2, 1, false, 2>(&args, &padded_bias, false, |t| portable_tile::<W_BF16>(t))
        },
        // SAFETY: as above.
        _ if kind == W_F16 => unsafe {
            walk::<2, 1, false, 2>(&args, &padded_bias, false, |t| portable_tile::<W_F16>(t))
        },
        // SAFETY: as above.
        _ => unsafe {
            walk::<2, 1, false, 4>(&args, &padded_bias, false, |t| portable_tile::<W_F32>(t))
        },
    }
}

/// The checked arguments of [`dense`], as raw pointers for the micro-kernels.
pub(super) struct DenseArgs<'a> {
    pub(super) x: *const f32,
    pub(super) n: usize,
    pub(super) in_dim: usize,
    pub(super) x_stride: usize,
    /// The weights' first byte (f32, bf16 or bf16 pairs: the kernel knows which).
    pub(super) packed: *const u8,
    pub(super) out_dim: usize,
    pub(super) bias: &'a [f32],
    pub(super) out: *mut f32,
    pub(super) out_stride: usize,
    pub(super) k_block: usize,
    /// The tiles' [`Tile::prefetch_ahead`].
    pub(super) prefetch_ahead: usize,
    /// [`PACK_FLOATS`] writable floats.
    pub(super) pack: *mut f32,
    /// Walk the groups of panels last to first.
    pub(super) reverse: bool,
}

/// One micro-tile call: `rows` rows (`<= R`) by `panels` panels (`<= P`) over `k` inputs.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    panels: usize,
    /// The rows' inputs for this input block, packed input-major: input `i` of row `r` at
    /// `x[i * R + r]` (`R` the kernel's row group, whatever `rows`); for bf16 pairs, pair `q`
    /// (inputs `2q`, `2q + 1`) of row `r` is the `u32` at `q * R + r`. If `x_stride` is not
    /// 0, the rows in place instead: input `i` of row `r` at `x[r * x_stride + i]` (f32).
    x: *const u8,
    /// 0 for packed rows, else the distance between rows in place, in floats.
    x_stride: usize,
    k: usize,
    /// First panel's weights, at the block's first input (f32, bf16 or bf16 pairs).
    w: *const u8,
    /// Weights that later tiles need: kernels that prefetch bring `k` lines from here into L1
    /// (a hint only: it may reach past the weights' end, and is never dereferenced).
    prefetch: *const u8,
    /// Distance between consecutive panels' weights, in weight elements.
    panel_stride: usize,
    /// Bytes ahead of its current input at which the AVX-512 packed-row kernel prefetches each
    /// panel's weights into L1, one prefetch per panel and input (a line of f32 weights, half a
    /// line of 16-bit ones; 0: no prefetch). See [`STREAM_PREFETCH_BYTES`].
    prefetch_ahead: usize,
    /// 16 biases per panel, consecutive; used when `accumulate` is false.
    bias: *const f32,
    /// Whether to start from the partial sums in `out` rather than from the bias.
    accumulate: bool,
    out: *mut f32,
    out_stride: usize,
}

/// Walks the output in micro-tiles (see the module documentation), packing the input rows,
/// and calls `tile` for each. With `direct` (never for bf16 pairs), whole groups of `R` rows
/// are not packed: their tiles carry the rows in place (`x_stride != 0`).
///
/// # Safety
/// `a` must describe buffers of the lengths [`dense`] checks; `tile` must be safe to call with
/// pointers inside those buffers on this CPU, and with `direct`, able to read tiles of `R`
/// rows in place.
///
/// `PAIRS`: the weights are bf16 pairs and the inputs are packed as bf16 pairs; `WB`: bytes
/// per weight element (4 for f32 and pairs, 2 for bf16).
#[inline(always)]
unsafe fn walk<const R: usize, const P: usize, const PAIRS: bool, const WB: usize>(
    a: &DenseArgs<'_>,
    padded_bias: &[f32; PANEL_WIDTH],
    direct: bool,
    mut tile: impl FnMut(Tile),
) {
    const {
        assert!(
            P <= MAX_PANELS,
            "the biases of a group of panels hold MAX_PANELS"
        )
    };
    let panels = padded_rows(a.out_dim) / PANEL_WIDTH;
    // With `direct`, whole groups of R rows are read in place and only the rest is packed.
    let direct = direct && !PAIRS;
    let stored = |inputs: usize| if PAIRS { inputs.div_ceil(2) } else { inputs };
    let panel_stride = stored(a.in_dim) * PANEL_WIDTH;
    // 16 biases per panel, the last one padded; re-filled per group of panels.
    let mut bias = [0.0f32; MAX_PANELS * PANEL_WIDTH];
    let mut r0 = 0;
    while r0 < a.n {
        let chunk = PACK_ROWS.min(a.n - r0);
        let mut k0 = 0;
        while k0 < a.in_dim {
            let k = a.k_block.min(a.in_dim - k0);
            // SAFETY: rows r0..r0 + chunk and inputs k0..k0 + k are inside `x`; the packed
            // groups take chunk.div_ceil(R) * R * k <= PACK_FLOATS floats of `pack`.
            let in_place = if direct { chunk / R * R } else { 0 };
            // The bound the packing below relies on (the callers' blocks respect it).
            assert!((chunk - in_place).div_ceil(R) * R * stored(k) <= PACK_FLOATS);
            unsafe {
                if PAIRS {
                    pack_pairs::<R>(a, r0, chunk, k0, k)
                } else if in_place < chunk {
                    pack_rows::<R>(a, r0 + in_place, chunk - in_place, k0, k)
                }
            };
            let groups = panels.div_ceil(P);
            // Panel group `q` of the walk: in reverse order when `a.reverse`.
            let group_start = |q: usize| {
                if a.reverse {
                    (groups - 1 - q) * P
                } else {
                    q * P
                }
            };
            for q in 0..groups {
                let p = group_start(q);
                let group = P.min(panels - p);
                for g in 0..group {
                    let start = (p + g) * PANEL_WIDTH;
                    let src = if start + PANEL_WIDTH <= a.out_dim {
                        &a.bias[start..start + PANEL_WIDTH]
                    } else {
                        &padded_bias[..]
                    };
                    bias[g * PANEL_WIDTH..(g + 1) * PANEL_WIDTH].copy_from_slice(src);
                }
                let mut r = 0;
                while r < chunk {
                    let rows = R.min(chunk - r);
                    // SAFETY (pointer arithmetic): the packed group of row r is inside `pack`;
                    // k0 < in_dim, p < panels and (p + group) * 16 <= out_stride, so the other
                    // offsets are inside the buffers whose lengths `dense` checked.
                    unsafe {
                        let (x, x_stride) = if r < in_place {
                            (a.x.add((r0 + r) * a.x_stride + k0), a.x_stride)
                        } else {
                            (a.pack.add((r - in_place) * stored(k)).cast_const(), 0)
                        };
                        let w = a
                            .packed
                            .add((p * panel_stride + stored(k0) * PANEL_WIDTH) * WB);
                        // The first P row groups bring the next P panels' weights (the next
                        // group of panels, else the next input block's first) into L1, a line
                        // per input, so that the next group does not start by waiting on L3;
                        // the others name their own weights (harmless).
                        let ahead = r / R;
                        let (next_p, next_k0) = if q + 1 < groups {
                            (group_start(q + 1) + ahead, k0)
                        } else {
                            (group_start(0) + ahead, k0 + k)
                        };
                        let prefetch = if ahead < P && next_p < panels && next_k0 < a.in_dim {
                            a.packed
                                .add((next_p * panel_stride + stored(next_k0) * PANEL_WIDTH) * WB)
                        } else {
                            w
                        };
                        tile(Tile {
                            rows,
                            panels: group,
                            x: x.cast::<u8>(),
                            x_stride,
                            k,
                            w,
                            prefetch,
                            panel_stride,
                            prefetch_ahead: a.prefetch_ahead,
                            bias: bias.as_ptr(),
                            accumulate: k0 > 0,
                            out: a.out.add((r0 + r) * a.out_stride + p * PANEL_WIDTH),
                            out_stride: a.out_stride,
                        });
                    }
                    r += rows;
                }
            }
            k0 += k;
        }
        r0 += chunk;
    }
}

/// Copies inputs `k0..k0 + k` of rows `r0..r0 + rows` into `a.pack`, input-major in groups of
/// `R` rows: group `g` starts at `g * R * k`, and holds input `i` of its row `r` at `i * R + r`
/// (zeros for the missing rows of a last, partial group). Whole groups go four rows by four
/// inputs at a time through SSE transposes (one instruction per value instead of two).
///
/// # Safety
/// The rows and inputs must be inside `a.x`, and `rows.div_ceil(R) * R * k` floats inside
/// `a.pack`.
// Not inlined: the same SSE code for every instruction set, and a profile shows it apart.
#[inline(never)]
unsafe fn pack_rows<const R: usize>(
    a: &DenseArgs<'_>,
    r0: usize,
    rows: usize,
    k0: usize,
    k: usize,
) {
    let mut g = 0;
    while g * R < rows {
        let in_group = R.min(rows - g * R);
        // SAFETY: the caller guarantees both ranges; a missing row reads its group's first
        // row (inside `x`) and is then zeroed.
        unsafe {
            let src: [*const f32; R] = std::array::from_fn(|r| {
                let row = r0 + g * R + if r < in_group { r } else { 0 };
                a.x.add(row * a.x_stride + k0)
            });
            let dst = a.pack.add(g * R * k);
            let mut done_rows = 0;
            #[cfg(target_arch = "x86_64")]
            if in_group == R {
                while done_rows + 4 <= R {
                    let quad = [
                        src[done_rows],
                        src[done_rows + 1],
                        src[done_rows + 2],
                        src[done_rows + 3],
                    ];
                    sse::pack_quad::<R>(quad, dst.add(done_rows), k);
                    done_rows += 4;
                }
            }
            for i in 0..k {
                for r in done_rows..R {
                    let v = if r < in_group { *src[r].add(i) } else { 0.0 };
                    *dst.add(i * R + r) = v;
                }
            }
        }
        g += 1;
    }
}

/// Like [`pack_rows`] for the bf16 dot products: group `g` starts at `g * R * ceil(k / 2)`
/// `u32`s and holds the pair of inputs `(2q, 2q + 1)` of its row `r`, rounded to bf16 (to
/// nearest, ties to even; zero past the last input and for missing rows), at `q * R + r`.
///
/// # Safety
/// As for [`pack_rows`], with `rows.div_ceil(R) * R * k.div_ceil(2)` `u32`s inside `a.pack`.
#[inline(never)]
unsafe fn pack_pairs<const R: usize>(
    a: &DenseArgs<'_>,
    r0: usize,
    rows: usize,
    k0: usize,
    k: usize,
) {
    let pairs = k.div_ceil(2);
    let pack = a.pack.cast::<u32>();
    let mut g = 0;
    while g * R < rows {
        let in_group = R.min(rows - g * R);
        for r in 0..R {
            // SAFETY: the caller guarantees both ranges.
            unsafe {
                let dst = pack.add(g * R * pairs + r);
                if r >= in_group {
                    for q in 0..pairs {
                        *dst.add(q * R) = 0;
                    }
                    continue;
                }
                let src = a.x.add((r0 + g * R + r) * a.x_stride + k0);
                for q in 0..pairs {
                    let lo = bf16_bits(*src.add(2 * q));
                    let hi = if 2 * q + 1 < k {
                        bf16_bits(*src.add(2 * q + 1))
                    } else {
                        0
                    };
                    *dst.add(q * R) = lo | (hi << 16);
                }
            }
        }
        g += 1;
    }
}

/// The bf16 nearest to an f32 (ties to even), as the low 16 bits; infinities stay infinite
/// and a NaN becomes the quiet NaN (rounding its payload could carry into the sign bit and
/// give -0: the forward pass relies on NaN reaching the hidden layer).
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1))) >> 16;
    if v.is_nan() {
        0x7FC0
    } else {
        rounded
    }
}

#[cfg(target_arch = "x86_64")]
mod sse {
    use std::arch::x86_64::*;

    /// Writes inputs `0..k` of the four rows `src` to `dst + i * R + (0..4)`, four inputs at
    /// a time through a 4 x 4 transpose (SSE, which every x86-64 CPU has).
    ///
    /// # Safety
    /// Each row must have `k` readable floats; `dst + i * R .. + 4` must be writable for
    /// every `i < k`.
    #[inline(always)]
    pub(super) unsafe fn pack_quad<const R: usize>(src: [*const f32; 4], dst: *mut f32, k: usize) {
        // SAFETY: the caller guarantees every range read or written.
        unsafe {
            let mut i = 0;
            while i + 4 <= k {
                let (r0, r1) = (_mm_loadu_ps(src[0].add(i)), _mm_loadu_ps(src[1].add(i)));
                let (r2, r3) = (_mm_loadu_ps(src[2].add(i)), _mm_loadu_ps(src[3].add(i)));
                let (t0, t1) = (_mm_unpacklo_ps(r0, r1), _mm_unpacklo_ps(r2, r3));
                let (t2, t3) = (_mm_unpackhi_ps(r0, r1), _mm_unpackhi_ps(r2, r3));
                _mm_storeu_ps(dst.add(i * R), _mm_movelh_ps(t0, t1));
                _mm_storeu_ps(dst.add((i + 1) * R), _mm_movehl_ps(t1, t0));
                _mm_storeu_ps(dst.add((i + 2) * R), _mm_movelh_ps(t2, t3));
                _mm_storeu_ps(dst.add((i + 3) * R), _mm_movehl_ps(t3, t2));
                i += 4;
            }
            while i < k {
                for (r, row) in src.iter().enumerate() {
                    *dst.add(i * R + r) = *row.add(i);
                }
                i += 1;
            }
        }
    }
}

/// Dispatches a tile to the micro-kernel instantiated for its exact shape.
macro_rules! dispatch_rows {
    ($kernel:ident, $t:expr, $group:literal, $panels:literal, $w:ident, [$($r:literal),+]) => {
        match $t.rows {
            $($r => $kernel::<$group, $r, $panels, $w>($t),)+
            _ => unreachable!("tile rows beyond the kernel's register block"),
        }
    };
}

/// [`dispatch_rows`] for the bf16 dot-product kernel (row groups of 12).
macro_rules! dispatch_pair_rows {
    ($t:expr, $panels:literal, [$($r:literal),+]) => {
        match $t.rows {
            $($r => micro_avx512_pairs::<12, $r, $panels>($t),)+
            _ => unreachable!("tile rows beyond the kernel's register block"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
/// # Safety
/// AVX-512F, AVX2 and FMA must be available; `a` as for [`walk`].
unsafe fn dense_avx512(a: &DenseArgs<'_>, padded_bias: &[f32; PANEL_WIDTH], kind: u8) {
    // 12 rows x 2 panels = 24 zmm accumulators; per input: 2 weight loads, 12 broadcasts and
    // 24 fused multiply-adds, so the two FMA ports (not the loads) are the limit. (8 x 2
    // measured 1-3 % slower on an Intel Xeon with two 512-bit FMA units.)
    // SAFETY: `a` is forwarded from the caller; AVX-512F is available (this function's
    // contract), which is all the micro-kernels need.
    unsafe {
        match kind {
            W_BF16 => walk_avx512::<W_BF16, 2>(a, padded_bias),
            W_F16 => walk_avx512::<W_F16, 2>(a, padded_bias),
            _ => walk_avx512::<W_F32, 4>(a, padded_bias),
        }
    }
}

/// [`walk`] with the AVX-512 micro-kernels for weights of kind `W` (`WB` bytes each).
///
/// # Safety
/// As for [`dense_avx512`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn walk_avx512<const W: u8, const WB: usize>(
    a: &DenseArgs<'_>,
    padded_bias: &[f32; PANEL_WIDTH],
) {
    // SAFETY: the tiles `walk` produces lie inside the checked buffers; the caller runs on a
    // CPU with AVX-512F, AVX2 and FMA (`dense_avx512`'s contract), all the kernels need.
    unsafe {
        if a.n <= FEW_ROWS {
            return walk::<FEW_ROWS, MAX_PANELS, false, WB>(a, padded_bias, false, |t| {
                few_rows_avx512::<W, WB>(t)
            });
        }
        if eight_row_tiles(a.n) {
            return walk::<8, 3, false, WB>(a, padded_bias, false, |t| match t.panels {
                3 => dispatch_rows!(micro_avx512, t, 8, 3, W, [1, 2, 3, 4, 5, 6, 7, 8]),
                2 => dispatch_rows!(micro_avx512, t, 8, 2, W, [1, 2, 3, 4, 5, 6, 7, 8]),
                _ => dispatch_rows!(micro_avx512, t, 8, 1, W, [1, 2, 3, 4, 5, 6, 7, 8]),
            });
        }
        // f32 weights and whole pairs of panels: groups of 12 rows read in place (no packing).
        let panels = padded_rows(a.out_dim) / PANEL_WIDTH;
        let direct = W == W_F32 && panels.is_multiple_of(2);
        walk::<12, 2, false, WB>(a, padded_bias, direct, |t| {
            if t.x_stride != 0 {
                debug_assert!(t.rows == 12 && t.panels == 2);
                micro_avx512_in_place(t)
            } else if t.panels == 2 {
                dispatch_rows!(
                    micro_avx512,
                    t,
                    12,
                    2,
                    W,
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
                )
            } else {
                dispatch_rows!(
                    micro_avx512,
                    t,
                    12,
                    1,
                    W,
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
                )
            }
        })
    }
}

/// [`dispatch_pair_rows`] for the few-rows tiles (row groups of [`FEW_ROWS`]).
macro_rules! dispatch_few_pair_rows {
    ($t:expr, $panels:literal) => {
        match $t.rows {
            1 => micro_avx512_pairs::<FEW_ROWS, 1, $panels>($t),
            2 => micro_avx512_pairs::<FEW_ROWS, 2, $panels>($t),
            3 => micro_avx512_pairs::<FEW_ROWS, 3, $panels>($t),
            _ => unreachable!("tile rows beyond the kernel's register block"),
        }
    };
}

/// Calls `kernel` on `t` cut into tiles of 8, 4, 2 and 1 panels, at most `MAX` (the widths
/// the few-rows kernels are compiled for), first to last; `WB` is the bytes per weight
/// element.
///
/// # Safety
/// `t` must satisfy `kernel`'s contract for its `t.panels` panels.
#[inline(always)]
unsafe fn for_panel_widths<const WB: usize, const MAX: usize>(
    t: Tile,
    mut kernel: impl FnMut(Tile, usize),
) {
    let mut done = 0;
    while done < t.panels {
        let left = (t.panels - done).min(MAX);
        // The largest power of two not above `left`.
        let width = 1 << left.ilog2();
        // SAFETY: panels done..done + width of `t` are inside its buffers (the caller's
        // contract), so are their weights, biases and outputs.
        let part = unsafe {
            Tile {
                panels: width,
                w: t.w.add(done * t.panel_stride * WB),
                bias: t.bias.add(done * PANEL_WIDTH),
                out: t.out.add(done * PANEL_WIDTH),
                ..t
            }
        };
        kernel(part, width);
        done += width;
    }
}

/// A few-rows tile ([`FEW_ROWS`] rows by up to [`MAX_PANELS`] panels) with the AVX-512
/// kernels over weights of kind `W` (`WB` bytes each).
///
/// # Safety
/// As for [`micro_avx512`] with `G = FEW_ROWS`, for `t.panels` panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn few_rows_avx512<const W: u8, const WB: usize>(t: Tile) {
    // SAFETY: forwarded from the caller, one part of the tile at a time.
    unsafe {
        for_panel_widths::<WB, MAX_PANELS>(t, |t, p| match p {
            8 => dispatch_rows!(micro_avx512, t, 3, 8, W, [1, 2, 3]),
            4 => dispatch_rows!(micro_avx512, t, 3, 4, W, [1, 2, 3]),
            2 => dispatch_rows!(micro_avx512, t, 3, 2, W, [1, 2, 3]),
            _ => dispatch_rows!(micro_avx512, t, 3, 1, W, [1, 2, 3]),
        })
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
/// # Safety
/// AVX-512F and AVX-512 BF16 must be available; `a` as for [`walk`], its weights bf16 pairs.
unsafe fn dense_avx512_bf16_pairs(a: &DenseArgs<'_>, padded_bias: &[f32; PANEL_WIDTH]) {
    // 12 rows x 2 panels = 24 zmm accumulators; per pair of inputs: 2 weight loads, 12
    // broadcasts and 24 dot products of 32 multiply-adds each.
    // SAFETY: `a` is forwarded from the caller; the tiles `walk` produces lie inside the
    // checked buffers, and AVX-512F and BF16 are available (this function's contract).
    unsafe {
        if a.n <= FEW_ROWS {
            return walk::<FEW_ROWS, MAX_PANELS, true, 4>(a, padded_bias, false, |t| {
                for_panel_widths::<4, MAX_PANELS>(t, |t, p| match p {
                    8 => dispatch_few_pair_rows!(t, 8),
                    4 => dispatch_few_pair_rows!(t, 4),
                    2 => dispatch_few_pair_rows!(t, 2),
                    _ => dispatch_few_pair_rows!(t, 1),
                })
            });
        }
        walk::<12, 2, true, 4>(a, padded_bias, false, |t| {
            if t.panels == 2 {
                dispatch_pair_rows!(t, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            } else {
                dispatch_pair_rows!(t, 1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
/// # Safety
/// AVX2, FMA and F16C must be available; `a` as for [`walk`].
unsafe fn dense_avx2(a: &DenseArgs<'_>, padded_bias: &[f32; PANEL_WIDTH], kind: u8) {
    // 6 rows x 1 panel = 12 ymm accumulators (two per row), 2 for the weights, 1 broadcast.
    // One row takes 4 panels and two rows 2 (8 accumulators, 8 independent chains: one panel
    // would give a single row 2 and wait on the multiply-add latency).
    // SAFETY: `a` is forwarded from the caller; the tiles `walk` produces lie inside the
    // checked buffers, and AVX2, FMA and F16C are available (this function's contract),
    // which is all the micro-kernels need.
    unsafe {
        match (a.n, kind) {
            (1, W_BF16) => return few_rows_avx2::<1, 4, W_BF16, 2>(a, padded_bias),
            (1, W_F16) => return few_rows_avx2::<1, 4, W_F16, 2>(a, padded_bias),
            (1, _) => return few_rows_avx2::<1, 4, W_F32, 4>(a, padded_bias),
            (2, W_BF16) => return few_rows_avx2::<2, 2, W_BF16, 2>(a, padded_bias),
            (2, W_F16) => return few_rows_avx2::<2, 2, W_F16, 2>(a, padded_bias),
            (2, _) => return few_rows_avx2::<2, 2, W_F32, 4>(a, padded_bias),
            _ => {}
        }
        match kind {
            W_BF16 => walk::<6, 1, false, 2>(a, padded_bias, false, |t| {
                dispatch_rows!(micro_avx2, t, 6, 1, W_BF16, [1, 2, 3, 4, 5, 6])
            }),
            W_F16 => walk::<6, 1, false, 2>(a, padded_bias, false, |t| {
                dispatch_rows!(micro_avx2, t, 6, 1, W_F16, [1, 2, 3, 4, 5, 6])
            }),
            // f32 weights: groups of 6 rows read in place (no packing).
            _ => walk::<6, 1, false, 4>(a, padded_bias, true, |t| {
                if t.x_stride != 0 {
                    debug_assert!(t.rows == 6);
                    micro_avx2_in_place(t)
                } else {
                    dispatch_rows!(micro_avx2, t, 6, 1, W_F32, [1, 2, 3, 4, 5, 6])
                }
            }),
        }
    }
}

/// [`walk`] for calls of `R` rows (1 or 2) in one group, with AVX2 tiles of up to `P` panels
/// over weights of kind `W` (`WB` bytes each).
///
/// # Safety
/// As for [`dense_avx2`], with `a.n <= R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn few_rows_avx2<const R: usize, const P: usize, const W: u8, const WB: usize>(
    a: &DenseArgs<'_>,
    padded_bias: &[f32; PANEL_WIDTH],
) {
    // SAFETY: the tiles `walk` produces lie inside the checked buffers, each cut into parts
    // of at most `P` panels; AVX2, FMA and F16C are available.
    unsafe {
        walk::<R, P, false, WB>(a, padded_bias, false, |t| {
            for_panel_widths::<WB, P>(t, |t, p| match (t.rows, p) {
                (1, 4) => micro_avx2::<R, 1, 4, W>(t),
                (1, 2) => micro_avx2::<R, 1, 2, W>(t),
                (1, 1) => micro_avx2::<R, 1, 1, W>(t),
                (2, 2) if R >= 2 => micro_avx2::<R, 2, 2, W>(t),
                (2, 1) if R >= 2 => micro_avx2::<R, 2, 1, W>(t),
                _ => unreachable!("tile rows or panels beyond the kernel's register block"),
            })
        })
    }
}

/// Portable tiles: up to 2 rows of one panel, separate multiply and add (no FMA).
///
/// # Safety
/// As for [`portable_micro`] with `R = t.rows`.
unsafe fn portable_tile<const W: u8>(t: Tile) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match t.rows {
            2 => portable_micro::<2, 2, W>(t),
            _ => portable_micro::<2, 1, W>(t),
        }
    }
}

/// Portable `R` rows (of a packed group of `G`) times one panel. Every accumulator sees the
/// same operation sequence for any `R`.
///
/// # Safety
/// `t` must describe a packed group of `G` rows of `t.k` readable inputs, one panel of `16 t.k`
/// weights, 16 biases and `R` writable output rows of 16.
#[inline(always)]
unsafe fn portable_micro<const G: usize, const R: usize, const W: u8>(t: Tile) {
    // SAFETY: the caller guarantees every range read or written below.
    unsafe {
        let mut acc = [[0.0f32; PANEL_WIDTH]; R];
        for r in 0..R {
            let init = if t.accumulate {
                t.out.add(r * t.out_stride).cast_const()
            } else {
                t.bias
            };
            acc[r] = init.cast::<[f32; PANEL_WIDTH]>().read_unaligned();
        }
        let x = t.x.cast::<f32>();
        for i in 0..t.k {
            let w: [f32; PANEL_WIDTH] = if W == W_BF16 {
                let bits = t.w.cast::<u16>().add(i * PANEL_WIDTH);
                std::array::from_fn(|j| f32::from_bits((bits.add(j).read_unaligned() as u32) << 16))
            } else if W == W_F16 {
                let bits = t.w.cast::<u16>().add(i * PANEL_WIDTH);
                std::array::from_fn(|j| half::f16::from_bits(bits.add(j).read_unaligned()).to_f32())
            } else {
                t.w.cast::<f32>()
                    .add(i * PANEL_WIDTH)
                    .cast::<[f32; PANEL_WIDTH]>()
                    .read_unaligned()
            };
            for r in 0..R {
                let xv = *x.add(i * G + r);
                portable_axpy16(&mut acc[r], xv, &w);
            }
        }
        for r in 0..R {
            t.out
                .add(r * t.out_stride)
                .cast::<[f32; PANEL_WIDTH]>()
                .write_unaligned(acc[r]);
        }
    }
}

/// `acc += x * w` on 16 lanes, separate multiply and add (no FMA: identical on every CPU);
/// SSE2 (the x86-64 baseline) four lanes at a time.
#[inline(always)]
fn portable_axpy16(acc: &mut [f32; PANEL_WIDTH], x: f32, w: &[f32; PANEL_WIDTH]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86-64; the loads and stores are inside the two arrays.
    unsafe {
        let xv = _mm_set1_ps(x);
        for q in 0..4 {
            let a = _mm_loadu_ps(acc.as_ptr().add(4 * q));
            let p = _mm_mul_ps(xv, _mm_loadu_ps(w.as_ptr().add(4 * q)));
            _mm_storeu_ps(acc.as_mut_ptr().add(4 * q), _mm_add_ps(a, p));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for j in 0..PANEL_WIDTH {
        acc[j] += x * w[j];
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `R` rows (of a packed group of `G`) x `P` panels with one 16-lane accumulator per row and
/// panel.
///
/// # Safety
/// AVX-512F must be available; `t` must describe a packed group of `G` rows of `t.k` readable
/// inputs, `P` panels of `16 t.k` readable weights `t.panel_stride` apart, `16 P` biases and
/// `R` writable output rows of `16 P`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn micro_avx512<const G: usize, const R: usize, const P: usize, const W: u8>(t: Tile) {
    // SAFETY: the caller guarantees every range read or written below.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for r in 0..R {
            for p in 0..P {
                acc[r][p] = if t.accumulate {
                    _mm512_loadu_ps(t.out.add(r * t.out_stride + p * 16))
                } else {
                    _mm512_loadu_ps(t.bias.add(p * 16))
                };
            }
        }
        let x = t.x.cast::<f32>();
        let wb = if W == W_F32 { 4 } else { 2 };
        for i in 0..t.k {
            if t.prefetch_ahead != 0 {
                for p in 0..P {
                    let at = (p * t.panel_stride + i * PANEL_WIDTH) * wb + t.prefetch_ahead;
                    // A hint, never dereferenced: it may point past the weights.
                    _mm_prefetch::<_MM_HINT_T0>(t.w.wrapping_add(at).cast());
                }
            }
            let mut wv = [_mm512_setzero_ps(); P];
            for p in 0..P {
                let at = p * t.panel_stride + i * PANEL_WIDTH;
                wv[p] = if W == W_BF16 {
                    // bf16 is the top half of an f32: widen by a 16-bit shift.
                    let bits = _mm256_loadu_si256(t.w.cast::<u16>().add(at).cast());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
                } else if W == W_F16 {
                    _mm512_cvtph_ps(_mm256_loadu_si256(t.w.cast::<u16>().add(at).cast()))
                } else {
                    _mm512_loadu_ps(t.w.cast::<f32>().add(at))
                };
            }
            for r in 0..R {
                let xv = _mm512_set1_ps(*x.add(i * G + r));
                for p in 0..P {
                    acc[r][p] = _mm512_fmadd_ps(xv, wv[p], acc[r][p]);
                }
            }
        }
        for r in 0..R {
            for p in 0..P {
                _mm512_storeu_ps(t.out.add(r * t.out_stride + p * 16), acc[r][p]);
            }
        }
    }
}

/// 12 rows in place (`t.x_stride` floats apart) x 2 panels: the same operations, in the same
/// order, as [`micro_avx512`] with `R = 12, P = 2` over packed rows, so the results are
/// bit-identical; the rows are read where they are instead of being copied first. The loop is
/// written in assembly because the compiler re-derived each row's address from the stride in
/// every iteration: here rows `3b + j` (`b < 4`, `j < 3`) are read at `base_b + j * stride`,
/// through x86 scaled addressing, so an input is 2 weight loads, 12 broadcasts, 24 FMAs, one
/// prefetch of a line of `t.prefetch` and, unrolled by two, 3 pointer increments (the
/// increments compete with the FMAs for ports: 1.5 % faster than one input a step; the same
/// unrolling made the AVX2 kernel, with fewer FMAs per increment to hide, 2 % slower).
///
/// # Safety
/// AVX-512F must be available; `t.x` must point at 12 rows of `t.k` readable floats,
/// `t.x_stride` floats apart; weights, biases and outputs as for [`micro_avx512`] with 2 panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn micro_avx512_in_place(t: Tile) {
    // SAFETY: the caller guarantees every range read or written below; the assembly reads
    // inputs 0..k of the 12 rows and 16 weights of each panel per input, and writes only the
    // named registers.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        for (r, row) in acc.iter_mut().enumerate() {
            for (p, v) in row.iter_mut().enumerate() {
                *v = if t.accumulate {
                    _mm512_loadu_ps(t.out.add(r * t.out_stride + p * 16))
                } else {
                    _mm512_loadu_ps(t.bias.add(p * 16))
                };
            }
        }
        if t.k > 0 {
            let x = t.x.cast::<f32>();
            let stride = t.x_stride * 4;
            let [[a0, a1], [a2, a3], [a4, a5], [a6, a7], [a8, a9], [a10, a11], [a12, a13], [a14, a15], [a16, a17], [a18, a19], [a20, a21], [a22, a23]] =
                &mut acc;
            std::arch::asm!(
                // Two inputs a step (half the pointer increments), then an odd last input.
                "test {pairs}, {pairs}",
                "jz 3f",
                "2:",
                "prefetcht0 [{pf}]",
                "vmovups {w0}, [{w}]",
                "vmovups {w1}, [{w} + {ws}]",
                "vbroadcastss {v}, dword ptr [{b0}]",
                "vfmadd231ps {a0}, {w0}, {v}",
                "vfmadd231ps {a1}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b0} + {s}]",
                "vfmadd231ps {a2}, {w0}, {u}",
                "vfmadd231ps {a3}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b0} + {s}*2]",
                "vfmadd231ps {a4}, {w0}, {v}",
                "vfmadd231ps {a5}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1}]",
                "vfmadd231ps {a6}, {w0}, {u}",
                "vfmadd231ps {a7}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b1} + {s}]",
                "vfmadd231ps {a8}, {w0}, {v}",
                "vfmadd231ps {a9}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1} + {s}*2]",
                "vfmadd231ps {a10}, {w0}, {u}",
                "vfmadd231ps {a11}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b2}]",
                "vfmadd231ps {a12}, {w0}, {v}",
                "vfmadd231ps {a13}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b2} + {s}]",
                "vfmadd231ps {a14}, {w0}, {u}",
                "vfmadd231ps {a15}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b2} + {s}*2]",
                "vfmadd231ps {a16}, {w0}, {v}",
                "vfmadd231ps {a17}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b3}]",
                "vfmadd231ps {a18}, {w0}, {u}",
                "vfmadd231ps {a19}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b3} + {s}]",
                "vfmadd231ps {a20}, {w0}, {v}",
                "vfmadd231ps {a21}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b3} + {s}*2]",
                "vfmadd231ps {a22}, {w0}, {u}",
                "vfmadd231ps {a23}, {w1}, {u}",
                "prefetcht0 [{pf} + 64]",
                "vmovups {w0}, [{w} + 64]",
                "vmovups {w1}, [{w} + {ws} + 64]",
                "vbroadcastss {v}, dword ptr [{b0} + 4]",
                "vfmadd231ps {a0}, {w0}, {v}",
                "vfmadd231ps {a1}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b0} + {s} + 4]",
                "vfmadd231ps {a2}, {w0}, {u}",
                "vfmadd231ps {a3}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b0} + {s}*2 + 4]",
                "vfmadd231ps {a4}, {w0}, {v}",
                "vfmadd231ps {a5}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1} + 4]",
                "vfmadd231ps {a6}, {w0}, {u}",
                "vfmadd231ps {a7}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b1} + {s} + 4]",
                "vfmadd231ps {a8}, {w0}, {v}",
                "vfmadd231ps {a9}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1} + {s}*2 + 4]",
                "vfmadd231ps {a10}, {w0}, {u}",
                "vfmadd231ps {a11}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b2} + 4]",
                "vfmadd231ps {a12}, {w0}, {v}",
                "vfmadd231ps {a13}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b2} + {s} + 4]",
                "vfmadd231ps {a14}, {w0}, {u}",
                "vfmadd231ps {a15}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b2} + {s}*2 + 4]",
                "vfmadd231ps {a16}, {w0}, {v}",
                "vfmadd231ps {a17}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b3} + 4]",
                "vfmadd231ps {a18}, {w0}, {u}",
                "vfmadd231ps {a19}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b3} + {s} + 4]",
                "vfmadd231ps {a20}, {w0}, {v}",
                "vfmadd231ps {a21}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b3} + {s}*2 + 4]",
                "vfmadd231ps {a22}, {w0}, {u}",
                "vfmadd231ps {a23}, {w1}, {u}",
                "add {b0}, 8",
                "add {b1}, 8",
                "add {b2}, 8",
                "add {b3}, 8",
                "add {w}, 128",
                "add {pf}, 128",
                "dec {pairs}",
                "jnz 2b",
                "3:",
                "test {odd}, {odd}",
                "jz 4f",
                "prefetcht0 [{pf}]",
                "vmovups {w0}, [{w}]",
                "vmovups {w1}, [{w} + {ws}]",
                "vbroadcastss {v}, dword ptr [{b0}]",
                "vfmadd231ps {a0}, {w0}, {v}",
                "vfmadd231ps {a1}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b0} + {s}]",
                "vfmadd231ps {a2}, {w0}, {u}",
                "vfmadd231ps {a3}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b0} + {s}*2]",
                "vfmadd231ps {a4}, {w0}, {v}",
                "vfmadd231ps {a5}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1}]",
                "vfmadd231ps {a6}, {w0}, {u}",
                "vfmadd231ps {a7}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b1} + {s}]",
                "vfmadd231ps {a8}, {w0}, {v}",
                "vfmadd231ps {a9}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1} + {s}*2]",
                "vfmadd231ps {a10}, {w0}, {u}",
                "vfmadd231ps {a11}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b2}]",
                "vfmadd231ps {a12}, {w0}, {v}",
                "vfmadd231ps {a13}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b2} + {s}]",
                "vfmadd231ps {a14}, {w0}, {u}",
                "vfmadd231ps {a15}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b2} + {s}*2]",
                "vfmadd231ps {a16}, {w0}, {v}",
                "vfmadd231ps {a17}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b3}]",
                "vfmadd231ps {a18}, {w0}, {u}",
                "vfmadd231ps {a19}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b3} + {s}]",
                "vfmadd231ps {a20}, {w0}, {v}",
                "vfmadd231ps {a21}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b3} + {s}*2]",
                "vfmadd231ps {a22}, {w0}, {u}",
                "vfmadd231ps {a23}, {w1}, {u}",
                "4:",
                b0 = inout(reg) x => _,
                b1 = inout(reg) x.add(3 * t.x_stride) => _,
                b2 = inout(reg) x.add(6 * t.x_stride) => _,
                b3 = inout(reg) x.add(9 * t.x_stride) => _,
                s = in(reg) stride,
                w = inout(reg) t.w.cast::<f32>() => _,
                pf = inout(reg) t.prefetch => _,
                ws = in(reg) t.panel_stride * 4,
                pairs = inout(reg) t.k / 2 => _,
                odd = in(reg) t.k & 1,
                w0 = out(zmm_reg) _,
                w1 = out(zmm_reg) _,
                v = out(zmm_reg) _,
                u = out(zmm_reg) _,
                a0 = inout(zmm_reg) *a0,
                a1 = inout(zmm_reg) *a1,
                a2 = inout(zmm_reg) *a2,
                a3 = inout(zmm_reg) *a3,
                a4 = inout(zmm_reg) *a4,
                a5 = inout(zmm_reg) *a5,
                a6 = inout(zmm_reg) *a6,
                a7 = inout(zmm_reg) *a7,
                a8 = inout(zmm_reg) *a8,
                a9 = inout(zmm_reg) *a9,
                a10 = inout(zmm_reg) *a10,
                a11 = inout(zmm_reg) *a11,
                a12 = inout(zmm_reg) *a12,
                a13 = inout(zmm_reg) *a13,
                a14 = inout(zmm_reg) *a14,
                a15 = inout(zmm_reg) *a15,
                a16 = inout(zmm_reg) *a16,
                a17 = inout(zmm_reg) *a17,
                a18 = inout(zmm_reg) *a18,
                a19 = inout(zmm_reg) *a19,
                a20 = inout(zmm_reg) *a20,
                a21 = inout(zmm_reg) *a21,
                a22 = inout(zmm_reg) *a22,
                a23 = inout(zmm_reg) *a23,
                options(nostack, readonly),
            );
        }
        for (r, row) in acc.iter().enumerate() {
            for (p, v) in row.iter().enumerate() {
                _mm512_storeu_ps(t.out.add(r * t.out_stride + p * 16), *v);
            }
        }
    }
}

/// `R` rows (of a packed group of `G`) x `P` panels with two 8-lane accumulators per row and
/// panel.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `t` as for [`micro_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn micro_avx2<const G: usize, const R: usize, const P: usize, const W: u8>(t: Tile) {
    // SAFETY: the caller guarantees every range read or written below.
    unsafe {
        // Each panel's 16 outputs are two ymm halves.
        let (mut lo, mut hi) = ([[_mm256_setzero_ps(); P]; R], [[_mm256_setzero_ps(); P]; R]);
        for r in 0..R {
            for p in 0..P {
                let init = if t.accumulate {
                    t.out.add(r * t.out_stride + p * PANEL_WIDTH).cast_const()
                } else {
                    t.bias.add(p * PANEL_WIDTH)
                };
                lo[r][p] = _mm256_loadu_ps(init);
                hi[r][p] = _mm256_loadu_ps(init.add(8));
            }
        }
        let x = t.x.cast::<f32>();
        for i in 0..t.k {
            for p in 0..P {
                let at = p * t.panel_stride + i * PANEL_WIDTH;
                let (w0, w1) = if W == W_F16 {
                    let bits = t.w.cast::<u16>().add(at);
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(bits.cast())),
                        _mm256_cvtph_ps(_mm_loadu_si128(bits.add(8).cast())),
                    )
                } else if W == W_BF16 {
                    let bits = t.w.cast::<u16>().add(at);
                    let widen = |b: __m128i| {
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(b)))
                    };
                    (
                        widen(_mm_loadu_si128(bits.cast())),
                        widen(_mm_loadu_si128(bits.add(8).cast())),
                    )
                } else {
                    let w = t.w.cast::<f32>().add(at);
                    (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)))
                };
                for r in 0..R {
                    let xv = _mm256_set1_ps(*x.add(i * G + r));
                    lo[r][p] = _mm256_fmadd_ps(xv, w0, lo[r][p]);
                    hi[r][p] = _mm256_fmadd_ps(xv, w1, hi[r][p]);
                }
            }
        }
        for r in 0..R {
            for p in 0..P {
                let o = t.out.add(r * t.out_stride + p * PANEL_WIDTH);
                _mm256_storeu_ps(o, lo[r][p]);
                _mm256_storeu_ps(o.add(8), hi[r][p]);
            }
        }
    }
}

/// 6 rows in place (`t.x_stride` floats apart) x 1 panel: [`micro_avx2`] with `R = 6` and f32
/// weights, reading the rows where they are (rows `3b + j` at `base_b + j * stride`), with
/// the same operations in the same order, so bit-identical; assembly for the reason given at
/// [`micro_avx512_in_place`], with the same prefetch of a line of `t.prefetch` per input. All
/// 16 ymm registers are used: 12 accumulators, 2 weights, 2 broadcasts.
///
/// # Safety
/// AVX2 and FMA must be available; `t.x` must point at 6 rows of `t.k` readable floats,
/// `t.x_stride` floats apart; weights, biases and outputs as for [`micro_avx2`] with f32
/// weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn micro_avx2_in_place(t: Tile) {
    // SAFETY: the caller guarantees every range read or written below; the assembly reads
    // inputs 0..k of the 6 rows and 16 weights per input, and writes only the named
    // registers.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for (r, row) in acc.iter_mut().enumerate() {
            let init = if t.accumulate {
                t.out.add(r * t.out_stride).cast_const()
            } else {
                t.bias
            };
            row[0] = _mm256_loadu_ps(init);
            row[1] = _mm256_loadu_ps(init.add(8));
        }
        if t.k > 0 {
            let x = t.x.cast::<f32>();
            let [[a0, a1], [a2, a3], [a4, a5], [a6, a7], [a8, a9], [a10, a11]] = &mut acc;
            std::arch::asm!(
                "2:",
                "prefetcht0 [{pf}]",
                "vmovups {w0}, [{w}]",
                "vmovups {w1}, [{w} + 32]",
                "vbroadcastss {v}, dword ptr [{b0}]",
                "vfmadd231ps {a0}, {w0}, {v}",
                "vfmadd231ps {a1}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b0} + {s}]",
                "vfmadd231ps {a2}, {w0}, {u}",
                "vfmadd231ps {a3}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b0} + {s}*2]",
                "vfmadd231ps {a4}, {w0}, {v}",
                "vfmadd231ps {a5}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1}]",
                "vfmadd231ps {a6}, {w0}, {u}",
                "vfmadd231ps {a7}, {w1}, {u}",
                "vbroadcastss {v}, dword ptr [{b1} + {s}]",
                "vfmadd231ps {a8}, {w0}, {v}",
                "vfmadd231ps {a9}, {w1}, {v}",
                "vbroadcastss {u}, dword ptr [{b1} + {s}*2]",
                "vfmadd231ps {a10}, {w0}, {u}",
                "vfmadd231ps {a11}, {w1}, {u}",
                "add {b0}, 4",
                "add {b1}, 4",
                "add {pf}, 64",
                "add {w}, 64",
                "dec {k}",
                "jnz 2b",
                b0 = inout(reg) x => _,
                b1 = inout(reg) x.add(3 * t.x_stride) => _,
                s = in(reg) t.x_stride * 4,
                w = inout(reg) t.w.cast::<f32>() => _,
                pf = inout(reg) t.prefetch => _,
                k = inout(reg) t.k => _,
                w0 = out(ymm_reg) _,
                w1 = out(ymm_reg) _,
                v = out(ymm_reg) _,
                u = out(ymm_reg) _,
                a0 = inout(ymm_reg) *a0,
                a1 = inout(ymm_reg) *a1,
                a2 = inout(ymm_reg) *a2,
                a3 = inout(ymm_reg) *a3,
                a4 = inout(ymm_reg) *a4,
                a5 = inout(ymm_reg) *a5,
                a6 = inout(ymm_reg) *a6,
                a7 = inout(ymm_reg) *a7,
                a8 = inout(ymm_reg) *a8,
                a9 = inout(ymm_reg) *a9,
                a10 = inout(ymm_reg) *a10,
                a11 = inout(ymm_reg) *a11,
                options(nostack, readonly),
            );
        }
        for (r, row) in acc.iter().enumerate() {
            _mm256_storeu_ps(t.out.add(r * t.out_stride), row[0]);
            _mm256_storeu_ps(t.out.add(r * t.out_stride + 8), row[1]);
        }
    }
}

/// `R` rows (of a packed group of `G`) x `P` panels over bf16 pairs: one AVX-512 BF16 dot
/// product per row and panel for every two inputs.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be available; `t` must describe a packed group of `G` rows
/// of `t.k.div_ceil(2)` readable input pairs, `P` panels of `16 t.k.div_ceil(2)` readable
/// weight pairs `t.panel_stride` apart, `16 P` biases and `R` writable output rows of `16 P`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
#[inline]
unsafe fn micro_avx512_pairs<const G: usize, const R: usize, const P: usize>(t: Tile) {
    // SAFETY: the caller guarantees every range read or written below.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for r in 0..R {
            for p in 0..P {
                acc[r][p] = if t.accumulate {
                    _mm512_loadu_ps(t.out.add(r * t.out_stride + p * 16))
                } else {
                    _mm512_loadu_ps(t.bias.add(p * 16))
                };
            }
        }
        let (x, w) = (t.x.cast::<i32>(), t.w.cast::<u32>());
        for q in 0..t.k.div_ceil(2) {
            let mut wv = [_mm512_setzero_si512(); P];
            for p in 0..P {
                wv[p] = _mm512_loadu_si512(w.add(p * t.panel_stride + q * PANEL_WIDTH).cast());
            }
            for r in 0..R {
                let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(q * G + r)));
                for p in 0..P {
                    let wp: __m512bh = std::mem::transmute(wv[p]);
                    acc[r][p] = _mm512_dpbf16_ps(acc[r][p], xv, wp);
                }
            }
        }
        for r in 0..R {
            for p in 0..P {
                _mm512_storeu_ps(t.out.add(r * t.out_stride + p * 16), acc[r][p]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pack_panels;

    /// Pseudo-random values in [-0.5, 0.5) from `seed` (a 64-bit LCG's top bits).
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    /// bf16 bits of `v`, rounded to nearest even.
    fn bf16(v: f32) -> u16 {
        bf16_bits(v) as u16
    }

    fn widen(b: u16) -> f32 {
        f32::from_bits((b as u32) << 16)
    }

    #[test]
    fn bf16_rounding_keeps_nan_and_infinities() {
        for bits in [
            0x7F80_0001u32,
            0x7FC0_0000,
            0x7FFF_FFFF,
            0xFFFF_FFFF,
            0xFF80_0001,
        ] {
            assert!(widen(bf16(f32::from_bits(bits))).is_nan(), "{bits:#x}");
        }
        assert_eq!(widen(bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(widen(bf16(f32::NEG_INFINITY)), f32::NEG_INFINITY);
        // Against the `half` crate's rounding, for finite values.
        for v in [
            1.0f32,
            -2.5e-3,
            3.0e38,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
        ] {
            assert_eq!(bf16(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
    }

    /// `dense` over `n` rows of `d` inputs (stride `d`) into a fresh NaN-filled output of
    /// `padded_rows(o)` per row, panels forward.
    #[allow(clippy::too_many_arguments)]
    fn product(
        plan: &KernelPlan,
        x: &[f32],
        n: usize,
        d: usize,
        weights: MatrixWeights<'_>,
        o: usize,
        b: &[f32],
        pack: &mut [f32],
    ) -> Vec<f32> {
        let stride = padded_rows(o);
        let mut out = vec![f32::NAN; n * stride];
        dense(
            plan,
            x,
            n,
            d,
            d,
            weights,
            o,
            b,
            &mut out,
            stride,
            pack,
            PanelOrder::Forward,
        );
        out
    }

    #[test]
    fn half_weights_widened_equal_f32_kernels_and_bf16_pairs_match_bf16_products() {
        let mut next = uniform(777u64);
        // 3 panels; 15 panels, which the few-rows kernels cut into tiles of 8, 4, 2 and 1.
        let shapes = [(37, 41), (21, 233)];
        let cases = shapes
            .iter()
            .flat_map(|&s| [1usize, 2, 3, 7, 13, 130].map(|n| (s, n)));
        for ((d, o), n) in cases {
            let stride = padded_rows(o);
            let x: Vec<f32> = (0..n * d).map(|_| next()).collect();
            let w: Vec<f32> = (0..o * d).map(|_| next()).collect();
            let b: Vec<f32> = (0..o).map(|_| next()).collect();
            let w16: Vec<u16> = w.iter().map(|v| bf16(*v)).collect();
            let widened: Vec<f32> = w16.iter().map(|v| widen(*v)).collect();
            let panels32 = pack_panels(&widened, o, d);
            // The bf16 panels: the f32 panels' top halves (widening is exact).
            let panels16: Vec<u16> = panels32
                .iter()
                .map(|v| (v.to_bits() >> 16) as u16)
                .collect();
            // f16 panels: inputs chosen as exact f16 values, so widening is exact too.
            let w_h: Vec<f32> = w.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
            let panels_h32 = pack_panels(&w_h, o, d);
            let panels_h16: Vec<u16> = panels_h32
                .iter()
                .map(|v| half::f16::from_f32(*v).to_bits())
                .collect();
            let mut pack = vec![f32::NAN; PACK_FLOATS];
            for isa in Isa::all_supported() {
                for k_block in [8, 36, 64] {
                    let plan = KernelPlan::for_isa(isa).with_k_block(k_block);
                    let run = |w, pack: &mut Vec<f32>| product(&plan, &x, n, d, w, o, &b, pack);
                    let want = run(MatrixWeights::F32(&panels_h32), &mut pack);
                    let got = run(MatrixWeights::F16(&panels_h16), &mut pack);
                    assert_eq!(got, want, "{isa:?}: f16 weights widened differ from f32");
                }
                for k_block in [8, 36, 64] {
                    let plan = KernelPlan::for_isa(isa).with_k_block(k_block);
                    let run = |w, pack: &mut Vec<f32>| product(&plan, &x, n, d, w, o, &b, pack);
                    let want = run(MatrixWeights::F32(&panels32), &mut pack);
                    let got = run(MatrixWeights::Bf16(&panels16), &mut pack);
                    assert_eq!(got, want, "{isa:?}: bf16 weights widened differ from f32");
                }
            }
            if !crate::model::bf16_dot_supported() {
                continue;
            }
            // Pairs: inputs and weights rounded to bf16, products summed in f32.
            let pairs = super::super::pair_panels(&panels16, o, d);
            let pair_isas = [Isa::Avx512, Isa::Amx]
                .into_iter()
                .filter(|i| i.is_supported());
            for (isa, k_block) in pair_isas.flat_map(|i| [2, 8, 36, 64].map(|k| (i, k))) {
                let plan = KernelPlan {
                    tile_k_block: 16 * k_block,
                    ..KernelPlan::for_isa(isa).with_k_block(k_block)
                };
                let mut got = vec![f32::NAN; n * stride];
                let weights = MatrixWeights::Bf16Pairs(&pairs);
                dense(
                    &plan,
                    &x,
                    n,
                    d,
                    d,
                    weights,
                    o,
                    &b,
                    &mut got,
                    stride,
                    &mut pack,
                    PanelOrder::Forward,
                );
                for r in 0..n {
                    for j in 0..o {
                        let want: f64 = b[j] as f64
                            + (0..d)
                                .map(|i| {
                                    widen(bf16(x[r * d + i])) as f64 * widened[j * d + i] as f64
                                })
                                .sum::<f64>();
                        let g = got[r * stride + j] as f64;
                        assert!(
                            (g - want).abs() < 1e-5,
                            "{isa:?} pairs n={n} r={r} j={j}: {g} vs {want}"
                        );
                    }
                    assert!(got[r * stride + o..(r + 1) * stride]
                        .iter()
                        .all(|v| *v == 0.0));
                }
            }
        }
    }

    #[test]
    fn amx_tiles_match_bf16_products_for_ragged_shapes_strides_and_any_chunking() {
        if !Isa::Amx.is_supported() {
            eprintln!("skipped: no AMX bf16 tiles in this process");
            return;
        }
        let mut next = uniform(4242u64);
        let mut pack = vec![f32::NAN; PACK_FLOATS];
        // Inputs: one step, ragged pairs (d odd, pairs % 16 != 0), several input blocks.
        // Outputs: one panel, an odd number of panels, a ragged last panel.
        for (d, o) in [(32, 16), (37, 41), (1024, 48), (601, 80)] {
            let (x_stride, out_stride) = (d + 3, padded_rows(o) + 16);
            let n_max = 70;
            let x: Vec<f32> = (0..n_max * x_stride).map(|_| next()).collect();
            let w: Vec<f32> = (0..o * d).map(|_| next()).collect();
            let b: Vec<f32> = (0..o).map(|_| next()).collect();
            let w16: Vec<u16> = w.iter().map(|v| bf16(*v)).collect();
            let panels16 =
                super::super::pack_panels(&w16.iter().map(|v| widen(*v)).collect::<Vec<_>>(), o, d)
                    .iter()
                    .map(|v| (v.to_bits() >> 16) as u16)
                    .collect::<Vec<u16>>();
            let pairs = super::super::pair_panels(&panels16, o, d);
            let weights = MatrixWeights::Bf16Pairs(&pairs);
            for k_block in [32, 64, 192, 1024] {
                let plan = KernelPlan {
                    tile_k_block: k_block,
                    ..KernelPlan::for_isa(Isa::Amx)
                };
                let mut all = vec![f32::NAN; n_max * out_stride];
                dense(
                    &plan,
                    &x,
                    n_max,
                    d,
                    x_stride,
                    weights,
                    o,
                    &b,
                    &mut all,
                    out_stride,
                    &mut pack,
                    PanelOrder::Forward,
                );
                for r in 0..n_max {
                    for j in 0..o {
                        let terms = (0..d).map(|i| {
                            widen(bf16(x[r * x_stride + i])) as f64 * widen(w16[j * d + i]) as f64
                        });
                        let size: f64 = terms.clone().map(f64::abs).sum::<f64>() + 1.0;
                        let want = b[j] as f64 + terms.sum::<f64>();
                        let g = all[r * out_stride + j] as f64;
                        assert!(
                            (g - want).abs() < 1e-6 * size,
                            "d={d} o={o} k_block={k_block} r={r} j={j}: {g} vs {want}"
                        );
                    }
                    let row = &all[r * out_stride..(r + 1) * out_stride];
                    assert!(row[o..padded_rows(o)].iter().all(|v| *v == 0.0));
                    assert!(
                        row[padded_rows(o)..].iter().all(|v| v.is_nan()),
                        "wrote past"
                    );
                }
                // The same rows cut into other chunks: the same bits.
                for n in [1, 15, 16, 17, 31, 33] {
                    let mut part = vec![f32::NAN; n_max * out_stride];
                    let mut r0 = 0;
                    while r0 < n_max {
                        let rows = n.min(n_max - r0);
                        dense(
                            &plan,
                            &x[r0 * x_stride..],
                            rows,
                            d,
                            x_stride,
                            weights,
                            o,
                            &b,
                            &mut part[r0 * out_stride..],
                            out_stride,
                            &mut pack,
                            PanelOrder::Forward,
                        );
                        r0 += rows;
                    }
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&part), bits(&all), "d={d} o={o} chunks of {n}");
                }
            }
        }
    }

    fn naive(x: &[f32], n: usize, d: usize, w: &[f32], o: usize, b: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0; n * o];
        for r in 0..n {
            for j in 0..o {
                out[r * o + j] = b[j] as f64
                    + (0..d)
                        .map(|i| x[r * d + i] as f64 * w[j * d + i] as f64)
                        .sum::<f64>();
            }
        }
        out
    }

    #[test]
    fn rows_read_in_place_match_packed_rows_bit_for_bit() {
        // An even number of panels (so the AVX-512 kernels read whole groups of 12 rows in
        // place), rows further apart than their length, row counts with and without a
        // partial group, input blocks that do and do not divide the input dimension. Each
        // row computed alone (a single row is always packed) must give the same bits, and
        // the product must match a naive one.
        let (d, o, x_stride) = (45, 64, 61);
        let mut next = uniform(4242u64);
        for n in [12usize, 17, 24, 29, 37, 64, 140] {
            let x: Vec<f32> = (0..n * x_stride).map(|_| next()).collect();
            let w: Vec<f32> = (0..o * d).map(|_| next()).collect();
            let b: Vec<f32> = (0..o).map(|_| next()).collect();
            let packed = pack_panels(&w, o, d);
            let f32w = MatrixWeights::F32(&packed);
            let stride = padded_rows(o);
            let mut pack = vec![f32::NAN; PACK_FLOATS];
            for isa in Isa::all_supported() {
                for k_block in [7, 16, 45, 64] {
                    let plan = KernelPlan::for_isa(isa).with_k_block(k_block);
                    let mut out = vec![f32::NAN; n * stride];
                    dense(
                        &plan,
                        &x,
                        n,
                        d,
                        x_stride,
                        f32w,
                        o,
                        &b,
                        &mut out,
                        stride,
                        &mut pack,
                        PanelOrder::Forward,
                    );
                    for r in 0..n {
                        let mut single = vec![f32::NAN; stride];
                        let row = &x[r * x_stride..r * x_stride + d];
                        dense(
                            &plan,
                            row,
                            1,
                            d,
                            d,
                            f32w,
                            o,
                            &b,
                            &mut single,
                            stride,
                            &mut pack,
                            PanelOrder::Forward,
                        );
                        assert_eq!(
                            &out[r * stride..(r + 1) * stride],
                            &single[..],
                            "{isa:?} k_block {k_block} n {n} row {r}"
                        );
                        for j in 0..o {
                            let want: f64 = b[j] as f64
                                + (0..d)
                                    .map(|i| row[i] as f64 * w[j * d + i] as f64)
                                    .sum::<f64>();
                            let got = out[r * stride + j] as f64;
                            assert!((got - want).abs() < 1e-5, "{isa:?} n={n} r={r} j={j}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_few_rows_of_many_inputs_stay_inside_the_packing_buffer() {
        // Calls of a few rows take all their inputs in one block, bounded by the packing
        // buffer: 16 rows of 2,000 inputs, all packed (3 panels, an odd count, so no rows are
        // read in place), split into input blocks that fit (the assertion in `walk` guards
        // the bound) and still the right product.
        let (n, d, o) = (16usize, 2000usize, 40usize);
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let w: Vec<f32> = (0..o * d)
            .map(|i| ((i * 104_729) % 2000) as f32 * 1e-3 - 1.0)
            .collect();
        let b: Vec<f32> = (0..o).map(|j| j as f32 * 0.01).collect();
        let packed = pack_panels(&w, o, d);
        let expect = naive(&x, n, d, &w, o, &b);
        let stride = padded_rows(o);
        for isa in Isa::all_supported() {
            let mut pack = vec![f32::NAN; PACK_FLOATS];
            let mut out = vec![f32::NAN; n * stride];
            let plan = KernelPlan::for_isa(isa);
            let f32w = MatrixWeights::F32(&packed);
            let order = PanelOrder::Backward;
            dense(
                &plan, &x, n, d, d, f32w, o, &b, &mut out, stride, &mut pack, order,
            );
            for r in 0..n {
                for j in 0..o {
                    let (got, want) = (out[r * stride + j] as f64, expect[r * o + j]);
                    assert!(
                        (got - want).abs() < 1e-3 * want.abs().max(1.0),
                        "{isa:?} {r} {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn calls_of_a_few_rows_over_more_inputs_than_one_pass_match_the_blocked_kernels() {
        // Calls of up to 16 rows take one pass over up to 3,072 inputs (1,536 from 13 rows):
        // 3,100 inputs make every few-row and 8 x 3 tile park partial sums in `out` between
        // two passes. 15 panels: tiles of 8, 4, 2, 1 and of 3 panels.
        let (d, o, n_max) = (3100, 233, 20);
        let mut next = uniform(99u64);
        let x: Vec<f32> = (0..n_max * d).map(|_| next()).collect();
        let w: Vec<f32> = (0..o * d).map(|_| next()).collect();
        let b: Vec<f32> = (0..o).map(|_| next()).collect();
        let packed = pack_panels(&w, o, d);
        let f32w = MatrixWeights::F32(&packed);
        let stride = padded_rows(o);
        let mut pack = vec![f32::NAN; PACK_FLOATS];
        for isa in Isa::all_supported() {
            let plan = KernelPlan::for_isa(isa);
            let mut all = vec![f32::NAN; n_max * stride];
            let fwd = PanelOrder::Forward;
            dense(
                &plan, &x, n_max, d, d, f32w, o, &b, &mut all, stride, &mut pack, fwd,
            );
            for n in [1usize, 2, 3, 5, 8, 14, 16] {
                let mut part = vec![f32::NAN; n * stride];
                let back = PanelOrder::Backward;
                dense(
                    &plan, &x, n, d, d, f32w, o, &b, &mut part, stride, &mut pack, back,
                );
                assert!(
                    part.iter()
                        .zip(&all)
                        .all(|(p, a)| p.to_bits() == a.to_bits()),
                    "{isa:?}: {n} rows differ from the same rows in a call of {n_max}"
                );
            }
        }
    }

    #[test]
    fn every_plan_matches_naive_product_and_rows_are_chunking_independent() {
        // 3 panels (an odd group for the 2-panel kernel), a partial last panel, input blocks
        // that do and do not divide the input dimension; 15 panels, which the few-rows kernels
        // cut into tiles of 8, 4, 2 and 1.
        let mut next = uniform(12345u64);
        // Row counts around every kernel's row group and beyond one packed chunk of rows.
        let rows = [1usize, 2, 3, 4, 5, 6, 9, 13, 16, 17, 25, 64, 71];
        let cases = [(37, 41), (21, 233)]
            .into_iter()
            .flat_map(|s| rows.map(|n| (s, n)));
        for ((d, o), n) in cases {
            let x: Vec<f32> = (0..n * d).map(|_| next()).collect();
            let w: Vec<f32> = (0..o * d).map(|_| next()).collect();
            let b: Vec<f32> = (0..o).map(|_| next()).collect();
            let packed = pack_panels(&w, o, d);
            let f32w = MatrixWeights::F32(&packed);
            let stride = padded_rows(o);
            let expect = naive(&x, n, d, &w, o, &b);
            let mut pack = vec![f32::NAN; PACK_FLOATS];
            let pk = &mut pack;
            for isa in Isa::all_supported() {
                let unblocked = KernelPlan::for_isa(isa).with_k_block(d);
                let mut reference = vec![f32::NAN; n * stride];
                let refs = &mut reference;
                let forward = PanelOrder::Forward;
                dense(
                    &unblocked, &x, n, d, d, f32w, o, &b, refs, stride, pk, forward,
                );
                // Input blocks and panel order (which a call of a few rows follows) change
                // nothing.
                for k_block in [1, 8, 16, 36, 64] {
                    for order in [PanelOrder::Forward, PanelOrder::Backward] {
                        let plan = KernelPlan::for_isa(isa).with_k_block(k_block);
                        let mut out = vec![f32::NAN; n * stride];
                        dense(&plan, &x, n, d, d, f32w, o, &b, &mut out, stride, pk, order);
                        assert_eq!(out, reference, "{isa:?}: {k_block} {order:?} changed it");
                    }
                }
                for r in 0..n {
                    for j in 0..o {
                        let (got, want) = (reference[r * stride + j] as f64, expect[r * o + j]);
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{isa:?} n={n} r={r} j={j}: {got} vs {want}"
                        );
                    }
                    assert!(reference[r * stride + o..(r + 1) * stride]
                        .iter()
                        .all(|v| *v == 0.0));
                    // The same row computed alone is bit-identical.
                    let mut single = vec![0.0; stride];
                    let row = &x[r * d..];
                    dense(
                        &unblocked,
                        row,
                        1,
                        d,
                        d,
                        f32w,
                        o,
                        &b,
                        &mut single,
                        stride,
                        pk,
                        PanelOrder::Backward,
                    );
                    assert_eq!(&single[..], &reference[r * stride..(r + 1) * stride]);
                }
            }
        }
    }
}
