//! `out = x W^T + b` for int8 weights: integer dot products over inputs quantized per row.
//!
//! Each row of `x` is quantized to `u8` with its own scale and zero point: the row's range
//! `[lo, hi]` widened to include 0, `scale_x = (hi - lo) / 255`, `inv = 1 / scale_x`,
//! `zero = round(-lo x inv)`, `q = clamp(round(x x inv) + zero, 0, 255)` (f32 arithmetic,
//! rounding to nearest even), so `x ~ scale_x * (q - zero)` (a row whose range is 0, or so
//! small that `inv` overflows, becomes all zeros with scale 1); each
//! weight row `o` is `scale_w[o] * w_q` with `w_q` in `-128..=127` (the file's int8 tensor).
//! The kernels sum `q * w_q` exactly in `i32`, then
//! `out = ((acc - zero * sum(w_q)) as f32 * scale_x) * scale_w[o] + bias[o]`.
//!
//! Kernels: AVX-512 VNNI (`vpdpbusd`, 64 multiply-adds per instruction) where the CPU has it;
//! else AVX-VNNI (the same instruction on 256-bit registers, e.g. Intel client CPUs from Alder
//! Lake on), also for sessions with the AVX2 instruction set; elsewhere 16-bit multiply-adds
//! (`pmaddwd`, AVX2 or SSE2) over the inputs held as 16-bit values and the weights
//! sign-extended in registers.
//!
//! Determinism: the integer sums are exact, and the quantization and the final three
//! operations are the same IEEE operations (no fused multiply-add) on every instruction set, so
//! every kernel gives bit-identical results, whatever the number of rows in the call.
//!
//! Weights are laid out in *quad panels*: per panel of 16 outputs and group of 4 consecutive
//! inputs, 64 bytes holding output `j`'s 4 weights at `4j..4j + 4` (zero past the last input),
//! the operand of one `vpdpbusd`.

// Register-blocked loops index several arrays by the same row: ranges are clearer than zips.
#![allow(clippy::needless_range_loop)]

use super::{padded_rows, Isa, KernelPlan, PANEL_WIDTH};

/// Inputs per group of a quad panel.
pub const QUAD: usize = 4;

/// A large matrix as the int8 kernels read it.
#[derive(Debug, Clone, Copy)]
pub struct Int8Weights<'a> {
    /// Quad panels (see the module documentation): `panels x ceil(in / 4) x 64` bytes.
    pub quads: &'a [i8],
    /// Per output (padded to whole panels): the sum of its integer weights.
    pub weight_sums: &'a [i32],
    /// Per output (padded to whole panels): its scale; 0 for padding outputs.
    pub scales: &'a [f32],
}

/// Int8 weights in [`crate::kernels::pack_panels`] order (`rows x cols` in panels of 16) to
/// quad panels.
pub fn quad_panels(panels16: &[i8], rows: usize, cols: usize) -> Vec<i8> {
    let groups = cols.div_ceil(QUAD);
    let count = padded_rows(rows) / PANEL_WIDTH;
    let mut out = vec![0i8; count * groups * PANEL_WIDTH * QUAD];
    for p in 0..count {
        for i in 0..cols {
            let (g, t) = (i / QUAD, i % QUAD);
            for j in 0..PANEL_WIDTH {
                out[((p * groups + g) * PANEL_WIDTH + j) * QUAD + t] =
                    panels16[(p * cols + i) * PANEL_WIDTH + j];
            }
        }
    }
    out
}

/// Per output (padded to whole panels) the sum of its weights, from quad panels.
pub fn quad_weight_sums(quads: &[i8], rows: usize, cols: usize) -> Vec<i32> {
    let groups = cols.div_ceil(QUAD);
    let mut sums = vec![0i32; padded_rows(rows)];
    for (o, sum) in sums.iter_mut().enumerate() {
        let (p, j) = (o / PANEL_WIDTH, o % PANEL_WIDTH);
        for g in 0..groups {
            let at = ((p * groups + g) * PANEL_WIDTH + j) * QUAD;
            *sum += quads[at..at + QUAD].iter().map(|&w| w as i32).sum::<i32>();
        }
    }
    sums
}

/// Whether this CPU has the AVX-512 VNNI dot products (with AVX-512F and BW).
pub fn vnni_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512bw")
            && Isa::Avx512.is_supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has the 256-bit AVX-VNNI dot products (with AVX2).
pub fn avx_vnni_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avxvnni") && Isa::Avx2Fma.is_supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The integer kernel of an int8 product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Int8Kernel {
    /// AVX-512 VNNI, 12 rows x 2 panels (and the AMX tiles for calls of 16 rows and more).
    Vnni512,
    /// AVX-VNNI, 6 rows x 1 panel.
    AvxVnni,
    /// 16-bit multiply-adds with AVX2, 2 rows x 1 panel.
    MaddAvx2,
    /// 16-bit multiply-adds with SSE2 (or plain integers off x86-64), 2 rows x 1 panel.
    MaddPortable,
}

impl Int8Kernel {
    /// The fastest kernel of `isa` on this CPU.
    fn for_isa(isa: Isa) -> Int8Kernel {
        match isa {
            Isa::Avx512 | Isa::Amx if vnni_supported() => Int8Kernel::Vnni512,
            Isa::Avx512 | Isa::Amx | Isa::Avx2Fma if avx_vnni_supported() => Int8Kernel::AvxVnni,
            Isa::Avx512 | Isa::Amx | Isa::Avx2Fma => Int8Kernel::MaddAvx2,
            Isa::Portable => Int8Kernel::MaddPortable,
        }
    }

    /// Whether the kernel reads `u8` inputs (else `u16`).
    fn bytes(self) -> bool {
        matches!(self, Int8Kernel::Vnni512 | Int8Kernel::AvxVnni)
    }

    /// Rows and panels of its micro-tile.
    fn tile(self) -> (usize, usize) {
        match self {
            Int8Kernel::Vnni512 => (12, 2),
            Int8Kernel::AvxVnni => (6, 1),
            Int8Kernel::MaddAvx2 | Int8Kernel::MaddPortable => (2, 1),
        }
    }
}

/// Rows quantized per pass: at most the packing buffer's rows.
const MAX_ROWS: usize = super::PACK_ROWS;
/// Calls of fewer rows use VNNI rather than the AMX tiles (one tile holds 16 rows).
const AMX_MIN_ROWS: usize = 16;

/// One pass of micro-tiles over quantized rows, as raw pointers for the micro-kernels.
#[derive(Clone, Copy)]
struct Tile {
    /// First quantized row (`u8` values for VNNI, `u16` for the 16-bit kernels); rows are
    /// `row_bytes` apart.
    q: *const u8,
    row_bytes: usize,
    /// Per row: scale and zero point.
    row_scale: *const f32,
    row_zero: *const i32,
    /// Groups of 4 inputs.
    groups: usize,
    /// First panel's quad weights; panels are `groups * 64` bytes apart.
    quads: *const i8,
    /// Per output of the tile's panels: weight sums, scales and biases (16 per panel).
    weight_sums: *const i32,
    scales: *const f32,
    bias: *const f32,
    /// First output row, `out_stride` apart; the tile writes `16 * panels` columns.
    out: *mut f32,
    out_stride: usize,
}

/// [`super::dense`] for int8 weights (see the module documentation); arguments as there, with
/// `pack` the same scratch (its bytes hold the quantized rows).
///
/// # Panics
/// If a buffer is shorter than the dimensions say, or the plan's instruction set is not
/// supported by this CPU (bugs in the caller, never input properties).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_int8(
    plan: &KernelPlan,
    x: &[f32],
    n: usize,
    in_dim: usize,
    x_stride: usize,
    weights: Int8Weights<'_>,
    out_dim: usize,
    bias: &[f32],
    out: &mut [f32],
    out_stride: usize,
    pack: &mut [f32],
) {
    let kernel = Int8Kernel::for_isa(plan.isa);
    dense_int8_with(
        plan, kernel, x, n, in_dim, x_stride, weights, out_dim, bias, out, out_stride, pack,
    )
}

/// [`dense_int8`] with the given kernel (one `plan.isa` supports).
#[allow(clippy::too_many_arguments)]
fn dense_int8_with(
    plan: &KernelPlan,
    kernel: Int8Kernel,
    x: &[f32],
    n: usize,
    in_dim: usize,
    x_stride: usize,
    weights: Int8Weights<'_>,
    out_dim: usize,
    bias: &[f32],
    out: &mut [f32],
    out_stride: usize,
    pack: &mut [f32],
) {
    if n == 0 {
        return;
    }
    // Every bound is checked here, with overflow-checked arithmetic: the raw-pointer kernels
    // below rely on these, whatever the caller passes.
    let span = |rows: usize, stride: usize, width: usize| {
        (rows - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(width))
    };
    let width = padded_rows(out_dim);
    let panels = width / PANEL_WIDTH;
    let groups = in_dim.div_ceil(QUAD);
    let vnni = kernel == Int8Kernel::Vnni512;
    // The AMX tiles sum the same integers as VNNI, exactly, from the same quantized rows; for
    // a few rows VNNI is faster (strips of 1 tile: 49k against 33k tiles/s on an Intel Xeon).
    #[cfg(target_arch = "x86_64")]
    let amx = vnni && plan.isa == Isa::Amx && n >= AMX_MIN_ROWS && super::amx_int8_usable();
    #[cfg(not(target_arch = "x86_64"))]
    let amx = false;
    // The dot-product kernels read u8 inputs; the 16-bit kernels u16.
    let value_bytes = if kernel.bytes() { 1 } else { 2 };
    let row_bytes = groups * QUAD * value_bytes;
    assert!(x_stride >= in_dim && span(n, x_stride, in_dim).is_some_and(|need| x.len() >= need));
    assert!(
        (panels * groups)
            .checked_mul(PANEL_WIDTH * QUAD)
            .is_some_and(|need| weights.quads.len() >= need)
            && weights.weight_sums.len() >= width
            && weights.scales.len() >= width
            && bias.len() >= out_dim
    );
    assert!(
        out_stride >= width && span(n, out_stride, width).is_some_and(|need| out.len() >= need)
    );
    assert!(
        plan.isa.is_supported(),
        "{} kernels on this CPU",
        plan.isa.name()
    );
    assert!(
        match kernel {
            Int8Kernel::Vnni512 => plan.isa.vector() == Isa::Avx512 && vnni_supported(),
            Int8Kernel::AvxVnni => plan.isa != Isa::Portable && avx_vnni_supported(),
            Int8Kernel::MaddAvx2 => plan.isa != Isa::Portable,
            Int8Kernel::MaddPortable => true,
        },
        "{kernel:?} int8 kernel with the {} instruction set on this CPU",
        plan.isa.name()
    );
    let pack: &mut [u8] = bytemuck::cast_slice_mut(pack);
    // The AMX tiles' last step may read up to 63 bytes past the last row (into products with
    // zero weights): keep that much of the buffer free.
    let slack = if amx { 64 } else { 0 };
    let max_rows = MAX_ROWS.min(pack.len().saturating_sub(slack) / row_bytes);
    assert!(max_rows > 0, "the packing buffer holds no quantized row");
    // Rows and panels per micro-tile.
    let (tile_rows_max, group_panels) = kernel.tile();

    let mut row_scale = [0.0f32; MAX_ROWS];
    let mut row_zero = [0i32; MAX_ROWS];
    // The biases of one group of panels, the last panel zero-padded.
    let mut tile_bias = [0.0f32; 2 * PANEL_WIDTH];
    let mut r0 = 0;
    while r0 < n {
        let rows = max_rows.min(n - r0);
        for r in 0..rows {
            let src = &x[(r0 + r) * x_stride..(r0 + r) * x_stride + in_dim];
            let dst = &mut pack[r * row_bytes..(r + 1) * row_bytes];
            (row_scale[r], row_zero[r]) = quantize_row(plan.isa, src, kernel.bytes(), dst);
        }
        #[cfg(target_arch = "x86_64")]
        if amx {
            let finish = |first: usize, count: usize, p: usize, np: usize, acc: &[i32; 1024]| {
                let start = p * PANEL_WIDTH;
                let end = (start + np * PANEL_WIDTH).min(out_dim);
                tile_bias.fill(0.0);
                tile_bias[..end - start].copy_from_slice(&bias[start..end]);
                // SAFETY: AVX-512F is available (VNNI was detected); rows `first..first +
                // count` of this chunk and panels `p..p + np` are inside `out`, the row scales
                // and the weight sums and scales (checked above).
                unsafe {
                    finish_sums_avx512(
                        acc,
                        count,
                        np,
                        row_scale.as_ptr().add(first),
                        row_zero.as_ptr().add(first),
                        weights.weight_sums.as_ptr().add(start),
                        weights.scales.as_ptr().add(start),
                        tile_bias.as_ptr(),
                        out.as_mut_ptr().add((r0 + first) * out_stride + start),
                        out_stride,
                    )
                }
            };
            // SAFETY: the tiles are usable (`amx`); the chunk's `rows` quantized rows of
            // `row_bytes` lie at the start of `pack` with 64 bytes to spare (`max_rows`), and
            // the quad panels hold `panels * groups * 64` bytes (checked above).
            unsafe {
                super::amx::int8_sums(
                    pack.as_ptr(),
                    rows,
                    row_bytes,
                    weights.quads.as_ptr(),
                    groups,
                    panels,
                    finish,
                )
            };
            r0 += rows;
            continue;
        }
        let mut p = 0;
        while p < panels {
            let tile_panels = group_panels.min(panels - p);
            let start = p * PANEL_WIDTH;
            let end = (start + tile_panels * PANEL_WIDTH).min(out_dim);
            tile_bias.fill(0.0);
            tile_bias[..end - start].copy_from_slice(&bias[start..end]);
            let mut r = 0;
            while r < rows {
                let tile_rows = tile_rows_max.min(rows - r);
                // SAFETY (pointer arithmetic): rows r0 + r.. are inside `out` and `pack`,
                // panels p.. inside the weights, as checked above.
                let tile = unsafe {
                    Tile {
                        q: pack.as_ptr().add(r * row_bytes),
                        row_bytes,
                        row_scale: row_scale.as_ptr().add(r),
                        row_zero: row_zero.as_ptr().add(r),
                        groups,
                        quads: weights.quads.as_ptr().add(p * groups * PANEL_WIDTH * QUAD),
                        weight_sums: weights.weight_sums.as_ptr().add(start),
                        scales: weights.scales.as_ptr().add(start),
                        bias: tile_bias.as_ptr(),
                        out: out.as_mut_ptr().add((r0 + r) * out_stride + start),
                        out_stride,
                    }
                };
                run_tile(kernel, tile, tile_rows, tile_panels);
                r += tile_rows;
            }
            p += tile_panels;
        }
        r0 += rows;
    }
}

/// The VNNI kernel's last operations over integer sums computed on the AMX tiles (`acc` row
/// `r` at `r * 32`, two panels side by side): the same instructions, so the same bits.
///
/// # Safety
/// AVX-512F must be available; `rows` row scales and zero points, `16 * panels` weight sums,
/// scales and biases, and `rows` rows of `16 * panels` outputs `out_stride` apart at `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_sums_avx512(
    acc: &[i32; 1024],
    rows: usize,
    panels: usize,
    row_scale: *const f32,
    row_zero: *const i32,
    weight_sums: *const i32,
    scales: *const f32,
    bias: *const f32,
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    for p in 0..panels {
        // SAFETY: inside the buffers the caller names.
        unsafe {
            let sums = _mm512_loadu_si512(weight_sums.add(p * PANEL_WIDTH).cast());
            let scales = _mm512_loadu_ps(scales.add(p * PANEL_WIDTH));
            let bias = _mm512_loadu_ps(bias.add(p * PANEL_WIDTH));
            for r in 0..rows {
                let sum = _mm512_loadu_si512(acc.as_ptr().add(r * 32 + p * PANEL_WIDTH).cast());
                let zero = _mm512_set1_epi32(*row_zero.add(r));
                let row_scale = _mm512_set1_ps(*row_scale.add(r));
                let centred = _mm512_sub_epi32(sum, _mm512_mullo_epi32(zero, sums));
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(centred), row_scale);
                let v = _mm512_add_ps(_mm512_mul_ps(v, scales), bias);
                _mm512_storeu_ps(out.add(r * out_stride + p * PANEL_WIDTH), v);
            }
        }
    }
}

/// Runs one micro-tile of `rows` rows by `panels` panels with the chosen kernel.
fn run_tile(kernel: Int8Kernel, t: Tile, rows: usize, panels: usize) {
    macro_rules! by_rows {
        ($kernel:ident, $panels:literal, [$($r:literal),+]) => {
            match rows {
                $($r => $kernel::<$r, $panels>(t),)+
                _ => unreachable!("tile rows beyond the kernel's register block"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the tile lies inside the buffers `dense_int8_with` checked, which also checked
    // that the CPU has what the kernel needs: AVX-512F, BW and VNNI for `Vnni512`, AVX2 and
    // AVX-VNNI for `AvxVnni`, AVX2 for `MaddAvx2`; SSE2 is part of x86-64.
    unsafe {
        match (kernel, panels) {
            (Int8Kernel::Vnni512, 2) => {
                by_rows!(micro_vnni, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            }
            (Int8Kernel::Vnni512, _) => {
                by_rows!(micro_vnni, 1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            }
            (Int8Kernel::AvxVnni, _) => by_rows!(micro_avx_vnni, 1, [1, 2, 3, 4, 5, 6]),
            (Int8Kernel::MaddAvx2, _) => by_rows!(micro_madd_avx2, 1, [1, 2]),
            (Int8Kernel::MaddPortable, _) => by_rows!(micro_madd_sse2, 1, [1, 2]),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernel, panels);
        // SAFETY: the tile lies inside the buffers `dense_int8_with` checked.
        unsafe { by_rows!(micro_scalar, 1, [1, 2]) }
    }
}

/// Quantizes one row (`src`) into `dst` (`src.len()` rounded up to 4 values, the padding
/// zero; `u8` values, or little-endian `u16` if not `bytes`); returns the row's scale and zero
/// point. A row with a non-finite value gets scale NaN, so that its outputs are NaN and the
/// session reports the tile.
fn quantize_row(isa: Isa, src: &[f32], bytes: bool, dst: &mut [u8]) -> (f32, i32) {
    let (lo, hi, nan) = min_max(isa, src);
    let range = hi - lo;
    if !range.is_finite() || nan {
        dst.fill(0);
        return (f32::NAN, 0);
    }
    let scale = range / 255.0;
    let inv = 1.0 / scale;
    if range == 0.0 || !inv.is_finite() {
        // All zeros, or a range so small (below about 1e-36) that 1 / scale overflows: every
        // value becomes the zero point 0 (what is lost is below about 1e-36 per value). The
        // vector and scalar conversions would disagree on infinite products.
        dst.fill(0);
        return (1.0, 0);
    }
    let zero = (-lo * inv).round_ties_even().clamp(0.0, 255.0) as i32;
    let done = quantize_simd(isa, src, inv, zero, bytes, dst);
    for (i, v) in src.iter().enumerate().skip(done) {
        let q = ((v * inv).round_ties_even() as i32 + zero).clamp(0, 255);
        if bytes {
            dst[i] = q as u8;
        } else {
            dst[2 * i..2 * i + 2].copy_from_slice(&(q as u16).to_le_bytes());
        }
    }
    let used = if bytes { src.len() } else { 2 * src.len() };
    dst[used..].fill(0);
    (scale, zero)
}

/// The row's smallest and largest values, each widened to include 0, and whether it holds a
/// NaN (which the minimum and maximum ignore).
fn min_max(isa: Isa, src: &[f32]) -> (f32, f32, bool) {
    let (mut lo, mut hi, mut nan, done) = (0.0f32, 0.0f32, false, min_max_simd(isa, src));
    if let Some((l, h, n)) = done.1 {
        (lo, hi, nan) = (l, h, n);
    }
    for v in &src[done.0..] {
        lo = if *v < lo { *v } else { lo };
        hi = if *v > hi { *v } else { hi };
        nan |= v.is_nan();
    }
    (lo, hi, nan)
}

/// [`min_max`] over the leading values that fill whole vectors: how many, and their result.
#[allow(clippy::type_complexity)]
fn min_max_simd(isa: Isa, src: &[f32]) -> (usize, Option<(f32, f32, bool)>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        /// Smallest and largest of the lanes (and 0), from their stored values.
        fn reduce(lo: &[f32], hi: &[f32]) -> (f32, f32) {
            (
                lo.iter().fold(0.0f32, |m, v| m.min(*v)),
                hi.iter().fold(0.0f32, |m, v| m.max(*v)),
            )
        }
        let (s, n) = (src.as_ptr(), src.len());
        match isa.vector() {
            Isa::Avx512 => {
                #[target_feature(enable = "avx512f")]
                /// # Safety
                /// AVX-512F; `s` has `n` values.
                unsafe fn run(s: *const f32, n: usize) -> (usize, Option<(f32, f32, bool)>) {
                    // Four independent chains of minimum and maximum (one would wait on
                    // their latency at every vector), then one.
                    let (mut lo, mut hi, mut nan) =
                        ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4], 0u16);
                    let mut i = 0;
                    while i + 64 <= n {
                        for a in 0..4 {
                            // SAFETY: values i + 16a..i + 16a + 16 are inside `s`.
                            let v = unsafe { _mm512_loadu_ps(s.add(i + 16 * a)) };
                            lo[a] = _mm512_min_ps(lo[a], v);
                            hi[a] = _mm512_max_ps(hi[a], v);
                            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                        }
                        i += 64;
                    }
                    let (mut lo, mut hi) = (
                        _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3])),
                        _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3])),
                    );
                    while i + 16 <= n {
                        // SAFETY: values i..i + 16 are inside `s`.
                        let v = unsafe { _mm512_loadu_ps(s.add(i)) };
                        lo = _mm512_min_ps(lo, v);
                        hi = _mm512_max_ps(hi, v);
                        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                        i += 16;
                    }
                    let (mut l, mut h) = ([0.0f32; 16], [0.0f32; 16]);
                    // SAFETY: 16 floats fit in each array.
                    unsafe {
                        _mm512_storeu_ps(l.as_mut_ptr(), lo);
                        _mm512_storeu_ps(h.as_mut_ptr(), hi);
                    }
                    let (l, h) = reduce(&l, &h);
                    (i, Some((l, h, nan != 0)))
                }
                // SAFETY: the session's instruction set is supported (checked by
                // `dense_int8_with`).
                unsafe { run(s, n) }
            }
            Isa::Avx2Fma => {
                #[target_feature(enable = "avx2")]
                /// # Safety
                /// AVX2; `s` has `n` values.
                unsafe fn run(s: *const f32, n: usize) -> (usize, Option<(f32, f32, bool)>) {
                    // Four independent chains, as for AVX-512, then one.
                    let (mut lo4, mut hi4, mut nan4) = (
                        [_mm256_setzero_ps(); 4],
                        [_mm256_setzero_ps(); 4],
                        [_mm256_setzero_ps(); 4],
                    );
                    let mut i = 0;
                    while i + 32 <= n {
                        for a in 0..4 {
                            // SAFETY: values i + 8a..i + 8a + 8 are inside `s`.
                            let v = unsafe { _mm256_loadu_ps(s.add(i + 8 * a)) };
                            lo4[a] = _mm256_min_ps(lo4[a], v);
                            hi4[a] = _mm256_max_ps(hi4[a], v);
                            nan4[a] = _mm256_or_ps(nan4[a], _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                        }
                        i += 32;
                    }
                    let (mut lo, mut hi, mut nan) = (
                        _mm256_min_ps(_mm256_min_ps(lo4[0], lo4[1]), _mm256_min_ps(lo4[2], lo4[3])),
                        _mm256_max_ps(_mm256_max_ps(hi4[0], hi4[1]), _mm256_max_ps(hi4[2], hi4[3])),
                        _mm256_or_ps(
                            _mm256_or_ps(nan4[0], nan4[1]),
                            _mm256_or_ps(nan4[2], nan4[3]),
                        ),
                    );
                    while i + 8 <= n {
                        // SAFETY: values i..i + 8 are inside `s`.
                        let v = unsafe { _mm256_loadu_ps(s.add(i)) };
                        lo = _mm256_min_ps(lo, v);
                        hi = _mm256_max_ps(hi, v);
                        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                        i += 8;
                    }
                    let (mut l, mut h) = ([0.0f32; 8], [0.0f32; 8]);
                    // SAFETY: 8 floats fit in each array.
                    unsafe {
                        _mm256_storeu_ps(l.as_mut_ptr(), lo);
                        _mm256_storeu_ps(h.as_mut_ptr(), hi);
                    }
                    let (l, h) = reduce(&l, &h);
                    (i, Some((l, h, _mm256_movemask_ps(nan) != 0)))
                }
                // SAFETY: as above.
                unsafe { run(s, n) }
            }
            Isa::Portable | Isa::Amx => {
                #[target_feature(enable = "sse2")]
                /// # Safety
                /// `s` has `n` values (SSE2 is part of x86-64).
                unsafe fn run(s: *const f32, n: usize) -> (usize, Option<(f32, f32, bool)>) {
                    // Four independent chains, as for AVX-512, then one.
                    let (mut lo4, mut hi4, mut nan4) = (
                        [_mm_setzero_ps(); 4],
                        [_mm_setzero_ps(); 4],
                        [_mm_setzero_ps(); 4],
                    );
                    let mut i = 0;
                    while i + 16 <= n {
                        for a in 0..4 {
                            // SAFETY: values i + 4a..i + 4a + 4 are inside `s`.
                            let v = unsafe { _mm_loadu_ps(s.add(i + 4 * a)) };
                            lo4[a] = _mm_min_ps(lo4[a], v);
                            hi4[a] = _mm_max_ps(hi4[a], v);
                            nan4[a] = _mm_or_ps(nan4[a], _mm_cmpunord_ps(v, v));
                        }
                        i += 16;
                    }
                    let (mut lo, mut hi, mut nan) = (
                        _mm_min_ps(_mm_min_ps(lo4[0], lo4[1]), _mm_min_ps(lo4[2], lo4[3])),
                        _mm_max_ps(_mm_max_ps(hi4[0], hi4[1]), _mm_max_ps(hi4[2], hi4[3])),
                        _mm_or_ps(_mm_or_ps(nan4[0], nan4[1]), _mm_or_ps(nan4[2], nan4[3])),
                    );
                    while i + 4 <= n {
                        // SAFETY: values i..i + 4 are inside `s`.
                        let v = unsafe { _mm_loadu_ps(s.add(i)) };
                        lo = _mm_min_ps(lo, v);
                        hi = _mm_max_ps(hi, v);
                        nan = _mm_or_ps(nan, _mm_cmpunord_ps(v, v));
                        i += 4;
                    }
                    let (mut l, mut h) = ([0.0f32; 4], [0.0f32; 4]);
                    // SAFETY: 4 floats fit in each array.
                    unsafe {
                        _mm_storeu_ps(l.as_mut_ptr(), lo);
                        _mm_storeu_ps(h.as_mut_ptr(), hi);
                    }
                    let (l, h) = reduce(&l, &h);
                    (i, Some((l, h, _mm_movemask_ps(nan) != 0)))
                }
                // SAFETY: SSE2 is part of x86-64.
                unsafe { run(s, n) }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, src);
        (0, None)
    }
}

/// Quantizes the leading values of `src` that fill whole vectors (finite values, `inv` and
/// `zero` as in [`quantize_row`]); returns how many it did. The conversions round to nearest
/// even (the default rounding mode, which nothing in the program changes), and the clamp is
/// exact, so the result equals the scalar formula.
fn quantize_simd(isa: Isa, src: &[f32], inv: f32, zero: i32, bytes: bool, dst: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let n = src.len();
        assert!(dst.len() >= if bytes { n } else { 2 * n });
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        match isa.vector() {
            Isa::Avx512 => {
                #[target_feature(enable = "avx512f")]
                /// # Safety
                /// AVX-512F; `s` has `n` values and `d` room for them.
                unsafe fn run(
                    s: *const f32,
                    d: *mut u8,
                    n: usize,
                    inv: f32,
                    zero: i32,
                    bytes: bool,
                ) -> usize {
                    let (inv, z) = (_mm512_set1_ps(inv), _mm512_set1_epi32(zero));
                    let (lo, hi) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
                    let mut i = 0;
                    while i + 16 <= n {
                        // SAFETY: values i..i + 16 are inside `s`, their outputs inside `d`.
                        unsafe {
                            let q =
                                _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(s.add(i)), inv));
                            let q =
                                _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, z), lo), hi);
                            if bytes {
                                _mm_storeu_si128(d.add(i).cast(), _mm512_cvtepi32_epi8(q));
                            } else {
                                _mm256_storeu_si256(d.add(2 * i).cast(), _mm512_cvtepi32_epi16(q));
                            }
                        }
                        i += 16;
                    }
                    i
                }
                // SAFETY: the session's instruction set is supported (checked by
                // `dense_int8_with`); lengths checked above.
                unsafe { run(s, d, n, inv, zero, bytes) }
            }
            Isa::Avx2Fma => {
                #[target_feature(enable = "avx2")]
                /// # Safety
                /// AVX2; `s` has `n` values and `d` room for `n` bytes (`2 n` unless `bytes`).
                unsafe fn run(
                    s: *const f32,
                    d: *mut u8,
                    n: usize,
                    inv: f32,
                    zero: i32,
                    bytes: bool,
                ) -> usize {
                    let (inv, z) = (_mm256_set1_ps(inv), _mm256_set1_epi32(zero));
                    let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
                    // SAFETY (of each call below): 8 values from `at` are inside `s`.
                    let q = |at: usize| unsafe {
                        let q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s.add(at)), inv));
                        _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(q, z), lo), hi)
                    };
                    // Packing works per 128-bit lane. Words: a0-3 b0-3 | a4-7 b4-7. Bytes
                    // (two packs): the 8 dwords (4 bytes each) hold the wanted dwords
                    // 0 2 4 6 1 3 5 7, which the permutation puts back.
                    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                    let step = if bytes { 32 } else { 16 };
                    let mut i = 0;
                    while i + step <= n {
                        // SAFETY: values i..i + step are inside `s`, their outputs inside `d`.
                        unsafe {
                            if bytes {
                                let words_a = _mm256_packus_epi32(q(i), q(i + 8));
                                let words_b = _mm256_packus_epi32(q(i + 16), q(i + 24));
                                let bytes = _mm256_packus_epi16(words_a, words_b);
                                let ordered = _mm256_permutevar8x32_epi32(bytes, order);
                                _mm256_storeu_si256(d.add(i).cast(), ordered);
                            } else {
                                let packed = _mm256_packus_epi32(q(i), q(i + 8));
                                let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
                                _mm256_storeu_si256(d.add(2 * i).cast(), ordered);
                            }
                        }
                        i += step;
                    }
                    i
                }
                // SAFETY: the session's instruction set is supported (checked by
                // `dense_int8_with`); lengths checked above.
                unsafe { run(s, d, n, inv, zero, bytes) }
            }
            _ if bytes => 0,
            Isa::Portable | Isa::Amx => {
                #[target_feature(enable = "sse2")]
                /// # Safety
                /// `s` has `n` values and `d` room for `2 n` bytes (SSE2 is part of x86-64).
                unsafe fn run(s: *const f32, d: *mut u8, n: usize, inv: f32, zero: i32) -> usize {
                    let (inv, z) = (_mm_set1_ps(inv), _mm_set1_epi32(zero));
                    let (lo, hi) = (_mm_setzero_si128(), _mm_set1_epi16(255));
                    let mut i = 0;
                    while i + 8 <= n {
                        // SAFETY: values i..i + 8 are inside `s`, their outputs inside `d`.
                        // Saturating to i16 before the clamp changes nothing the clamp would
                        // not.
                        unsafe {
                            let q = |at: usize| {
                                _mm_add_epi32(
                                    _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(s.add(at)), inv)),
                                    z,
                                )
                            };
                            let q = _mm_packs_epi32(q(i), q(i + 4));
                            let q = _mm_min_epi16(_mm_max_epi16(q, lo), hi);
                            _mm_storeu_si128(d.add(2 * i).cast(), q);
                        }
                        i += 8;
                    }
                    i
                }
                // SAFETY: lengths checked above; SSE2 is part of x86-64.
                unsafe { run(s, d, n, inv, zero) }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, src, inv, zero, bytes, dst);
        0
    }
}

/// `((acc - zero * weight_sum) as f32 * row_scale) * scale + bias`: the end of every kernel.
#[inline(always)]
fn dequantize(acc: i32, zero: i32, weight_sum: i32, row_scale: f32, scale: f32, bias: f32) -> f32 {
    (acc.wrapping_sub(zero.wrapping_mul(weight_sum)) as f32 * row_scale) * scale + bias
}

/// Writes row `r`'s 16 outputs of the tile's panel from its integer sums.
///
/// # Safety
/// The tile must lie inside the buffers [`dense_int8_with`] checked, with `r` one of its rows.
#[inline(always)]
unsafe fn finish_row(t: &Tile, r: usize, sums: &[i32; PANEL_WIDTH]) {
    // SAFETY: row r's scale, zero point and 16 outputs, and the panel's 16 sums, scales and
    // biases, are inside the checked buffers.
    unsafe {
        let (row_scale, zero) = (*t.row_scale.add(r), *t.row_zero.add(r));
        let out = t.out.add(r * t.out_stride);
        for j in 0..PANEL_WIDTH {
            *out.add(j) = dequantize(
                sums[j],
                zero,
                *t.weight_sums.add(j),
                row_scale,
                *t.scales.add(j),
                *t.bias.add(j),
            );
        }
    }
}

/// `R` rows by one panel with AVX2 16-bit multiply-adds: per group of 4 inputs, the panel's
/// 64 weight bytes sign-extended into 4 registers (4 outputs x 4 inputs each), each row's 4
/// inputs broadcast, and `vpmaddwd` summing pairs of products into `i32` (exact: at most
/// `2 x 255 x 128`); the two pair sums of each output are added at the end.
///
/// # Safety
/// AVX2 must be available; the tile must lie inside the buffers [`dense_int8_with`] checked,
/// its rows holding `u16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn micro_madd_avx2<const R: usize, const P: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_si256(); 4]; R];
    for g in 0..t.groups {
        let mut w = [_mm256_setzero_si256(); 4];
        for (k, wk) in w.iter_mut().enumerate() {
            // SAFETY: bytes 16k..16k + 16 of group g of the panel are inside the weights.
            *wk = unsafe {
                _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    t.quads.add(g * PANEL_WIDTH * QUAD + 16 * k).cast(),
                ))
            };
        }
        for r in 0..R {
            // SAFETY: inputs 4g..4g + 4 of row r (8 bytes) are inside the quantized rows.
            let x = unsafe {
                t.q.add(r * t.row_bytes + g * QUAD * 2)
                    .cast::<i64>()
                    .read_unaligned()
            };
            let x = _mm256_set1_epi64x(x);
            for k in 0..4 {
                acc[r][k] = _mm256_add_epi32(acc[r][k], _mm256_madd_epi16(x, w[k]));
            }
        }
    }
    for r in 0..R {
        let mut pairs = [0i32; 2 * PANEL_WIDTH];
        for k in 0..4 {
            // SAFETY: 8 i32 fit at 8k in the 32-value array.
            unsafe { _mm256_storeu_si256(pairs.as_mut_ptr().add(8 * k).cast(), acc[r][k]) };
        }
        let sums = std::array::from_fn(|j| pairs[2 * j].wrapping_add(pairs[2 * j + 1]));
        // SAFETY: the tile and row are as checked by the caller.
        unsafe { finish_row(&t, r, &sums) };
    }
}

/// [`micro_madd_avx2`] with SSE2 (part of every x86-64 CPU): the panel in two halves of 8
/// outputs, so that accumulators and weights fit the 16 registers.
///
/// # Safety
/// The tile must lie inside the buffers [`dense_int8_with`] checked, its rows holding `u16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
unsafe fn micro_madd_sse2<const R: usize, const P: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let mut pairs = [[0i32; 2 * PANEL_WIDTH]; R];
    for half in 0..2 {
        let mut acc = [[_mm_setzero_si128(); 4]; R];
        for g in 0..t.groups {
            let mut w = [_mm_setzero_si128(); 4];
            for k in 0..2 {
                // SAFETY: bytes 32 half + 16k..+16 of group g are inside the weights. Sign
                // extension without SSE4.1: each byte into the high half, shifted down.
                let bytes = unsafe {
                    _mm_loadu_si128(
                        t.quads
                            .add(g * PANEL_WIDTH * QUAD + 32 * half + 16 * k)
                            .cast(),
                    )
                };
                w[2 * k] = _mm_srai_epi16::<8>(_mm_unpacklo_epi8(bytes, bytes));
                w[2 * k + 1] = _mm_srai_epi16::<8>(_mm_unpackhi_epi8(bytes, bytes));
            }
            for r in 0..R {
                // SAFETY: inputs 4g..4g + 4 of row r (8 bytes) are inside the quantized rows.
                let x = unsafe {
                    t.q.add(r * t.row_bytes + g * QUAD * 2)
                        .cast::<i64>()
                        .read_unaligned()
                };
                let x = _mm_set1_epi64x(x);
                for k in 0..4 {
                    acc[r][k] = _mm_add_epi32(acc[r][k], _mm_madd_epi16(x, w[k]));
                }
            }
        }
        for r in 0..R {
            for k in 0..4 {
                // SAFETY: 4 i32 fit at 16 half + 4k in the 32-value array.
                unsafe {
                    _mm_storeu_si128(
                        pairs[r].as_mut_ptr().add(16 * half + 4 * k).cast(),
                        acc[r][k],
                    )
                };
            }
        }
    }
    for r in 0..R {
        let sums = std::array::from_fn(|j| pairs[r][2 * j].wrapping_add(pairs[r][2 * j + 1]));
        // SAFETY: the tile and row are as checked by the caller.
        unsafe { finish_row(&t, r, &sums) };
    }
}

/// `R` rows by one panel in plain integer arithmetic (targets other than x86-64).
///
/// # Safety
/// The tile must lie inside the buffers [`dense_int8_with`] checked, its rows holding `u16` values.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_scalar<const R: usize, const P: usize>(t: Tile) {
    for r in 0..R {
        let mut sums = [0i32; PANEL_WIDTH];
        for g in 0..t.groups {
            for k in 0..QUAD {
                // SAFETY: input 4g + k of row r and group g's weights are inside the buffers.
                let (x, w) = unsafe {
                    (
                        t.q.add(r * t.row_bytes + 2 * (g * QUAD + k))
                            .cast::<u16>()
                            .read_unaligned() as i32,
                        t.quads.add(g * PANEL_WIDTH * QUAD),
                    )
                };
                for j in 0..PANEL_WIDTH {
                    // SAFETY: as above.
                    let wj = unsafe { *w.add(j * QUAD + k) } as i32;
                    sums[j] = sums[j].wrapping_add(x * wj);
                }
            }
        }
        // SAFETY: the tile and row are as checked by the caller.
        unsafe { finish_row(&t, r, &sums) };
    }
}

/// `R` rows by one panel with AVX-VNNI: per group of 4 inputs, the panel's 64 weight bytes in
/// two registers (outputs 0-7 and 8-15), `R` broadcasts and `2 R` `vpdpbusd` of 32
/// multiply-adds each (12 accumulators for 6 rows, 2 weights, 1 broadcast: 15 of the 16
/// registers); then the same last operations as every other kernel, 8 outputs at a time.
///
/// # Safety
/// AVX2 and AVX-VNNI must be available; the tile must lie inside the buffers
/// [`dense_int8_with`] checked, its rows holding `u8` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn micro_avx_vnni<const R: usize, const P: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..t.groups {
        // SAFETY: the 64 bytes of group g of the panel are inside the checked weights.
        let (w0, w1) = unsafe {
            let at = t.quads.add(g * PANEL_WIDTH * QUAD);
            (
                _mm256_loadu_si256(at.cast()),
                _mm256_loadu_si256(at.add(32).cast()),
            )
        };
        for r in 0..R {
            // SAFETY: inputs 4g..4g + 4 of row r are inside the quantized rows.
            let x = unsafe {
                t.q.add(r * t.row_bytes + g * QUAD)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let x = _mm256_set1_epi32(x);
            acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], x, w0);
            acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], x, w1);
        }
    }
    for h in 0..2 {
        // SAFETY: the panel's 16 sums, scales and biases are inside the buffers.
        let (sums, scales, bias) = unsafe {
            (
                _mm256_loadu_si256(t.weight_sums.add(8 * h).cast()),
                _mm256_loadu_ps(t.scales.add(8 * h)),
                _mm256_loadu_ps(t.bias.add(8 * h)),
            )
        };
        for r in 0..R {
            // SAFETY: row r's scale and zero point, and its outputs 8h..8h + 8, are inside
            // the checked buffers.
            unsafe {
                let zero = _mm256_set1_epi32(*t.row_zero.add(r));
                let row_scale = _mm256_set1_ps(*t.row_scale.add(r));
                let centred = _mm256_sub_epi32(acc[r][h], _mm256_mullo_epi32(zero, sums));
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(centred), row_scale);
                let v = _mm256_add_ps(_mm256_mul_ps(v, scales), bias);
                _mm256_storeu_ps(t.out.add(r * t.out_stride + 8 * h), v);
            }
        }
    }
}

/// `R` rows by `P` panels with AVX-512 VNNI: per group of 4 inputs, `P` weight loads, `R`
/// broadcasts and `R x P` `vpdpbusd` of 64 multiply-adds each.
///
/// # Safety
/// AVX-512F, BW and VNNI must be available; the tile must lie inside the buffers
/// [`dense_int8_with`] checked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro_vnni<const R: usize, const P: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let panel_bytes = t.groups * PANEL_WIDTH * QUAD;
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for g in 0..t.groups {
        let mut w = [_mm512_setzero_si512(); P];
        for p in 0..P {
            // SAFETY: group g of panel p is inside the checked weights.
            w[p] = unsafe {
                _mm512_loadu_si512(t.quads.add(p * panel_bytes + g * PANEL_WIDTH * QUAD).cast())
            };
        }
        for r in 0..R {
            // SAFETY: inputs 4g..4g + 4 of row r are inside the quantized rows.
            let x = unsafe {
                t.q.add(r * t.row_bytes + g * QUAD)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let x = _mm512_set1_epi32(x);
            for p in 0..P {
                acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], x, w[p]);
            }
        }
    }
    for p in 0..P {
        // SAFETY: the tile's 16 * P outputs' sums, scales and biases are inside the buffers.
        let (sums, scales, bias) = unsafe {
            (
                _mm512_loadu_si512(t.weight_sums.add(p * PANEL_WIDTH).cast()),
                _mm512_loadu_ps(t.scales.add(p * PANEL_WIDTH)),
                _mm512_loadu_ps(t.bias.add(p * PANEL_WIDTH)),
            )
        };
        for r in 0..R {
            // SAFETY: row r's scale and zero point, and its 16 outputs of panel p, are inside
            // the checked buffers.
            unsafe {
                let zero = _mm512_set1_epi32(*t.row_zero.add(r));
                let row_scale = _mm512_set1_ps(*t.row_scale.add(r));
                let centred = _mm512_sub_epi32(acc[r][p], _mm512_mullo_epi32(zero, sums));
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(centred), row_scale);
                let v = _mm512_add_ps(_mm512_mul_ps(v, scales), bias);
                _mm512_storeu_ps(t.out.add(r * t.out_stride + p * PANEL_WIDTH), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain per-element arithmetic of the module documentation, written out independently.
    fn expected(
        x: &[f32],
        n: usize,
        d: usize,
        wq: &[i8],
        ws: &[f32],
        o: usize,
        b: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; n * o];
        for r in 0..n {
            let row = &x[r * d..(r + 1) * d];
            let lo = row.iter().cloned().fold(0.0f32, f32::min);
            let hi = row.iter().cloned().fold(0.0f32, f32::max);
            let scale = (hi - lo) / 255.0;
            let inv = 1.0 / scale;
            let zero = (-lo * inv).round_ties_even().clamp(0.0, 255.0);
            let q: Vec<i64> = row
                .iter()
                .map(|v| ((v * inv).round_ties_even() + zero).clamp(0.0, 255.0) as i64)
                .collect();
            for j in 0..o {
                let acc: i64 = (0..d)
                    .map(|i| (q[i] - zero as i64) * wq[j * d + i] as i64)
                    .sum();
                out[r * o + j] = (acc as f32 * scale) * ws[j] + b[j];
            }
        }
        out
    }

    /// Each instruction set's kernel, and under AVX2 also the 16-bit one where AVX-VNNI would
    /// be chosen.
    fn kernel_cases() -> Vec<(Isa, Int8Kernel)> {
        if !avx_vnni_supported() {
            eprintln!("skipped: the AVX-VNNI kernel (this CPU lacks AVX-VNNI)");
        }
        Isa::all_supported()
            .into_iter()
            .flat_map(|isa| {
                let chosen = Int8Kernel::for_isa(isa);
                let extra = (chosen == Int8Kernel::AvxVnni).then_some(Int8Kernel::MaddAvx2);
                std::iter::once((isa, chosen)).chain(extra.map(|k| (isa, k)))
            })
            .collect()
    }

    #[test]
    fn rows_of_a_tiny_range_quantize_to_zero_alike_on_every_kernel() {
        // Ranges whose 1 / scale overflows f32 (the first with a negative minimum, which made
        // the scalar tail overflow i32), then an ordinary row. 48 inputs: the AVX2 bytes
        // quantizer does 32 and leaves 16 to the scalar tail.
        let (d, o) = (48, 21);
        let mut x: Vec<f32> = (0..d)
            .map(|i| if i % 2 == 0 { 1e-37 } else { -1e-37 })
            .collect();
        x.extend((0..d).map(|i| if i % 3 == 0 { 0.0 } else { 5e-38 }));
        x.extend((0..d).map(|i| (i as f32 * 0.37).sin()));
        let n = 3;
        let wq: Vec<f32> = (0..o * d)
            .map(|i| ((i * 31 % 255) as i32 - 127) as f32)
            .collect();
        let panels: Vec<i8> = super::super::pack_panels(&wq, o, d)
            .iter()
            .map(|v| *v as i8)
            .collect();
        let quads = quad_panels(&panels, o, d);
        let sums = quad_weight_sums(&quads, o, d);
        let scales = vec![0.01f32; padded_rows(o)];
        let b: Vec<f32> = (0..o).map(|j| j as f32 * 0.25 - 2.0).collect();
        let weights = Int8Weights {
            quads: &quads,
            weight_sums: &sums,
            scales: &scales,
        };
        let stride = padded_rows(o);
        let mut pack = vec![0.0f32; super::super::PACK_FLOATS];
        let mut first: Option<Vec<u32>> = None;
        for (isa, kernel) in kernel_cases() {
            let plan = KernelPlan::for_isa(isa);
            let mut out = vec![f32::NAN; n * stride];
            dense_int8_with(
                &plan, kernel, &x, n, d, d, weights, o, &b, &mut out, stride, &mut pack,
            );
            for row in 0..2 {
                for j in 0..o {
                    assert_eq!(out[row * stride + j], b[j], "{isa:?} {kernel:?} row {row}");
                }
            }
            let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(want) => assert!(bits == *want, "{isa:?} {kernel:?} differs"),
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_integer_arithmetic_and_rows_are_chunking_independent() {
        // Ragged shapes, and one with several AMX steps of 64 inputs plus a ragged last one.
        for (d, o) in [(37, 21), (301, 40)] {
            check_every_kernel(d, o);
        }
    }

    fn check_every_kernel(d: usize, o: usize) {
        let n = 29;
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 1.0) * if i % 11 == 0 { 3.0 } else { 1.0 })
            .collect();
        let wq: Vec<i8> = (0..o * d)
            .map(|i| ((i * 4099 % 255) as i32 - 127) as i8)
            .collect();
        let ws: Vec<f32> = (0..o).map(|j| 0.001 + j as f32 * 1e-4).collect();
        let b: Vec<f32> = (0..o).map(|j| j as f32 * 0.01 - 0.1).collect();
        let wf: Vec<f32> = wq.iter().map(|v| *v as f32).collect();
        let panels: Vec<i8> = super::super::pack_panels(&wf, o, d)
            .iter()
            .map(|v| *v as i8)
            .collect();
        let quads = quad_panels(&panels, o, d);
        let sums = quad_weight_sums(&quads, o, d);
        let mut scales = ws.clone();
        scales.resize(padded_rows(o), 0.0);
        let weights = Int8Weights {
            quads: &quads,
            weight_sums: &sums,
            scales: &scales,
        };
        let want = expected(&x, n, d, &wq, &ws, o, &b);
        let stride = padded_rows(o);
        let mut pack = vec![0.0f32; super::super::PACK_FLOATS];
        for (isa, kernel) in kernel_cases() {
            let plan = KernelPlan::for_isa(isa);
            for split in [n, 1, 13] {
                let mut out = vec![f32::NAN; n * stride];
                let mut r = 0;
                while r < n {
                    let rows = split.min(n - r);
                    dense_int8_with(
                        &plan,
                        kernel,
                        &x[r * d..],
                        rows,
                        d,
                        d,
                        weights,
                        o,
                        &b,
                        &mut out[r * stride..],
                        stride,
                        &mut pack,
                    );
                    r += rows;
                }
                for row in 0..n {
                    for j in 0..o {
                        assert_eq!(
                            out[row * stride + j].to_bits(),
                            want[row * o + j].to_bits(),
                            "{isa:?} {kernel:?}, split {split}, row {row}, output {j}"
                        );
                    }
                    assert!(out[row * stride + o..(row + 1) * stride]
                        .iter()
                        .all(|v| *v == 0.0));
                }
            }
        }
    }
}
