//! The main job until the trainer lands: write a generated MS-CLAM model to a `.mscl` file,
//! memory-map it, and stream a generated slide through a session strip by strip, the way a
//! scanner would, printing the slide score after each strip and the slide's result at the end.
//!
//! `cargo run --release --example stream_slide -- [tiles] [strip]` (defaults 6000 and 80).

use std::sync::Arc;
use std::time::Instant;

use msclam::{random_weights, synthetic_slide};
use msclam_engine::format::{keys, ModelWriter};
use msclam_engine::{Model, ModelConfig, ModelSize, SlideSession};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tiles: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(6000);
    let strip: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(80)
        .max(1);

    // 1. A model file, as the trainer would export it (random weights: no trained model yet).
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let dir = std::env::temp_dir().join(format!("msclam-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo.mscl");
    ModelWriter::new(&random_weights(config, 42))
        .metadata(keys::EMBEDDER_NAME, "resnet50_trunc (synthetic)")?
        .metadata(keys::EMBEDDER_DIM, "1024")?
        .metadata(keys::TILE_SIZE_PX, "256")?
        .metadata(keys::TILE_MAGNIFICATION, "20x")?
        .write(&path)?;

    // 2. Load it (memory-mapped, weights used in place) and make one session for the scanner.
    let model = Arc::new(Model::load(&path)?);
    let mut session = SlideSession::new(model.clone(), tiles)?;
    let memory = model.memory();
    println!(
        "model {}: D={} H={} K={}, {} bytes mapped ({} used in place), embedder {}",
        path.display(),
        config.input_dim,
        config.hidden_dim,
        config.attention_dim,
        memory.file_bytes,
        memory.in_place_bytes,
        model.metadata().get(keys::EMBEDDER_NAME).unwrap_or("?")
    );
    println!(
        "session: {} tiles capacity, {} bytes, {} kernels",
        session.capacity(),
        session.memory_used(),
        session.isa().name()
    );

    // 3. The scan: strips of tiles arrive in order; score each as it comes.
    let (embeddings, coords, _) = synthetic_slide(config.input_dim, tiles, 0.06, 7);
    let d = config.input_dim;
    let started = Instant::now();
    let strips = tiles.div_ceil(strip);
    for (i, start) in (0..tiles).step_by(strip).enumerate() {
        let end = (start + strip).min(tiles);
        let pushed = session.push(&embeddings[start * d..end * d], Some(&coords[start..end]))?;
        let new_probs = &session.tile_probabilities()[start..end];
        let max_tile = new_probs.iter().cloned().fold(0.0f32, f32::max);
        if i < 5 || i + 5 >= strips || i % (strips / 10).max(1) == 0 {
            println!(
                "strip {:>4}/{strips}: tiles {:>5}..{:<5} slide P(tumor) = {:.4}   max tile P(tumor) in strip = {:.3}",
                i + 1,
                start,
                end,
                pushed.slide_tumor_probability.unwrap_or(f32::NAN),
                max_tile
            );
        }
    }
    let result = session.finalize()?;
    let elapsed = started.elapsed();

    // 4. The end of the slide: class, mask, where the attention went.
    let mut top: Vec<usize> = (0..tiles).collect();
    top.sort_by(|a, b| result.attention[*b].total_cmp(&result.attention[*a]));
    println!(
        "slide: predicted class {} (P(tumor) = {:.4}), {} of {} tiles in the tumor mask (threshold {})",
        result.predicted_class,
        result.tumor_probability,
        result.tumor_tiles,
        tiles,
        model.threshold()
    );
    let coordinates = result.coordinates.unwrap_or(&[]);
    for &i in top.iter().take(3) {
        println!(
            "  high attention: tile {i} at {:?}: attention {:.5}, P(tumor) {:.3}",
            coordinates.get(i),
            result.attention[i],
            result.tile_probabilities[i]
        );
    }
    println!(
        "streamed {tiles} tiles in {strips} strips in {:.3} s ({:.0} tiles/s on one thread)",
        elapsed.as_secs_f64(),
        tiles as f64 / elapsed.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
