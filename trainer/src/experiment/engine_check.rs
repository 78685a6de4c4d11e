//! The demo's step 3: MS-CLAM exported and the test slides streamed through the engine strip
//! by strip, checked against the trainer's own evaluation; then exported with bf16, f16 and
//! int8 matrices and compared with the f32 export.

use std::path::Path;
use std::time::Instant;

use crate::data::{Cohort, TUMOR};
use crate::error::Result;
use crate::export::{export, training_statistics, ExportMetadata};
use crate::model::Network;
use crate::training::SlideEval;

/// Step 3 of the demo: export MS-CLAM and stream the test slides through the engine, strip
/// by strip, checking the engine against the trainer.
pub fn stream_through_engine(
    net: &Network,
    data: &Cohort,
    evals: &[SlideEval],
    dir: &Path,
    strip_tiles: usize,
) -> Result<()> {
    use msclam_engine::{Model, SlideSession};
    let model_path = dir.join("model.mscl");
    export(
        net,
        &model_path,
        &ExportMetadata {
            embedder_name: "synthetic".into(),
            training_summary: "msclam demo".into(),
            statistics: Some(training_statistics(data, &data.train)?),
            ..Default::default()
        },
    )?;
    let model = std::sync::Arc::new(Model::load(&model_path)?);
    let capacity = data
        .test
        .iter()
        .map(|&i| data.slides[i].num_tiles)
        .max()
        .unwrap_or(1);
    let mut session = SlideSession::new(model, capacity)?;
    let (mut streamed, mut worst) = (0usize, 0.0f64);
    let mut outside: Vec<f32> = Vec::new();
    let stream_started = Instant::now();
    for (k, e) in evals.iter().enumerate() {
        let s = &data.slides[e.slide];
        let features =
            Vec::<f32>::try_from(s.features_f32().to_device(tch::Device::Cpu).view([-1]))?;
        session.reset();
        let mut scores = Vec::new();
        for (strip, coords) in features
            .chunks(strip_tiles * data.dim)
            .zip(s.coords.chunks(strip_tiles))
        {
            scores.extend(session.push(strip, Some(coords))?.slide_tumor_probability);
        }
        let r = session.finalize()?;
        outside.extend(r.out_of_distribution_fraction);
        worst = worst.max((r.tumor_probability as f64 - e.probabilities[TUMOR]).abs());
        for (a, b) in r.tile_probabilities.iter().zip(&e.tile_probabilities) {
            worst = worst.max((a - b).abs() as f64);
        }
        streamed += s.num_tiles;
        if k == 0 {
            let shown: Vec<String> = scores.iter().map(|p| format!("{p:.3}")).collect();
            println!("[3/4] engine, slide {} (label {}), slide P(tumor) after each strip of {strip_tiles}: {}", s.id, s.label, shown.join(" "));
        }
    }
    let secs = stream_started.elapsed().as_secs_f64();
    println!(
        "      streamed {} test slides ({streamed} tiles) through {} in {secs:.2} s ({:.0} tiles/s); largest difference from the trainer: {worst:.1e}",
        evals.len(),
        model_path.display(),
        streamed as f64 / secs
    );
    if !outside.is_empty() {
        let mean = outside.iter().sum::<f32>() / outside.len() as f32;
        let max = outside.iter().copied().fold(0.0f32, f32::max);
        println!(
            "      out-of-distribution tiles (embedding statistics of the training slides): mean share {mean:.4}, largest {max:.4} (scores are not to be trusted above {})",
            msclam_engine::statistics::UNTRUSTED_FRACTION
        );
    }
    compare_half_precision(net, data, evals, dir, &model_path, capacity)
}

/// The demo's MS-CLAM exported with bf16, f16 and int8 matrices, against the f32 export on
/// every test slide: largest differences, tiles that change side of the mask threshold,
/// slides that change class. bf16 with every kernel the CPU has: widened to f32, and dot
/// products on AVX-512 BF16 and on the AMX tiles.
pub fn compare_half_precision(
    net: &Network,
    data: &Cohort,
    evals: &[SlideEval],
    dir: &Path,
    f32_path: &Path,
    capacity: usize,
) -> Result<()> {
    use msclam_engine::{format::Dtype, Isa, Model, SessionOptions, SlideSession};
    let f32_model = std::sync::Arc::new(Model::load(f32_path)?);
    let mut reference = SlideSession::new(f32_model, capacity)?;
    let best = Isa::detect();
    for (dtype, name, bf16_dot, isa) in [
        (Dtype::Bf16, "bf16", false, best),
        (Dtype::Bf16, "bf16", true, Isa::Avx512),
        (Dtype::Bf16, "bf16", true, Isa::Amx),
        (Dtype::F16, "f16", false, best),
        (Dtype::Int8, "int8", false, best),
    ] {
        if !isa.is_supported() {
            continue;
        }
        let path = dir.join(format!("model_{name}.mscl"));
        export(
            net,
            &path,
            &ExportMetadata {
                embedder_name: "synthetic".into(),
                training_summary: format!("msclam demo ({name})"),
                dtype: Some(dtype),
                ..Default::default()
            },
        )?;
        let model = std::sync::Arc::new(Model::load(&path)?);
        let options = SessionOptions {
            bf16_dot,
            isa,
            ..SessionOptions::default()
        };
        let mut session = SlideSession::with_options(model, capacity, options)?;
        if session.uses_bf16_dot() != bf16_dot {
            continue;
        }
        let (mut tile_worst, mut slide_worst, mut flips, mut class_changes, mut tiles) =
            (0.0f64, 0.0f64, 0usize, 0usize, 0usize);
        for e in evals {
            let s = &data.slides[e.slide];
            let features =
                Vec::<f32>::try_from(s.features_f32().to_device(tch::Device::Cpu).view([-1]))?;
            reference.reset();
            reference.push(&features, None)?;
            session.reset();
            session.push(&features, None)?;
            let (a, b) = (reference.finalize()?, session.finalize()?);
            slide_worst = slide_worst.max((a.tumor_probability - b.tumor_probability).abs() as f64);
            class_changes += usize::from(a.predicted_class != b.predicted_class);
            for ((p, q), (m, n)) in a
                .tile_probabilities
                .iter()
                .zip(b.tile_probabilities)
                .zip(a.tile_mask.iter().zip(b.tile_mask))
            {
                tile_worst = tile_worst.max((p - q).abs() as f64);
                flips += usize::from(m != n);
            }
            tiles += s.num_tiles;
        }
        let kernels = match (dtype, bf16_dot, isa) {
            (Dtype::Int8, _, _) => "integer kernels, inputs quantized per tile",
            (_, true, Isa::Amx) => "AMX tile dot products",
            (_, true, _) => "AVX-512 BF16 dot products",
            _ => "widened to f32",
        };
        println!(
            "      {name} weights ({kernels}) against f32 on the {} test slides: largest tile probability difference {tile_worst:.1e}, slide {slide_worst:.1e}; {flips} of {tiles} tiles change side of the mask threshold; {class_changes} slides change class",
            evals.len()
        );
    }
    Ok(())
}
