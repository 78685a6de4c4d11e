//! bf16 dot products and exact int8 sums on the AMX tile unit ([`super::Isa::Amx`]).
//!
//! Eight tile registers of up to 16 rows x 64 bytes: `tmm0`-`tmm3` accumulate `C[i][j]` (row
//! tile `i`, panel `j`: 16 rows x 16 f32 outputs), `tmm4`-`tmm5` hold `A[i]` (16 rows x 32 bf16
//! inputs), `tmm6`-`tmm7` hold `B[j]` (16 input pairs x 16 outputs, which is exactly 16
//! consecutive pairs of a bf16-pair panel, so the weights are read where the model keeps
//! them). One step of 32 inputs: 4 tile loads and 4 `tdpbf16ps` of 16 x 16 x 32 multiply-adds.
//!
//! Loops, from the outside in: chunks of 32 rows (two row tiles; a last chunk's tiles are
//! configured with fewer rows, so nothing past the last row is read or written); blocks of
//! [`super::KernelPlan::tile_k_block`] inputs, whose rows are first rounded to bf16 into the
//! packing buffer (row-major, zero past the last input), where they stay in L1 while every pair
//! of panels passes over them; pairs of panels: the accumulators start from the bias (first
//! block) or from the partial sums parked in `out`, take the block's steps and go back to
//! `out`.
//!
//! Determinism: a row's outputs never depend on the other rows of its tile, and a parked
//! partial sum is an exact f32 round trip, so a row's result is bit-identical however the
//! slide was cut into strips. The tile unit's sums are not those of AVX-512 BF16's
//! `vdpbf16ps` (it rounds differently within a step); hence its own [`super::Isa`].

use super::dense::DenseArgs;
use super::{padded_rows, PANEL_WIDTH};
use std::arch::asm;
use std::arch::x86_64::*;

/// Bytes of one tile row (and of one weight pair row of a panel: 16 outputs x 2 bf16).
const ROW_BYTES: usize = 64;
/// Rows of one tile.
const TILE_ROWS: usize = 16;
/// Inputs per step (one tile row of bf16).
const STEP: usize = 32;

/// The 64-byte operand of `ldtilecfg`: palette 1, and each tile's rows and bytes per row.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// Row tile 0 with `rows0` rows, row tile 1 with `rows1` (0: tiles 2, 3 and 5 unused).
    fn new(rows0: usize, rows1: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1: eight tiles of up to 16 rows x 64 bytes
        let mut set = |tile: usize, rows: usize| {
            if rows > 0 {
                c[16 + 2 * tile] = ROW_BYTES as u8; // bytes per row, u16 little-endian
                c[48 + tile] = rows as u8;
            }
        };
        for (tile, rows) in [
            (0, rows0),
            (1, rows0),
            (2, rows1),
            (3, rows1),
            (4, rows0),
            (5, rows1),
            (6, TILE_ROWS),
            (7, TILE_ROWS),
        ] {
            set(tile, rows);
        }
        TileConfig(c)
    }
}

/// `tileloadd $tile, [ptr + stride]`: the tile's rows from `ptr`, `stride` bytes apart.
macro_rules! tile_load {
    ($tile:literal, $ptr:expr, $stride:expr) => {
        asm!(concat!("tileloadd ", $tile, ", [{p} + {s}*1]"),
            p = in(reg) $ptr, s = in(reg) $stride, options(nostack, readonly, preserves_flags))
    };
}

/// `tilestored [ptr + stride], $tile`.
macro_rules! tile_store {
    ($tile:literal, $ptr:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], ", $tile),
            p = in(reg) $ptr, s = in(reg) $stride, options(nostack, preserves_flags))
    };
}

/// `tdpbf16ps $c, $a, $b`: `C += A B` over bf16 pairs.
macro_rules! tile_dot {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbf16ps ", $c, ", ", $a, ", ", $b),
            options(nostack, nomem, preserves_flags)
        )
    };
}

/// `tdpbusd $c, $a, $b`: `C += A B` over groups of four u8 (A) x s8 (B), exact in i32.
macro_rules! tile_dot_int8 {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbusd ", $c, ", ", $a, ", ", $b),
            options(nostack, nomem, preserves_flags)
        )
    };
}

/// [`super::dense`] over bf16 pairs on the tile unit, with input blocks of `k_block` inputs
/// (a multiple of 32).
///
/// # Safety
/// AVX-512F, AVX-512 BF16 and the AMX bf16 tiles must be usable by this process
/// ([`super::amx_bf16_usable`]); `a` must describe checked buffers as [`super::dense`] leaves
/// them, with bf16-pair weights and a packing buffer of at least
/// `32 * k_block * 2 + 2048 + 64` bytes.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn dense_amx_bf16(
    a: &DenseArgs<'_>,
    padded_bias: &[f32; PANEL_WIDTH],
    k_block: usize,
) {
    debug_assert!(k_block >= STEP && k_block.is_multiple_of(STEP));
    let pairs = a.in_dim.div_ceil(2);
    let panel_bytes = pairs * ROW_BYTES;
    // Inputs padded to whole steps; the rows' padding is zero, the weights' is not read.
    let k_padded = pairs.div_ceil(TILE_ROWS) * STEP;
    let panels = padded_rows(a.out_dim) / PANEL_WIDTH;
    let a_stride = k_block * 2;
    // The rows start on a cache line, so that no tile row straddles two.
    let rows_buffer = a
        .pack
        .cast::<u8>()
        .wrapping_add(a.pack.cast::<u8>().align_offset(ROW_BYTES))
        .cast::<u16>();
    // After the rows: the last step's weights when a panel's pairs are not whole tiles (the
    // tile would reach past the panel), zero past the last pair.
    let tail_rows = pairs % TILE_ROWS;
    // SAFETY: the caller guarantees `32 * a_stride + 2048` bytes of packing buffer after the
    // first cache line boundary.
    let tail_buffer = unsafe { rows_buffer.cast::<u8>().add(2 * TILE_ROWS * a_stride) };
    if tail_rows != 0 {
        // SAFETY: inside the packing buffer (above).
        unsafe { tail_buffer.write_bytes(0, 2 * TILE_ROWS * ROW_BYTES) };
    }
    let out_row_bytes = a.out_stride * 4;
    let bias_of = |p: usize| {
        if (p + 1) * PANEL_WIDTH <= a.out_dim {
            // SAFETY: `bias` holds `out_dim` values (checked by `dense`).
            unsafe { a.bias.as_ptr().add(p * PANEL_WIDTH) }
        } else {
            padded_bias.as_ptr()
        }
    };
    let mut configured = None;
    let mut r0 = 0;
    while r0 < a.n {
        let rows0 = TILE_ROWS.min(a.n - r0);
        let rows1 = TILE_ROWS.min(a.n - r0 - rows0);
        if configured != Some((rows0, rows1)) {
            let config = TileConfig::new(rows0, rows1);
            // SAFETY: a valid palette-1 configuration (every used tile at most 16 rows x 64
            // bytes, unused ones all zero); the tile unit is usable (this function's contract).
            unsafe {
                asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly))
            };
            configured = Some((rows0, rows1));
        }
        let mut k0 = 0;
        while k0 < k_padded {
            let width = k_block.min(k_padded - k0);
            // SAFETY: rows `r0..r0 + rows0 + rows1 <= n` of `x`, and `32 * a_stride` bytes of
            // packing buffer (this function's contract).
            unsafe { round_rows_to_bf16(a, r0, rows0 + rows1, k0, width, rows_buffer, k_block) };
            let steps = width / STEP;
            let last_block = k0 + width == k_padded;
            let mut p = 0;
            while p < panels {
                let two_panels = p + 1 < panels;
                // SAFETY: panel `p` (and `p + 1` if `two_panels`) exist; the rows' outputs lie
                // inside `out` (checked by `dense`); the tiles read the packing buffer as
                // written above and the panels' pairs `k0 / 2 ..`, whole tiles only except the
                // last step of a ragged panel, which reads the tail copy.
                unsafe {
                    let weights = a.packed.add(p * panel_bytes + k0 / 2 * ROW_BYTES);
                    let tail = if last_block && tail_rows != 0 {
                        let from = a
                            .packed
                            .add(p * panel_bytes + (pairs - tail_rows) * ROW_BYTES);
                        from.copy_to_nonoverlapping(tail_buffer, tail_rows * ROW_BYTES);
                        if two_panels {
                            from.add(panel_bytes).copy_to_nonoverlapping(
                                tail_buffer.add(TILE_ROWS * ROW_BYTES),
                                tail_rows * ROW_BYTES,
                            );
                        }
                        Some(tail_buffer.cast_const())
                    } else {
                        None
                    };
                    let out = a.out.add(r0 * a.out_stride + p * PANEL_WIDTH).cast::<u8>();
                    let (sums, sums_stride) = if k0 == 0 {
                        ([bias_of(p).cast::<u8>(), bias_of(p + 1).cast::<u8>()], 0)
                    } else {
                        let out = out.cast_const();
                        ([out, out.wrapping_add(ROW_BYTES)], out_row_bytes)
                    };
                    let pass = Pass {
                        sums,
                        sums_second_tile: if k0 == 0 {
                            0
                        } else {
                            TILE_ROWS * out_row_bytes
                        },
                        sums_stride,
                        rows: rows_buffer.cast::<u8>(),
                        rows_stride: a_stride,
                        weights,
                        panel_bytes,
                        steps,
                        tail,
                        out,
                        out_stride: out_row_bytes,
                    };
                    match (rows1 > 0, two_panels) {
                        (true, true) => pass.run::<true, true>(),
                        (true, false) => pass.run::<true, false>(),
                        (false, true) => pass.run::<false, true>(),
                        (false, false) => pass.run::<false, false>(),
                    }
                }
                p += 2;
            }
            k0 += width;
        }
        r0 += rows0 + rows1;
    }
    // SAFETY: returns the tiles to their initial state (cheaper context switches); the tile
    // unit is usable (this function's contract).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One pass of up to two row tiles and two panels over one input block.
struct Pass {
    /// Where the accumulators of panels 0 and 1 start (row tile 0): the bias (stride 0) or the
    /// partial sums in `out`.
    sums: [*const u8; 2],
    /// Bytes from row tile 0's starting sums to row tile 1's (0 for the bias).
    sums_second_tile: usize,
    sums_stride: usize,
    /// The block's rows as bf16, `rows_stride` bytes apart; row tile 1 16 rows on.
    rows: *const u8,
    rows_stride: usize,
    /// Panel 0's pairs at the block's first input; panel 1 `panel_bytes` on.
    weights: *const u8,
    panel_bytes: usize,
    steps: usize,
    /// For the last step: both panels' weights, zero-padded, 1 KiB apart.
    tail: Option<*const u8>,
    out: *mut u8,
    out_stride: usize,
}

impl Pass {
    /// # Safety
    /// The tile configuration matches `R2` (row tile 1 configured) and every pointer reaches
    /// the rows its tiles read or write.
    #[inline(always)]
    unsafe fn run<const R2: bool, const P2: bool>(&self) {
        let (s0, s1, ss) = (self.sums[0], self.sums[1], self.sums_stride);
        let t1 = self.sums_second_tile;
        let a1 = self.rows.wrapping_add(TILE_ROWS * self.rows_stride);
        // SAFETY: the caller guarantees the configuration and the pointers.
        unsafe {
            tile_load!("tmm0", s0, ss);
            if P2 {
                tile_load!("tmm1", s1, ss);
            }
            if R2 {
                tile_load!("tmm2", s0.wrapping_add(t1), ss);
                if P2 {
                    tile_load!("tmm3", s1.wrapping_add(t1), ss);
                }
            }
            for s in 0..self.steps {
                let (b0, b1) = match self.tail {
                    Some(t) if s + 1 == self.steps => (t, t.wrapping_add(TILE_ROWS * ROW_BYTES)),
                    _ => {
                        let b0 = self.weights.wrapping_add(s * TILE_ROWS * ROW_BYTES);
                        (b0, b0.wrapping_add(self.panel_bytes))
                    }
                };
                let offset = s * ROW_BYTES;
                tile_load!("tmm4", self.rows.wrapping_add(offset), self.rows_stride);
                tile_load!("tmm6", b0, ROW_BYTES);
                tile_dot!("tmm0", "tmm4", "tmm6");
                if P2 {
                    tile_load!("tmm7", b1, ROW_BYTES);
                    tile_dot!("tmm1", "tmm4", "tmm7");
                }
                if R2 {
                    tile_load!("tmm5", a1.wrapping_add(offset), self.rows_stride);
                    tile_dot!("tmm2", "tmm5", "tmm6");
                    if P2 {
                        tile_dot!("tmm3", "tmm5", "tmm7");
                    }
                }
            }
            let o1 = self.out.wrapping_add(TILE_ROWS * self.out_stride);
            tile_store!("tmm0", self.out, self.out_stride);
            if P2 {
                tile_store!("tmm1", self.out.wrapping_add(ROW_BYTES), self.out_stride);
            }
            if R2 {
                tile_store!("tmm2", o1, self.out_stride);
                if P2 {
                    tile_store!("tmm3", o1.wrapping_add(ROW_BYTES), self.out_stride);
                }
            }
        }
    }
}

/// Rounds inputs `k0..k0 + width` of rows `r0..r0 + rows` to bf16 (to nearest, ties to even,
/// a NaN stays a NaN; subnormals become zero, as the tile unit reads them anyway), row `r` at
/// `dst + r * stride` elements, zero past the last input.
///
/// # Safety
/// AVX-512F and BF16 available; the rows inside `a.x`; `rows * stride` writable `u16`s at
/// `dst`; `width <= stride`, a multiple of 32, and `k0 < a.in_dim`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_rows_to_bf16(
    a: &DenseArgs<'_>,
    r0: usize,
    rows: usize,
    k0: usize,
    width: usize,
    dst: *mut u16,
    stride: usize,
) {
    let valid = (a.in_dim - k0).min(width);
    let mask = |c: usize| -> __mmask16 {
        match valid.saturating_sub(c) {
            0 => 0,
            left if left >= 16 => 0xFFFF,
            left => (1u16 << left) - 1,
        }
    };
    for r in 0..rows {
        // SAFETY: row `r0 + r` of `x` holds `in_dim` values from `k0` on (the caller), and
        // masked-off lanes are not read; `dst` row `r` holds `width` values.
        unsafe {
            let src = a.x.add((r0 + r) * a.x_stride + k0);
            let row = dst.add(r * stride);
            let mut c = 0;
            // Whole steps of inputs: plain loads.
            while c + STEP <= valid {
                let lo = _mm512_loadu_ps(src.add(c));
                let hi = _mm512_loadu_ps(src.add(c + 16));
                let bf16: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(row.add(c).cast(), bf16);
                c += STEP;
            }
            // The last inputs, masked, then zeros.
            while c < width {
                let (m_lo, m_hi) = (mask(c), mask(c + 16));
                let lo = if m_lo == 0 {
                    _mm512_setzero_ps()
                } else {
                    _mm512_maskz_loadu_ps(m_lo, src.add(c))
                };
                let hi = if m_hi == 0 {
                    _mm512_setzero_ps()
                } else {
                    _mm512_maskz_loadu_ps(m_hi, src.add(c + 16))
                };
                let bf16: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(row.add(c).cast(), bf16);
                c += STEP;
            }
        }
    }
}

/// Exact int8 sums on the tile unit for [`super::int8`]: for rows `0..rows` of quantized inputs
/// (`u8`, row `r` at `q + r * row_bytes`, `groups` groups of 4 inputs) and every pair of quad
/// panels, `acc[r][j] = sum_i q[r][i] * w[16p + j][i]` (`tdpbusd`: u8 x s8 into i32), handed to
/// `emit(first_row, rows, first_panel, panels, acc)` with `acc` row `r` at `r * 32` (32 outputs:
/// the two panels side by side). The sums are exact, so they equal the VNNI kernel's.
///
/// # Safety
/// The AMX tiles must be usable by this process ([`super::amx_bf16_usable`], which also
/// checks AMX-INT8 where it is used); `rows * row_bytes + 64` bytes readable at `q` (the last
/// step's 64-byte tile rows may reach past a row, into bytes whose products meet zero
/// weights); `panels * groups * 64` bytes of quad panels at `quads`.
pub(super) unsafe fn int8_sums(
    q: *const u8,
    rows: usize,
    row_bytes: usize,
    quads: *const i8,
    groups: usize,
    panels: usize,
    mut emit: impl FnMut(usize, usize, usize, usize, &[i32; 32 * 32]),
) {
    #[repr(C, align(64))]
    struct Scratch<T, const N: usize>([T; N]);
    let steps = groups.div_ceil(TILE_ROWS);
    let tail_rows = groups % TILE_ROWS;
    let panel_bytes = groups * ROW_BYTES;
    let mut tail = Scratch([0u8; 2 * TILE_ROWS * ROW_BYTES]);
    let mut acc = Scratch([0i32; 32 * 32]);
    const ACC_STRIDE: usize = 32 * 4;
    let mut configured = None;
    let mut r0 = 0;
    while r0 < rows {
        let rows0 = TILE_ROWS.min(rows - r0);
        let rows1 = TILE_ROWS.min(rows - r0 - rows0);
        if configured != Some((rows0, rows1)) {
            let config = TileConfig::new(rows0, rows1);
            // SAFETY: a valid palette-1 configuration; the tile unit is usable.
            unsafe {
                asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly))
            };
            configured = Some((rows0, rows1));
        }
        let a0 = q.wrapping_add(r0 * row_bytes);
        let a1 = a0.wrapping_add(TILE_ROWS * row_bytes);
        let mut p = 0;
        while p < panels {
            let two = p + 1 < panels;
            let b = quads.cast::<u8>().wrapping_add(p * panel_bytes);
            if tail_rows != 0 {
                // SAFETY: the last `tail_rows` groups of panel p (and p + 1) are inside the
                // quad panels; the copies fit the 2 KiB scratch, whose other rows stay zero.
                unsafe {
                    let from = b.add((groups - tail_rows) * ROW_BYTES);
                    from.copy_to_nonoverlapping(tail.0.as_mut_ptr(), tail_rows * ROW_BYTES);
                    if two {
                        from.add(panel_bytes).copy_to_nonoverlapping(
                            tail.0.as_mut_ptr().add(TILE_ROWS * ROW_BYTES),
                            tail_rows * ROW_BYTES,
                        );
                    }
                }
            }
            // SAFETY: the configuration matches `rows1`; every tile reads inside the rows
            // (with the caller's 64 bytes of slack), the panels or the tail scratch, and the
            // accumulators go to `acc` (32 rows of 128 bytes).
            unsafe {
                macro_rules! pass {
                    ($r2:expr, $p2:expr) => {{
                        asm!("tilezero tmm0", options(nostack, nomem));
                        if $p2 {
                            asm!("tilezero tmm1", options(nostack, nomem));
                        }
                        if $r2 {
                            asm!("tilezero tmm2", options(nostack, nomem));
                            if $p2 {
                                asm!("tilezero tmm3", options(nostack, nomem));
                            }
                        }
                        for s in 0..steps {
                            let (b0, b1) = if tail_rows != 0 && s + 1 == steps {
                                let t = tail.0.as_ptr();
                                (t, t.wrapping_add(TILE_ROWS * ROW_BYTES))
                            } else {
                                let b0 = b.wrapping_add(s * TILE_ROWS * ROW_BYTES);
                                (b0, b0.wrapping_add(panel_bytes))
                            };
                            let off = s * ROW_BYTES;
                            tile_load!("tmm4", a0.wrapping_add(off), row_bytes);
                            tile_load!("tmm6", b0, ROW_BYTES);
                            tile_dot_int8!("tmm0", "tmm4", "tmm6");
                            if $p2 {
                                tile_load!("tmm7", b1, ROW_BYTES);
                                tile_dot_int8!("tmm1", "tmm4", "tmm7");
                            }
                            if $r2 {
                                tile_load!("tmm5", a1.wrapping_add(off), row_bytes);
                                tile_dot_int8!("tmm2", "tmm5", "tmm6");
                                if $p2 {
                                    tile_dot_int8!("tmm3", "tmm5", "tmm7");
                                }
                            }
                        }
                        let c = acc.0.as_mut_ptr().cast::<u8>();
                        tile_store!("tmm0", c, ACC_STRIDE);
                        if $p2 {
                            tile_store!("tmm1", c.wrapping_add(ROW_BYTES), ACC_STRIDE);
                        }
                        if $r2 {
                            let c1 = c.wrapping_add(TILE_ROWS * ACC_STRIDE);
                            tile_store!("tmm2", c1, ACC_STRIDE);
                            if $p2 {
                                tile_store!("tmm3", c1.wrapping_add(ROW_BYTES), ACC_STRIDE);
                            }
                        }
                    }};
                }
                match (rows1 > 0, two) {
                    (true, true) => pass!(true, true),
                    (true, false) => pass!(true, false),
                    (false, true) => pass!(false, true),
                    (false, false) => pass!(false, false),
                }
            }
            emit(r0, rows0 + rows1, p, if two { 2 } else { 1 }, &acc.0);
            p += 2;
        }
        r0 += rows0 + rows1;
    }
    // SAFETY: back to the initial tile state; the tile unit is usable.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
