//! `out = x W^T + b` over panel-packed weights, in register-blocked micro-tiles.
//!
//! One micro-tile is `R` input rows by one panel of 16 outputs: the 16 x R accumulators stay in
//! registers while the input dimension streams by; each weight row of the panel is loaded once
//! per `R` rows. Panels are the outer loop so that one panel (`in x 64` bytes) stays in cache
//! while every row of the block passes over it.

// Register-blocked loops index several arrays by the same row: ranges are clearer than zips.
#![allow(clippy::needless_range_loop)]

use super::{padded_rows, Isa, PANEL_WIDTH};

/// Computes `out[r][o] = bias[o] + sum_i x[r][i] * W[o][i]` for `n` rows.
///
/// - `x`: `n` rows of `in_dim` values, row `r` starting at `r * x_stride`;
/// - `packed`: `W` (`out_dim x in_dim`) in panel layout ([`super::pack_panels`]);
/// - `out`: `n` rows starting at `r * out_stride`, `out_stride >= padded_rows(out_dim)`; the
///   padding columns receive zeros.
///
/// # Panics
/// If a buffer is shorter than the dimensions say (a bug in the caller, never an input
/// property: the session sizes every buffer from the validated model).
#[allow(clippy::too_many_arguments)]
pub fn dense(
    isa: Isa,
    x: &[f32],
    n: usize,
    in_dim: usize,
    x_stride: usize,
    packed: &[f32],
    out_dim: usize,
    bias: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    if n == 0 {
        return;
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
    assert!(
        out_width
            .checked_mul(in_dim)
            .is_some_and(|need| packed.len() >= need)
            && bias.len() >= out_dim
    );
    assert!(
        out_stride >= out_width
            && span(n, out_stride, out_width).is_some_and(|need| out.len() >= need)
    );
    let mut args = DenseArgs {
        x,
        n,
        in_dim,
        x_stride,
        packed,
        out_dim,
        bias,
        out,
        out_stride,
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if Isa::Avx512.is_supported() => {
            // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
            unsafe { dense_avx512(&mut args) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 if Isa::Avx2Fma.is_supported() => {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { dense_avx2(&mut args) }
        }
        _ => dense_body::<4>(args),
    }
}

struct DenseArgs<'a> {
    x: &'a [f32],
    n: usize,
    in_dim: usize,
    x_stride: usize,
    packed: &'a [f32],
    out_dim: usize,
    bias: &'a [f32],
    out: &'a mut [f32],
    out_stride: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dense_avx2(a: &mut DenseArgs<'_>) {
    // 6 rows x 16 outputs = 12 ymm accumulators, 2 for the weights, 1 broadcast.
    let (x_stride, in_dim, out_stride) = (a.x_stride, a.in_dim, a.out_stride);
    for_each_tile::<6>(a, |rows, x, panel, bias, out| {
        // SAFETY: `for_each_tile` hands out pointers to `rows` rows of `in_dim` inputs, a
        // whole panel, 16 biases and `rows` output rows of 16, all inside the checked buffers;
        // this function only runs where AVX2 and FMA are available.
        unsafe {
            match rows {
                6 => x86::micro_avx2::<6>(x, x_stride, in_dim, panel, bias, out, out_stride),
                _ => x86::micro_avx2::<1>(x, x_stride, in_dim, panel, bias, out, out_stride),
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dense_avx512(a: &mut DenseArgs<'_>) {
    // 12 rows x 16 outputs = 12 zmm accumulators.
    let (x_stride, in_dim, out_stride) = (a.x_stride, a.in_dim, a.out_stride);
    for_each_tile::<12>(a, |rows, x, panel, bias, out| {
        // SAFETY: as in `dense_avx2`, with AVX-512F available.
        unsafe {
            match rows {
                12 => x86::micro_avx512::<12>(x, x_stride, in_dim, panel, bias, out, out_stride),
                _ => x86::micro_avx512::<1>(x, x_stride, in_dim, panel, bias, out, out_stride),
            }
        }
    });
}

/// Walks the output in micro-tiles: panels outer, groups of `R` rows inner (then single
/// rows), calling `tile(rows, x, panel, bias16, out)` with raw pointers into the buffers.
#[inline(always)]
fn for_each_tile<const R: usize>(
    a: &mut DenseArgs<'_>,
    mut tile: impl FnMut(usize, *const f32, *const f32, *const f32, *mut f32),
) {
    let panels = padded_rows(a.out_dim) / PANEL_WIDTH;
    let panel_len = a.in_dim * PANEL_WIDTH;
    // Derived from the exclusive borrow of the output: the kernels write through it.
    let out = a.out.as_mut_ptr();
    for p in 0..panels {
        let mut bias = [0.0f32; PANEL_WIDTH];
        for (j, b) in bias.iter_mut().enumerate() {
            if p * PANEL_WIDTH + j < a.out_dim {
                *b = a.bias[p * PANEL_WIDTH + j];
            }
        }
        let panel = a.packed[p * panel_len..(p + 1) * panel_len].as_ptr();
        let col = p * PANEL_WIDTH;
        let mut r = 0;
        while r < a.n {
            let rows = if r + R <= a.n { R } else { 1 };
            // SAFETY (pointer arithmetic): r < n and col + 16 <= out_stride, so the offsets are
            // inside `x` and `out`, whose lengths `dense` checked.
            let (x, o) = unsafe {
                (
                    a.x.as_ptr().add(r * a.x_stride),
                    out.add(r * a.out_stride + col),
                )
            };
            tile(rows, x, panel, bias.as_ptr(), o);
            r += rows;
        }
    }
}

#[inline(always)]
fn dense_body<const R: usize>(a: DenseArgs<'_>) {
    let panels = padded_rows(a.out_dim) / PANEL_WIDTH;
    let panel_len = a.in_dim * PANEL_WIDTH;
    for p in 0..panels {
        let mut bias = [0.0f32; PANEL_WIDTH];
        for (j, b) in bias.iter_mut().enumerate() {
            if p * PANEL_WIDTH + j < a.out_dim {
                *b = a.bias[p * PANEL_WIDTH + j];
            }
        }
        let panel = &a.packed[p * panel_len..(p + 1) * panel_len];
        let col = p * PANEL_WIDTH;
        let mut r = 0;
        while r + R <= a.n {
            micro_tile::<R>(
                &a.x[r * a.x_stride..],
                a.x_stride,
                a.in_dim,
                panel,
                &bias,
                &mut a.out[r * a.out_stride + col..],
                a.out_stride,
            );
            r += R;
        }
        while r < a.n {
            micro_tile::<1>(
                &a.x[r * a.x_stride..],
                a.x_stride,
                a.in_dim,
                panel,
                &bias,
                &mut a.out[r * a.out_stride + col..],
                a.out_stride,
            );
            r += 1;
        }
    }
}

/// Portable `R` rows times one panel. Every accumulator sees the same operation sequence for any `R`.
#[inline(always)]
fn micro_tile<const R: usize>(
    x: &[f32],
    x_stride: usize,
    k: usize,
    panel: &[f32],
    bias: &[f32; PANEL_WIDTH],
    out: &mut [f32],
    out_stride: usize,
) {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * x_stride..r * x_stride + k]);
    let (weights, _) = panel.as_chunks::<PANEL_WIDTH>();
    let weights = &weights[..k];
    let mut acc = [*bias; R];
    for (i, w) in weights.iter().enumerate() {
        for r in 0..R {
            let xv = rows[r][i];
            for j in 0..PANEL_WIDTH {
                // Separate multiply and add: `mul_add` would be a slow libm call without FMA.
                acc[r][j] += xv * w[j];
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        out[r * out_stride..r * out_stride + PANEL_WIDTH].copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Explicit-intrinsics micro-kernels: one fused multiply-add per weight and row, in input
    //! order, so a row's result does not depend on how many rows share the tile.
    use std::arch::x86_64::*;

    /// `R` rows x 16 outputs with two 8-lane accumulators per row.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `x` must point to `R` rows (`x_stride` apart) of `k`
    /// readable floats, `panel` to `16 k`, `bias` to 16, `out` to `R` rows (`out_stride`
    /// apart) of 16 writable floats.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro_avx2<const R: usize>(
        x: *const f32,
        x_stride: usize,
        k: usize,
        panel: *const f32,
        bias: *const f32,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: every pointer access stays inside the ranges the caller guarantees.
        unsafe {
            let (b0, b1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
            let mut lo = [b0; R];
            let mut hi = [b1; R];
            for i in 0..k {
                let w0 = _mm256_loadu_ps(panel.add(i * 16));
                let w1 = _mm256_loadu_ps(panel.add(i * 16 + 8));
                for r in 0..R {
                    let xv = _mm256_set1_ps(*x.add(r * x_stride + i));
                    lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(out.add(r * out_stride), lo[r]);
                _mm256_storeu_ps(out.add(r * out_stride + 8), hi[r]);
            }
        }
    }

    /// `R` rows x 16 outputs with one 16-lane accumulator per row.
    ///
    /// # Safety
    /// AVX-512F must be available; pointers as for [`micro_avx2`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro_avx512<const R: usize>(
        x: *const f32,
        x_stride: usize,
        k: usize,
        panel: *const f32,
        bias: *const f32,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: every pointer access stays inside the ranges the caller guarantees.
        unsafe {
            let b = _mm512_loadu_ps(bias);
            let mut acc = [b; R];
            for i in 0..k {
                let w = _mm512_loadu_ps(panel.add(i * 16));
                for r in 0..R {
                    let xv = _mm512_set1_ps(*x.add(r * x_stride + i));
                    acc[r] = _mm512_fmadd_ps(xv, w, acc[r]);
                }
            }
            for r in 0..R {
                _mm512_storeu_ps(out.add(r * out_stride), acc[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pack_panels;

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
    fn every_isa_matches_naive_product_and_rows_are_chunking_independent() {
        let (d, o) = (37, 21);
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for n in [1usize, 5, 6, 13, 25] {
            let x: Vec<f32> = (0..n * d).map(|_| next()).collect();
            let w: Vec<f32> = (0..o * d).map(|_| next()).collect();
            let b: Vec<f32> = (0..o).map(|_| next()).collect();
            let packed = pack_panels(&w, o, d);
            let stride = padded_rows(o);
            let expect = naive(&x, n, d, &w, o, &b);
            for isa in Isa::all_supported() {
                let mut out = vec![f32::NAN; n * stride];
                dense(isa, &x, n, d, d, &packed, o, &b, &mut out, stride);
                for r in 0..n {
                    for j in 0..o {
                        let (got, want) = (out[r * stride + j] as f64, expect[r * o + j]);
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{isa:?} n={n} r={r} j={j}: {got} vs {want}"
                        );
                    }
                    assert!(out[r * stride + o..(r + 1) * stride]
                        .iter()
                        .all(|v| *v == 0.0));
                    // The same row computed alone is bit-identical.
                    let mut single = vec![0.0; stride];
                    dense(
                        isa,
                        &x[r * d..],
                        1,
                        d,
                        d,
                        &packed,
                        o,
                        &b,
                        &mut single,
                        stride,
                    );
                    assert_eq!(&single[..], &out[r * stride..(r + 1) * stride]);
                }
            }
        }
    }
}
