//! The core's measured fused multiply-add peak, one microbenchmark per vector width, and the
//! peaks of the int8 dot products (AVX-512 VNNI: `vnni512`; AVX-VNNI: `vnni256`), of the
//! AVX-512 BF16 dot products (`bf16dot`, `vdpbf16ps`) and of the AMX bf16 tiles (`amx`), 2
//! operations per multiply-add.
//!
//! Each loop keeps more independent accumulator chains in registers than the FMA latency on
//! every port needs (2 ports x 4-cycle latency needs 8; 10 ymm, 16 zmm), with no loads, so the
//! only limit is the FMA units.

use std::hint::black_box;
use std::time::Instant;

/// FLOP/s of the best of `repeats` runs of `kernel` (which returns the FLOPs it did).
fn best_rate(repeats: usize, mut kernel: impl FnMut() -> f64) -> f64 {
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            let flops = kernel();
            flops / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Peak GFLOP/s per width this CPU has: `(name, GFLOP/s)`, e.g. `("avx512", 169.0)`.
pub fn fma_peaks() -> Vec<(&'static str, f64)> {
    fma_peaks_with(20_000_000)
}

/// [`fma_peaks`] with `iters` rounds per loop (20 million take about 60 ms at 170 GFLOP/s).
pub fn fma_peaks_with(iters: usize) -> Vec<(&'static str, f64)> {
    let mut peaks = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are available (checked just above).
            let rate = best_rate(3, || unsafe { x86::fma256(iters) });
            peaks.push(("avx2", rate / 1e9));
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked just above).
            let rate = best_rate(3, || unsafe { x86::fma512(iters) });
            peaks.push(("avx512", rate / 1e9));
        }
        if msclam_engine::kernels::vnni_supported() {
            // SAFETY: AVX-512F and VNNI are available (checked just above).
            let rate = best_rate(3, || unsafe { x86::vnni512(iters) });
            peaks.push(("vnni512", rate / 1e9));
        }
        if msclam_engine::kernels::avx_vnni_supported() {
            // SAFETY: AVX2 and AVX-VNNI are available (checked just above).
            let rate = best_rate(3, || unsafe { x86::vnni256(iters) });
            peaks.push(("vnni256", rate / 1e9));
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            // SAFETY: AVX-512F and AVX-512 BF16 are available (checked just above).
            let rate = best_rate(3, || unsafe { x86::bf16_dot512(iters) });
            peaks.push(("bf16dot", rate / 1e9));
        }
        if msclam_engine::kernels::amx_bf16_usable() {
            // SAFETY: this process may use the AMX bf16 tiles (checked just above).
            let rate = best_rate(3, || unsafe { x86::amx_bf16(iters / 16) });
            peaks.push(("amx", rate / 1e9));
        }
    }
    peaks
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::black_box;
    use std::arch::x86_64::*;

    /// `iters` rounds of 10 independent 8-lane FMAs (12 of the 16 ymm registers); returns the FLOPs done.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize) -> f64 {
        let m = _mm256_set1_ps(black_box(0.999_999));
        let a = _mm256_set1_ps(black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 10];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, m, a);
            }
        }
        black_box(acc);
        (iters * 10 * 8 * 2) as f64
    }

    /// `iters` rounds of 16 independent 16-lane FMAs; returns the FLOPs done.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize) -> f64 {
        let m = _mm512_set1_ps(black_box(0.999_999));
        let a = _mm512_set1_ps(black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 16];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, m, a);
            }
        }
        black_box(acc);
        (iters * 16 * 16 * 2) as f64
    }

    /// `iters` rounds of 16 independent `vpdpbusd` (16 lanes x 4 u8 x s8 products each);
    /// returns the operations done (2 per multiply-add, as for FMAs).
    ///
    /// # Safety
    /// AVX-512F and AVX-512 VNNI must be available.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn vnni512(iters: usize) -> f64 {
        let a = _mm512_set1_epi32(black_box(0x0101_0101));
        let b = _mm512_set1_epi32(black_box(0x01ff_01ff));
        let mut acc = [_mm512_setzero_si512(); 16];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        black_box(acc);
        (iters * 16 * 16 * 4 * 2) as f64
    }

    /// `iters` rounds of 16 independent `vdpbf16ps` (16 lanes x 2 bf16 products each);
    /// returns the operations done (2 per multiply-add).
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16 must be available.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_dot512(iters: usize) -> f64 {
        // bf16 pairs (1.0, 1/128) and (1/1024, 1/1024): the sums grow slowly and stay finite.
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(black_box(0x3c00_3f80)));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(black_box(0x3a80_3a80)));
        let mut acc = [_mm512_setzero_ps(); 16];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, b);
            }
        }
        black_box(acc);
        (iters * 16 * 16 * 2 * 2) as f64
    }

    /// `iters` rounds of 12 independent 256-bit `vpdpbusd` (8 lanes x 4 u8 x s8 products
    /// each; 12 of the 16 ymm registers); returns the operations done.
    ///
    /// # Safety
    /// AVX2 and AVX-VNNI must be available.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn vnni256(iters: usize) -> f64 {
        let a = _mm256_set1_epi32(black_box(0x0101_0101));
        let b = _mm256_set1_epi32(black_box(0x01ff_01ff));
        let mut acc = [_mm256_setzero_si256(); 12];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm256_dpbusd_avx_epi32(*c, a, b);
            }
        }
        black_box(acc);
        (iters * 12 * 8 * 4 * 2) as f64
    }

    /// `iters` rounds of 4 independent `tdpbf16ps` (16 x 16 outputs x 32 bf16 products each)
    /// on tiles loaded once; returns the operations done (2 per multiply-add).
    ///
    /// # Safety
    /// The AMX bf16 tiles must be usable by this process.
    pub unsafe fn amx_bf16(iters: usize) -> f64 {
        #[repr(C, align(64))]
        struct Aligned<const N: usize>([u8; N]);
        let mut config = Aligned([0u8; 64]);
        config.0[0] = 1;
        for tile in 0..8 {
            config.0[16 + 2 * tile] = 64;
            config.0[48 + tile] = 16;
        }
        // bf16 1/64 everywhere: the sums stay finite.
        let ones = Aligned([0x3c_u8; 1024]);
        // SAFETY: a valid palette-1 configuration; every tile load reads the 1 KiB `ones`
        // (16 rows of 64 bytes); the caller guarantees the tile unit.
        unsafe {
            std::arch::asm!(
                "ldtilecfg [{c}]",
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "tileloadd tmm4, [{o} + {s}*1]", "tileloadd tmm5, [{o} + {s}*1]",
                "tileloadd tmm6, [{o} + {s}*1]", "tileloadd tmm7, [{o} + {s}*1]",
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                "tilerelease",
                c = in(reg) config.0.as_ptr(),
                o = in(reg) ones.0.as_ptr(),
                s = in(reg) 64usize,
                n = inout(reg) iters.max(1) => _,
                options(nostack),
            );
        }
        (iters.max(1) * 4 * 16 * 16 * 32 * 2) as f64
    }
}
