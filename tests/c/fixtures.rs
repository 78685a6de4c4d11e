//! Writes the files the C tests read: a model written by the Rust writer, a slide, and what
//! the Rust engine computes for it (the C tests compare every output with these).
//!
//! `cargo run --release --example c_fixtures -- <dir>`

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use msclam::{random_weights, synthetic_slide};
use msclam_engine::format::{keys, Dtype, ModelWriter};
use msclam_engine::statistics::EmbeddingStatistics;
use msclam_engine::{Isa, Model, ModelConfig, ModelSize, SlideSession};

const TILES: usize = 300;
/// The C tests push in strips cycling through these sizes too.
const STRIPS: [usize; 4] = [1, 7, 64, 33];

fn write_f32(path: &Path, values: &[f32]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for v in values {
        f.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

/// Per-tile probabilities, attention logits, attention, slide probabilities and mask.
struct Outputs(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<u8>);

fn run(
    model: &Arc<Model>,
    emb: &[f32],
    coords: &[[u32; 2]],
    isa: Isa,
) -> Result<Outputs, msclam_engine::Error> {
    let d = model.config().input_dim;
    let mut s = SlideSession::with_isa(model.clone(), TILES, isa)?;
    let mut start = 0;
    for size in STRIPS.iter().cycle() {
        if start >= TILES {
            break;
        }
        let end = (start + size).min(TILES);
        s.push(&emb[start * d..end * d], Some(&coords[start..end]))?;
        start = end;
    }
    let r = s.finalize()?;
    Ok(Outputs(
        r.tile_probabilities.to_vec(),
        r.attention_logits.to_vec(),
        r.attention.to_vec(),
        r.slide_probabilities.to_vec(),
        r.tile_mask.to_vec(),
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: c_fixtures <dir>")?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let model_path = dir.join("model.mscl");
    ModelWriter::new(&random_weights(config, 1))
        .metadata(keys::EMBEDDER_NAME, "resnet50_trunc")?
        .metadata(keys::EMBEDDER_DIM, "1024")?
        .write(&model_path)?;
    // A small model for the tile encoder test (test_encoder.c): D 48, embedder "small_cnn".
    ModelWriter::new(&random_weights(
        ModelConfig::ms_clam(ModelSize::Tiny).with_input_dim(48),
        4,
    ))
    .metadata(keys::EMBEDDER_NAME, "small_cnn")?
    .write(dir.join("model_encoder.mscl"))?;
    // The same weights with bf16 matrices.
    ModelWriter::new(&random_weights(config, 1))
        .matrix_dtype(Dtype::Bf16)
        .write(dir.join("model_bf16.mscl"))?;
    // And with int8 matrices.
    ModelWriter::new(&random_weights(config, 1))
        .matrix_dtype(Dtype::Int8)
        .write(dir.join("model_int8.mscl"))?;
    // And with the embedding statistics of 20 other slides of the same generator.
    let stats = EmbeddingStatistics::fit::<msclam_engine::Error>(config.input_dim, 20, |i| {
        Ok(synthetic_slide(config.input_dim, TILES, 0.2, 10 + i as u64).0)
    })?;
    ModelWriter::new(&random_weights(config, 1))
        .embedding_statistics(stats)
        .write(dir.join("model_stats.mscl"))?;
    let model = Arc::new(Model::load(&model_path)?);
    let (emb, coords, _) = synthetic_slide(config.input_dim, TILES, 0.2, 2);
    write_f32(&dir.join("slide.f32"), &emb)?;
    std::fs::write(
        dir.join("coords.u32"),
        coords
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;

    let Outputs(probs, logits, attention, slide, mask) = run(&model, &emb, &coords, Isa::detect())?;
    write_f32(&dir.join("expected_tile_probs.f32"), &probs)?;
    write_f32(&dir.join("expected_attention_logits.f32"), &logits)?;
    write_f32(&dir.join("expected_attention.f32"), &attention)?;
    write_f32(&dir.join("expected_slide_probs.f32"), &slide)?;
    std::fs::write(dir.join("expected_mask.u8"), &mask)?;
    let Outputs(portable_probs, _, _, portable_slide, _) =
        run(&model, &emb, &coords, Isa::Portable)?;
    write_f32(
        &dir.join("expected_portable_tile_probs.f32"),
        &portable_probs,
    )?;
    write_f32(
        &dir.join("expected_portable_slide_probs.f32"),
        &portable_slide,
    )?;
    std::fs::write(
        dir.join("fixture.txt"),
        format!(
            "tiles {TILES}\ndim {}\nclasses {}\ntumor_class {}\nthreshold {}\n",
            config.input_dim, config.num_classes, config.tumor_class, config.threshold
        ),
    )?;
    println!(
        "fixtures written to {} ({} tiles, {} kernels)",
        dir.display(),
        TILES,
        Isa::detect().name()
    );
    Ok(())
}
