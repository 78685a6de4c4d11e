//! Row-wise helpers: activations, the attention and tile-classifier heads, and the f64
//! accumulation of the slide embedding.
//!
//! These run once per tile over `H` or `K` values (the matrix products run over `D x H`), so
//! they are written for accuracy first: reductions accumulate in f64.

// Lane loops index several fixed-size arrays by the same lane: ranges are clearer than zips.
#![allow(clippy::needless_range_loop)]

/// `x = max(x, 0)` for every element (NaN stays NaN); returns whether every value was finite
/// before (branch-free over chunks of 16, as [`all_finite`]).
#[inline(always)]
pub fn relu_in_place_finite(row: &mut [f32]) -> bool {
    let mut lanes = [0.0f32; LANES];
    let (chunks, tail) = row.as_chunks_mut::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            lanes[l] += c[l] * 0.0;
            c[l] = if c[l] < 0.0 { 0.0 } else { c[l] };
        }
    }
    for (l, v) in tail.iter_mut().enumerate() {
        lanes[l] += *v * 0.0;
        *v = if *v < 0.0 { 0.0 } else { *v };
    }
    let mut sum = 0.0;
    for l in 0..LANES {
        sum += lanes[l];
    }
    sum == 0.0
}

/// Logistic function in f64, stable for any finite input.
#[inline]
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

use super::Isa;

/// Lanes of the vectorisable loops below: one AVX-512 register of f32, two of f64.
const LANES: usize = 16;

/// `e^x` for f32, branch-free so that a loop over it vectorises (Cody-Waite reduction and a
/// degree-6 polynomial; within 2 ulp of the true value over the clamped range, where `x` is
/// clamped to `[-87.3, 88]`). Plain multiplies and adds, never fused: any instruction set gives
/// bit-identical results.
#[inline(always)]
fn exp_lane(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = if x > 88.0 { 88.0 } else { x };
    let x = if x < -87.3 { -87.3 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    p = p * (r * r) + r + 1.0;
    // 2^n from the integer in `shifted`'s low mantissa bits (n is in [-126, 127]).
    let scale = f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(0x4B40_0000)
            .wrapping_add(127)
            << 23,
    );
    p * scale
}

/// `tanh(x)` for f32, branch-free (a 13/6 odd/even rational approximation, clamped where f32
/// `tanh` is ±1; within a few ulp). Plain multiplies and adds, as [`exp_lane`].
#[inline(always)]
fn tanh_lane(x: f32) -> f32 {
    let (numerator, denominator) = tanh_ratio(x);
    numerator / denominator
}

/// [`tanh_lane`]'s numerator and denominator, before the division (so that a caller can fold
/// another division into it).
#[inline(always)]
fn tanh_ratio(x: f32) -> (f32, f32) {
    const CLAMP: f32 = 7.905_311;
    let c = if x > CLAMP { CLAMP } else { x };
    let c = if c < -CLAMP { -CLAMP } else { c };
    let x2 = c * c;
    let mut p = -2.760_768_5e-16f32;
    p = p * x2 + 2.000_188e-13;
    p = p * x2 - 8.604_672e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    p *= c;
    let mut q = 1.198_258_4e-6f32;
    q = q * x2 + 1.185_347_1e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525e-3;
    if c.abs() < 4e-4 {
        (c, 1.0)
    } else {
        (p, q)
    }
}

/// Logistic function for f32 through [`exp_lane`] (the pass folds it into
/// [`gated_term_lane`]; the tests check the pieces).
#[cfg(test)]
#[inline(always)]
fn sigmoid_lane(x: f32) -> f32 {
    1.0 / (1.0 + exp_lane(-x))
}

/// `tanh(a) * sigmoid(g)` with one division: `p / (q (1 + e^-g))` for `tanh(a) = p / q` (a
/// 16-lane division is the costliest instruction of the row-wise work). No overflow: `q <= 1`
/// and `e^-g <= e^88`.
#[inline(always)]
fn gated_term_lane(a: f32, g: f32) -> f32 {
    let (numerator, denominator) = tanh_ratio(a);
    numerator / (denominator * (1.0 + exp_lane(-g)))
}

/// Sum of 16 f64 lanes in a fixed pairwise order.
#[inline(always)]
fn sum_lanes(mut lanes: [f64; LANES]) -> f64 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// Turns one tile's attention pre-activations into the terms of its attention logit, in place:
/// `a[k] = tanh(a[k]) * sigmoid(gate[k])` (gated) or `tanh(a[k])` (plain, `gate = None`).
/// `a` and `gate` already include their biases. f32, within a few ulp of the exact values.
#[inline(always)]
pub fn attention_terms(a: &mut [f32], gate: Option<&[f32]>) {
    match gate {
        Some(gate) => {
            for (a, g) in a.iter_mut().zip(gate) {
                *a = gated_term_lane(*a, *g);
            }
        }
        None => {
            for a in a.iter_mut() {
                *a = tanh_lane(*a);
            }
        }
    }
}

/// Attention logit from the attention pre-activations of one tile:
/// `bias + sum_k w[k] * tanh(a[k]) * sigmoid(gate[k])` (gated) or without the sigmoid factor
/// (plain, `gate = None`): [`attention_terms`] on a copy of `a`, then [`dot_f64`] with `w`.
#[cfg(test)]
fn attention_logit(a: &[f32], gate: Option<&[f32]>, w: &[f32], bias: f32) -> f64 {
    let mut terms = a[..w.len()].to_vec();
    attention_terms(&mut terms, gate.map(|g| &g[..w.len()]));
    dot_f64(Isa::Portable, &terms, w, bias as f64)
}

/// Dot product accumulated in f64 (16 lanes, summed in a fixed order), plus a bias: lane `l`
/// sums the products `x[i] * w[i]` (exact in f64) of the `i` with `i % 16 == l`, in order.
/// The AVX-512 and AVX2 versions compute the same lanes with vector instructions (the
/// compiler's own vectorisation of this loop shuffled lanes across chunks and was 2 % of a
/// push), so every instruction set gives the same bits.
#[inline(always)]
pub fn dot_f64(isa: Isa, x: &[f32], w: &[f32], bias: f64) -> f64 {
    let n = x.len().min(w.len());
    let (x, w) = (&x[..n], &w[..n]);
    let mut lanes = [0.0f64; LANES];
    whole_chunk_lanes(supported_vector(isa), x, w, &mut lanes);
    tail_lanes(x, w, &mut lanes);
    bias + sum_lanes(lanes)
}

/// The vector instruction set of `isa` if this CPU has it, else the portable code (every one
/// gives the same bits, so a caller's wrong `isa` costs speed, never soundness).
#[inline(always)]
fn supported_vector(isa: Isa) -> Isa {
    let vector = isa.vector();
    if vector.is_supported() {
        vector
    } else {
        Isa::Portable
    }
}

/// Sets `lanes` (all zero on entry) to the sums, lane by lane, of the products of the whole
/// chunks of 16 of `x` and `w` (equal lengths), with `vector` (an instruction set this CPU
/// supports).
#[inline(always)]
fn whole_chunk_lanes(vector: Isa, x: &[f32], w: &[f32], lanes: &mut [f64; LANES]) {
    let whole = x.len().min(w.len()) / LANES * LANES;
    match vector {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the callers pass an instruction set from `supported_vector`, which this CPU
        // supports; both slices hold `whole` values, a multiple of 16.
        Isa::Avx512 => unsafe { simd::lanes_avx512(x.as_ptr(), w.as_ptr(), whole, lanes) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma => unsafe { simd::lanes_avx2(x.as_ptr(), w.as_ptr(), whole, lanes) },
        _ => {
            let (xc, _) = x.as_chunks::<LANES>();
            let (wc, _) = w.as_chunks::<LANES>();
            for (xc, wc) in xc.iter().zip(wc) {
                for l in 0..LANES {
                    lanes[l] += xc[l] as f64 * wc[l] as f64;
                }
            }
        }
    }
}

/// Adds to `lanes` the products of the values after the whole chunks of 16 (equal lengths).
#[inline(always)]
fn tail_lanes(x: &[f32], w: &[f32], lanes: &mut [f64; LANES]) {
    let whole = x.len().min(w.len()) / LANES * LANES;
    for (l, (x, w)) in x[whole..].iter().zip(&w[whole..]).enumerate() {
        lanes[l] += *x as f64 * *w as f64;
    }
}

/// Two dot products of the same `x` ([`dot_f64`] with `w1` and with `w2`, the same bits),
/// reading `x` once with AVX-512: the tile classifier's two rows.
#[inline(always)]
pub fn dot2_f64(isa: Isa, x: &[f32], w1: &[f32], w2: &[f32], b1: f64, b2: f64) -> (f64, f64) {
    let vector = supported_vector(isa);
    let n = x.len().min(w1.len());
    if vector != Isa::Avx512 || n != x.len().min(w2.len()) {
        // One product at a time (also for rows of different lengths, never in a model).
        return (dot_f64(isa, x, w1, b1), dot_f64(isa, x, w2, b2));
    }
    let (x, w1, w2) = (&x[..n], &w1[..n], &w2[..n]);
    let (mut l1, mut l2) = ([0.0f64; LANES], [0.0f64; LANES]);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supported_vector` returned AVX-512, which this CPU supports; the three slices
    // hold `n / 16 * 16` values, a multiple of 16.
    unsafe {
        simd::lanes2_avx512(
            x.as_ptr(),
            [w1.as_ptr(), w2.as_ptr()],
            n / LANES * LANES,
            [&mut l1, &mut l2],
        )
    };
    tail_lanes(x, w1, &mut l1);
    tail_lanes(x, w2, &mut l2);
    (b1 + sum_lanes(l1), b2 + sum_lanes(l2))
}

/// The 16 f64 lanes of [`dot_f64`] with vector instructions.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// Writes to `lanes` the sums, lane by lane, of the products of the first `n` values.
    ///
    /// # Safety
    /// AVX-512F must be available; `n` must be a multiple of 16, and `x` and `w` must hold `n`
    /// readable floats.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub(super) unsafe fn lanes_avx512(
        x: *const f32,
        w: *const f32,
        n: usize,
        lanes: &mut [f64; 16],
    ) {
        // SAFETY: the caller guarantees the ranges; `lanes` holds 16 f64.
        unsafe {
            let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            let mut i = 0;
            while i < n {
                let xl = _mm512_cvtps_pd(_mm256_loadu_ps(x.add(i)));
                let wl = _mm512_cvtps_pd(_mm256_loadu_ps(w.add(i)));
                lo = _mm512_add_pd(lo, _mm512_mul_pd(xl, wl));
                let xh = _mm512_cvtps_pd(_mm256_loadu_ps(x.add(i + 8)));
                let wh = _mm512_cvtps_pd(_mm256_loadu_ps(w.add(i + 8)));
                hi = _mm512_add_pd(hi, _mm512_mul_pd(xh, wh));
                i += 16;
            }
            _mm512_storeu_pd(lanes.as_mut_ptr(), lo);
            _mm512_storeu_pd(lanes.as_mut_ptr().add(8), hi);
        }
    }

    /// [`lanes_avx512`] for two weight rows at once, each input converted once.
    ///
    /// # Safety
    /// AVX-512F must be available; `n` must be a multiple of 16, and `x` and both `w` must hold
    /// `n` readable floats.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub(super) unsafe fn lanes2_avx512(
        x: *const f32,
        w: [*const f32; 2],
        n: usize,
        lanes: [&mut [f64; 16]; 2],
    ) {
        // SAFETY: the caller guarantees the ranges; each `lanes` holds 16 f64.
        unsafe {
            let mut acc = [[_mm512_setzero_pd(); 2]; 2];
            let mut i = 0;
            while i < n {
                for half in 0..2 {
                    let xv = _mm512_cvtps_pd(_mm256_loadu_ps(x.add(i + 8 * half)));
                    for (row, a) in acc.iter_mut().enumerate() {
                        let wv = _mm512_cvtps_pd(_mm256_loadu_ps(w[row].add(i + 8 * half)));
                        a[half] = _mm512_add_pd(a[half], _mm512_mul_pd(xv, wv));
                    }
                }
                i += 16;
            }
            for (row, out) in lanes.into_iter().enumerate() {
                _mm512_storeu_pd(out.as_mut_ptr(), acc[row][0]);
                _mm512_storeu_pd(out.as_mut_ptr().add(8), acc[row][1]);
            }
        }
    }

    /// [`lanes_avx512`] with four 4-lane AVX registers.
    ///
    /// # Safety
    /// AVX2 must be available; `n` must be a multiple of 16, and `x` and `w` must hold `n`
    /// readable floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn lanes_avx2(x: *const f32, w: *const f32, n: usize, lanes: &mut [f64; 16]) {
        // SAFETY: the caller guarantees the ranges; `lanes` holds 16 f64.
        unsafe {
            let mut acc = [_mm256_setzero_pd(); 4];
            let mut i = 0;
            while i < n {
                for (q, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_cvtps_pd(_mm_loadu_ps(x.add(i + 4 * q)));
                    let wv = _mm256_cvtps_pd(_mm_loadu_ps(w.add(i + 4 * q)));
                    *a = _mm256_add_pd(*a, _mm256_mul_pd(xv, wv));
                }
                i += 16;
            }
            for (q, a) in acc.iter().enumerate() {
                _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * q), *a);
            }
        }
    }
}

/// Whether every value is finite: branch-free over chunks of 16 (it vectorises), since
/// `v * 0` is 0 for a finite `v` and NaN otherwise.
#[inline(always)]
pub fn all_finite(row: &[f32]) -> bool {
    let mut lanes = [0.0f32; LANES];
    let (chunks, tail) = row.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            lanes[l] += c[l] * 0.0;
        }
    }
    for (l, v) in tail.iter().enumerate() {
        lanes[l] += v * 0.0;
    }
    let mut sum = 0.0;
    for l in 0..LANES {
        sum += lanes[l];
    }
    sum == 0.0
}

/// `acc += weight * h` with `acc` in f64.
#[inline(always)]
pub fn axpy_f64(acc: &mut [f64], weight: f64, h: &[f32]) {
    for (a, v) in acc.iter_mut().zip(h) {
        *a += weight * *v as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(1e4) == 1.0 && sigmoid(-1e4) == 0.0);
        assert!((sigmoid(2.0) - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-15);
    }

    #[test]
    fn relu_keeps_nan_and_reports_non_finite_values() {
        let mut v = [-1.0f32, 2.0, f32::NAN, -0.0];
        assert!(!relu_in_place_finite(&mut v));
        assert_eq!(&v[..2], &[0.0, 2.0]);
        assert!(v[2].is_nan() && v[3] == 0.0);
        // Every position of a 16-lane chunk and of the tail, and both infinities.
        for len in [1, 15, 16, 17, 40] {
            let row: Vec<f32> = (0..len).map(|i| i as f32 - 7.5).collect();
            let mut clean = row.clone();
            assert!(relu_in_place_finite(&mut clean));
            assert!(clean.iter().zip(&row).all(|(c, r)| *c == r.max(0.0)));
            for at in 0..len {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut dirty = row.clone();
                    dirty[at] = bad;
                    assert!(!relu_in_place_finite(&mut dirty), "{bad} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn dot_handles_tails() {
        let x: Vec<f32> = (1..=7).map(|v| v as f32).collect();
        let w = vec![2.0f32; 7];
        for isa in Isa::all_supported() {
            assert_eq!(dot_f64(isa, &x, &w, 1.0), 1.0 + 2.0 * 28.0);
        }
    }

    /// `n` inputs of the dot-product tests: values whose f64 sums round differently if the
    /// lanes or their order differed.
    fn dot_inputs(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1013) as f32 * 1e-3 - 0.4)
            .collect()
    }

    /// `n` weights of the dot-product tests.
    fn dot_weights(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 * 3e-3 - 1.2)
            .collect()
    }

    #[test]
    fn dot_products_are_identical_on_every_instruction_set() {
        // Lengths with and without a tail; values whose f64 sums round differently if the
        // lanes or their order differed.
        for n in [16usize, 37, 256, 512, 515] {
            let (x, w) = (dot_inputs(n), dot_weights(n));
            let portable = dot_f64(Isa::Portable, &x, &w, 0.25);
            let exact: f64 = 0.25
                + x.iter()
                    .zip(&w)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>();
            assert!(
                (portable - exact).abs() < 1e-9,
                "{n}: {portable} vs {exact}"
            );
            for isa in Isa::all_supported() {
                assert_eq!(
                    dot_f64(isa, &x, &w, 0.25).to_bits(),
                    portable.to_bits(),
                    "{isa:?} {n}"
                );
            }
        }
    }

    #[test]
    fn paired_dot_products_equal_two_single_ones_on_every_instruction_set() {
        for n in [7usize, 16, 37, 512, 515] {
            let (x, w1) = (dot_inputs(n), dot_weights(n));
            let w2: Vec<f32> = (0..n)
                .map(|i| ((i * 31) % 211) as f32 * 1e-2 - 1.0)
                .collect();
            for isa in Isa::all_supported() {
                let (a, b) = dot2_f64(isa, &x, &w1, &w2, 0.25, -0.5);
                assert_eq!(
                    a.to_bits(),
                    dot_f64(isa, &x, &w1, 0.25).to_bits(),
                    "{isa:?} {n}"
                );
                assert_eq!(
                    b.to_bits(),
                    dot_f64(isa, &x, &w2, -0.5).to_bits(),
                    "{isa:?} {n}"
                );
                // Rows of different lengths: each product over its own length.
                let (a, b) = dot2_f64(isa, &x, &w1[..n - 3], &w2, 0.25, -0.5);
                let short = dot_f64(isa, &x, &w1[..n - 3], 0.25);
                assert_eq!(a.to_bits(), short.to_bits(), "{isa:?} {n}");
                assert_eq!(
                    b.to_bits(),
                    dot_f64(isa, &x, &w2, -0.5).to_bits(),
                    "{isa:?} {n}"
                );
            }
        }
    }

    #[test]
    fn gated_terms_match_f64_tanh_times_sigmoid() {
        let mut worst = 0.0f64;
        for i in -400..=400 {
            for j in -400..=400 {
                let a = i as f32 * 0.025 * (1.0 + (i as f32).abs() * 1e-3);
                let g = j as f32 * 0.05 * (1.0 + (j as f32).abs() * 2e-3);
                let want = (a as f64).tanh() * sigmoid(g as f64);
                worst = worst.max((gated_term_lane(a, g) as f64 - want).abs());
            }
        }
        assert!(worst < 5e-7, "{worst}");
        // Saturated inputs: no overflow to NaN or infinity.
        for (a, g) in [
            (1e30f32, -1e30f32),
            (-1e30, 1e30),
            (8.0, -100.0),
            (1e-6, 100.0),
        ] {
            let v = gated_term_lane(a, g) as f64;
            let want = (a as f64).tanh() * sigmoid(g as f64);
            assert!(v.is_finite() && (v - want).abs() < 1e-7, "({a}, {g}): {v}");
        }
    }

    #[test]
    fn vector_activations_match_f64_libm() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4 * (1.0 + (i as f32).abs() * 2e-5);
            let (x64, t) = (x as f64, tanh_lane(x) as f64);
            worst.0 = worst.0.max((t - x64.tanh()).abs());
            let s = sigmoid_lane(x) as f64;
            worst.1 = worst.1.max((s - sigmoid(x64)).abs());
            if x.abs() < 80.0 {
                let e = exp_lane(x) as f64;
                worst.2 = worst.2.max((e - x64.exp()).abs() / x64.exp());
            }
        }
        assert!(
            worst.0 < 4e-7 && worst.1 < 2e-7 && worst.2 < 3e-7,
            "{worst:?}"
        );
        for x in [-1e30f32, -1000.0, -88.5, 89.0, 1000.0, 1e30] {
            let t = tanh_lane(x);
            assert_eq!(t, x.signum(), "tanh({x})");
            let s = sigmoid_lane(x) as f64;
            assert!(
                s.is_finite() && (s - sigmoid(x as f64)).abs() < 1e-7,
                "sigmoid({x})"
            );
        }
        assert_eq!(tanh_lane(1e-5), 1e-5);
    }

    #[test]
    fn attention_logit_plain_and_gated() {
        let a = [0.5f32, -1.0];
        let g = [0.0f32, 2.0];
        let w = [1.0f32, 2.0];
        let plain = attention_logit(&a, None, &w, 0.25);
        let want_plain = 0.25 + (0.5f64).tanh() + 2.0 * (-1.0f64).tanh();
        assert!((plain - want_plain).abs() < 1e-6);
        let gated = attention_logit(&a, Some(&g), &w, 0.0);
        let want_gated = (0.5f64).tanh() * 0.5 + 2.0 * (-1.0f64).tanh() * sigmoid(2.0);
        assert!((gated - want_gated).abs() < 1e-6);
    }
}
