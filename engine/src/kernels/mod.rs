//! Linear-algebra kernels: the only code that touches packed weights element by element.
//!
//! The session logic calls [`dense`] (a blocked matrix product over packed weights) and the
//! row-wise helpers in [`rows`]; which instruction set runs is chosen at run time ([`Isa`]),
//! never at build time, so one binary runs at its best on AVX2 and AVX-512 machines alike.
//!
//! Determinism: for a given [`Isa`], every output row is computed by the same sequence of
//! floating-point operations whatever the number of rows in the call, so a tile's results do
//! not depend on how the slide was cut into strips.

#[cfg(target_arch = "x86_64")]
mod amx;
mod cpu;
mod dense;
mod int8;
pub mod rows;

pub use cpu::{amx_bf16_usable, amx_int8_usable, CpuCaches};
pub use dense::{dense, PanelOrder, MAX_K_BLOCK, MAX_TILE_K_BLOCK, PACK_FLOATS, PACK_ROWS};
pub use int8::{
    avx_vnni_supported, quad_panels, quad_weight_sums, vnni_supported, Int8Weights, QUAD,
};

/// Width (output rows) of one panel in the [`crate::format::Layout::Panel16`] layout.
pub const PANEL_WIDTH: usize = 16;

/// Instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler for the build target's baseline (SSE2 on x86-64).
    /// Uses separate multiply and add (no fused multiply-add).
    Portable,
    /// x86-64 AVX2 with fused multiply-add (and F16C, which every AVX2 CPU has).
    Avx2Fma,
    /// x86-64 AVX-512F (with AVX2 and FMA).
    Avx512,
    /// [`Isa::Avx512`] plus the AMX tile unit (Intel Xeon from Sapphire Rapids on): the same
    /// kernels and results, except that bf16 dot products
    /// ([`crate::SessionOptions::bf16_dot`]) run on the tile unit, whose sums round
    /// differently from AVX-512 BF16's (pin [`Isa::Avx512`] for those results), and int8
    /// models' integer sums, which are exact, so int8 results stay identical.
    Amx,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::Amx.is_supported() {
                return Isa::Amx;
            }
            if Isa::Avx512.is_supported() {
                return Isa::Avx512;
            }
            if Isa::Avx2Fma.is_supported() {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run kernels built for `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => {
                Isa::Avx512.is_supported()
                    && is_x86_feature_detected!("avx512bf16")
                    && cpu::amx_bf16_usable()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The vector instruction set of `self`'s kernels: [`Isa::Avx512`] for [`Isa::Amx`]
    /// (everything but the bf16 dot products), else `self`.
    pub fn vector(self) -> Isa {
        match self {
            Isa::Amx => Isa::Avx512,
            other => other,
        }
    }

    /// Every instruction set this CPU supports, portable first.
    pub fn all_supported() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2Fma, Isa::Avx512, Isa::Amx]
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    /// Short lower-case name (`portable`, `avx2`, `avx512`, `amx`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }
}

/// The kernels a session runs and how they block the work, chosen once per session from the
/// CPU's instruction sets and cache sizes (never per call).
///
/// The blocking changes only speed: results are bit-identical for any `k_block`
/// ([`dense`]'s documentation says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPlan {
    /// Instruction set of the micro-kernels.
    pub isa: Isa,
    /// Inputs per block of the input dimension: the micro-kernel's slice of weights for one
    /// block, with its rows, is sized to three quarters of the L1 data cache, where it stays
    /// while every row passes over it.
    pub k_block: usize,
    /// Inputs per block of the AMX kernels ([`Isa::Amx`]): 32 rows as bf16 (64 bytes per
    /// input) stay in L1 while every pair of panels passes over them; two thirds of L1 (512
    /// inputs, 32 KiB, for a 48 KiB L1) ran faster than a half or a sixth on an Intel Xeon
    /// (docs/PERFORMANCE.md). Rounded down to whole steps of 32 inputs.
    pub tile_k_block: usize,
}

impl KernelPlan {
    /// The plan for the best instruction set of this CPU.
    pub fn detect() -> KernelPlan {
        KernelPlan::for_isa(Isa::detect())
    }

    /// The plan for `isa` on this CPU's caches (whether the CPU supports `isa` is checked by
    /// the session, not here).
    pub fn for_isa(isa: Isa) -> KernelPlan {
        KernelPlan::for_caches(isa, CpuCaches::detect())
    }

    /// This plan with another input block for the vector kernels (for tests and
    /// measurements: results are the same for any block).
    pub fn with_k_block(self, k_block: usize) -> KernelPlan {
        KernelPlan { k_block, ..self }
    }

    /// The plan for `isa` with the given cache sizes.
    pub fn for_caches(isa: Isa, caches: CpuCaches) -> KernelPlan {
        // Floats per input held in L1 by one micro-tile: its panels' weights and its rows.
        let (panels, rows) = match isa {
            Isa::Avx512 | Isa::Amx => (2, 12),
            Isa::Avx2Fma => (1, 6),
            Isa::Portable => (1, 2),
        };
        let per_input = 4 * (panels * PANEL_WIDTH + rows);
        // Three quarters of L1: on an Intel Xeon with 48 KiB (192 inputs for AVX-512) this ran
        // 3-6 % faster than half of it (128), interleaved in one run (docs/PERFORMANCE.md);
        // the rest of L1 holds the partial sums and the stack.
        let k_block = (caches.l1d_bytes * 3 / 4 / per_input) / 32 * 32;
        let tile_k_block = (caches.l1d_bytes * 2 / 3 / 64) / 32 * 32;
        KernelPlan {
            isa,
            k_block: k_block.clamp(64, MAX_K_BLOCK),
            tile_k_block: tile_k_block.clamp(32, MAX_TILE_K_BLOCK),
        }
    }
}

/// Number of panels for `rows` output rows.
pub fn panel_count(rows: usize) -> usize {
    rows.div_ceil(PANEL_WIDTH)
}

/// Rounds a row count up to whole panels.
pub fn padded_rows(rows: usize) -> usize {
    panel_count(rows) * PANEL_WIDTH
}

/// Packs a row-major `rows x cols` matrix (PyTorch `Linear.weight`, `out x in`) into panels:
/// panel `p` holds, for each input `i` in order, the 16 weights `W[16p + j][i]`, `j = 0..16`,
/// with zeros where `16p + j >= rows`.
pub fn pack_panels(row_major: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut packed = vec![0.0f32; padded_rows(rows) * cols];
    for (p, panel) in packed
        .chunks_exact_mut(PANEL_WIDTH * cols.max(1))
        .enumerate()
    {
        for i in 0..cols {
            for j in 0..PANEL_WIDTH {
                let row = p * PANEL_WIDTH + j;
                if row < rows {
                    panel[i * PANEL_WIDTH + j] = row_major[row * cols + i];
                }
            }
        }
    }
    packed
}

/// bf16 panels ([`pack_panels`]'s layout, `cols` inputs each) to the pair layout of the bf16
/// dot-product kernels: per panel and input pair `q`, 16 `u32`s `w[2q] | w[2q + 1] << 16`
/// (zero past the last input). 16 consecutive pairs of a panel are one AMX weight tile.
pub fn pair_panels(panels: &[u16], rows: usize, cols: usize) -> Vec<u32> {
    let pairs = cols.div_ceil(2);
    let count = panel_count(rows);
    let mut out = vec![0u32; count * pairs * PANEL_WIDTH];
    for p in 0..count {
        for q in 0..pairs {
            for j in 0..PANEL_WIDTH {
                let at = |i: usize| {
                    if i < cols {
                        panels[(p * cols + i) * PANEL_WIDTH + j] as u32
                    } else {
                        0
                    }
                };
                out[(p * pairs + q) * PANEL_WIDTH + j] = at(2 * q) | (at(2 * q + 1) << 16);
            }
        }
    }
    out
}

/// Inverse of [`pack_panels`]: back to row-major `rows x cols`.
pub fn unpack_panels(packed: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for row in 0..rows {
        let (p, j) = (row / PANEL_WIDTH, row % PANEL_WIDTH);
        for i in 0..cols {
            out[row * cols + i] = packed[(p * cols + i) * PANEL_WIDTH + j];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_is_identity_for_ragged_shapes() {
        for (rows, cols) in [(1, 1), (16, 3), (17, 5), (33, 2), (5, 16)] {
            let m: Vec<f32> = (0..rows * cols).map(|v| v as f32 + 0.5).collect();
            let packed = pack_panels(&m, rows, cols);
            assert_eq!(packed.len(), padded_rows(rows) * cols);
            assert_eq!(unpack_panels(&packed, rows, cols), m);
        }
    }

    #[test]
    fn input_blocks_fill_three_quarters_of_l1() {
        let caches = |l1d_kib: usize| CpuCaches {
            l1d_bytes: l1d_kib << 10,
            l2_bytes: 2 << 20,
        };
        // AVX-512: (2 panels x 16 + 12 rows) x 4 bytes = 176 bytes per input; 36 KiB / 176
        // = 209 inputs, rounded down to 192; 24 KiB / 176 = 139 -> 128.
        assert_eq!(KernelPlan::for_caches(Isa::Avx512, caches(48)).k_block, 192);
        assert_eq!(KernelPlan::for_caches(Isa::Avx512, caches(32)).k_block, 128);
        // AVX2: (16 + 6) x 4 = 88 bytes per input: 24 KiB / 88 = 279, capped at 256.
        assert_eq!(
            KernelPlan::for_caches(Isa::Avx2Fma, caches(32)).k_block,
            MAX_K_BLOCK
        );
        // A tiny L1 still gets the smallest block.
        assert_eq!(KernelPlan::for_caches(Isa::Avx512, caches(8)).k_block, 64);
        // AMX: 32 rows of bf16, 64 bytes per input, in two thirds of L1: 32 KiB / 64 = 512.
        assert_eq!(
            KernelPlan::for_caches(Isa::Amx, caches(48)).tile_k_block,
            512
        );
        assert_eq!(
            KernelPlan::for_caches(Isa::Amx, caches(32)).tile_k_block,
            320
        );
    }

    #[test]
    fn detected_isa_is_supported() {
        assert!(Isa::detect().is_supported());
        assert!(Isa::all_supported().contains(&Isa::detect()));
    }
}
