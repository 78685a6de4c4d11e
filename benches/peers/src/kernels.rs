//! `--kernels`: the matrix kernels alone, in GFLOP/s against the FMA peak, for the head's two
//! products (64 x 1024 -> 512 and 64 x 512 -> 256) and several input blocks: f32 weights on
//! the vector instruction sets, bf16 pairs on the AMX tiles (against the tiles' peak).

use std::time::Instant;

use msclam_engine::kernels::{
    dense, pack_panels, padded_rows, pair_panels, KernelPlan, PanelOrder, PACK_FLOATS,
};
use msclam_engine::{Isa, MatrixWeights};

use crate::fma::fma_peaks_with;

/// Prints GFLOP/s and % of the peak per instruction set, shape and input block.
pub fn report(rounds: usize) {
    let detected = KernelPlan::detect();
    println!("detected plan: {detected:?}");
    for (n, d, o) in [
        (64usize, 1024usize, 512usize),
        (64, 512, 256),
        (128, 1024, 512),
    ] {
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let w: Vec<f32> = (0..o * d)
            .map(|i| ((i * 104_729) % 2000) as f32 * 1e-3 - 1.0)
            .collect();
        let b = vec![0.1f32; o];
        let packed = pack_panels(&w, o, d);
        // The same weights rounded to bf16 (the top halves), in pairs for the AMX tiles.
        let halves: Vec<u16> = packed.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let pairs_vec = pair_panels(&halves, o, d);
        // On a cache line, as a model keeps them.
        let mut pairs_store = vec![0u32; pairs_vec.len() + 16];
        let at = pairs_store.as_ptr().align_offset(64);
        pairs_store[at..at + pairs_vec.len()].copy_from_slice(&pairs_vec);
        let pairs = &pairs_store[at..at + pairs_vec.len()];
        let stride = padded_rows(o);
        let mut out = vec![0.0f32; n * stride];
        let mut pack = vec![0.0f32; PACK_FLOATS];
        for isa in Isa::all_supported() {
            for (k_block, tile_k_block) in [(64, 128), (128, 256), (256, 512), (d, 1024)] {
                let plan = KernelPlan {
                    tile_k_block,
                    ..KernelPlan::for_isa(isa).with_k_block(k_block)
                };
                let weights = match isa {
                    Isa::Amx => MatrixWeights::Bf16Pairs(pairs),
                    _ => MatrixWeights::F32(&packed),
                };
                // Each round times the kernel between two short peak measurements, so a
                // change of clock or a noisy neighbour moves both sides of the ratio.
                let reps = 20;
                let mut shares = Vec::new();
                let mut rates = Vec::new();
                for _ in 0..rounds.max(3) {
                    let before = fma_peaks_with(2_000_000);
                    let start = Instant::now();
                    for _ in 0..reps {
                        dense(
                            &plan,
                            &x,
                            n,
                            d,
                            d,
                            weights,
                            o,
                            &b,
                            &mut out,
                            stride,
                            &mut pack,
                            PanelOrder::Forward,
                        );
                    }
                    let secs = start.elapsed().as_secs_f64() / reps as f64;
                    let after = fma_peaks_with(2_000_000);
                    let gflops = 2.0 * (n * d * o) as f64 / secs / 1e9;
                    rates.push(gflops);
                    let peak = |p: &[(&str, f64)]| {
                        p.iter().find(|(w, _)| *w == isa.name()).map(|(_, g)| *g)
                    };
                    if let (Some(a), Some(b)) = (peak(&before), peak(&after)) {
                        shares.push(100.0 * gflops / a.max(b));
                    }
                }
                let gflops = median(&mut rates);
                let share = if shares.is_empty() {
                    "—".to_string()
                } else {
                    format!("{:.0} %", median(&mut shares))
                };
                println!(
                    "{n}x{d}->{o} {:8} k_block {k_block:5}{}: {gflops:6.1} GFLOP/s, {share} of peak",
                    isa.name(),
                    if isa == Isa::Amx {
                        format!(" (tile block {})", plan.tile_k_block)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
