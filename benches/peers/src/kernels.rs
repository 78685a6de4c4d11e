//! `--kernels`: the matrix kernels alone, in GFLOP/s against the FMA peak, for the head's two
//! products (64 x 1024 -> 512 and 64 x 512 -> 256) and several input blocks.

use std::time::Instant;

use msclam_engine::kernels::{dense, pack_panels, padded_rows, KernelPlan, PACK_FLOATS};
use msclam_engine::{Isa, MatrixWeights};

use crate::fma::fma_peaks_with;

/// Prints GFLOP/s and % of the peak per instruction set, shape and input block.
pub fn report(rounds: usize) {
    let detected = KernelPlan::detect();
    println!("detected plan: {detected:?}");
    for (n, d, o) in [(64usize, 1024usize, 512usize), (64, 512, 256)] {
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let w: Vec<f32> = (0..o * d)
            .map(|i| ((i * 104_729) % 2000) as f32 * 1e-3 - 1.0)
            .collect();
        let b = vec![0.1f32; o];
        let packed = pack_panels(&w, o, d);
        let stride = padded_rows(o);
        let mut out = vec![0.0f32; n * stride];
        let mut pack = vec![0.0f32; PACK_FLOATS];
        for isa in Isa::all_supported() {
            for k_block in [64, 128, 256, d] {
                let plan = KernelPlan { isa, k_block };
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
                            MatrixWeights::F32(&packed),
                            o,
                            &b,
                            &mut out,
                            stride,
                            &mut pack,
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
                    "{n}x{d}->{o} {:8} k_block {k_block:5}: {gflops:6.1} GFLOP/s, {share} of peak",
                    isa.name()
                );
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
