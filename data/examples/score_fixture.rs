//! Writes a small generated CLAM cohort and a model with random weights for it under `DIR`
//! (`DIR/cohort`, `DIR/model.mscl`): what the test suite feeds to `msclam score` to prove it
//! runs without libtorch.
//!
//! `cargo run -p msclam-data --example score_fixture -- DIR`

use msclam_data::layout::write_synthetic;
use msclam_data::synthetic::{generate, SyntheticSpec};
use msclam_engine::format::ModelWriter;
use msclam_engine::{ModelConfig, ModelSize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: score_fixture DIR")?);
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let slides = generate(&SyntheticSpec {
        slides: 12,
        tiles_per_slide: 200,
        dim: config.input_dim,
        seed: 2,
        ..SyntheticSpec::default()
    });
    write_synthetic(&dir.join("cohort"), &slides, 1, 2)?;
    ModelWriter::new(&msclam::random_weights(config, 3)).write(dir.join("model.mscl"))?;
    println!(
        "wrote {} and {}",
        dir.join("cohort").display(),
        dir.join("model.mscl").display()
    );
    Ok(())
}
