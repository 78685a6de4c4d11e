//! Tiles per second of a tile encoder run by tract-onnx on one thread (the batch run as
//! msclam_session_push_rgb runs it), for `scripts/bench-encoder`.
//!
//! ```text
//! encoder_speed ENCODER.onnx TILE_SIZE BATCH SECONDS
//! ```
//! Prints one line: `tract <tiles/s>`.

use msclam_onnx::{EncoderOptions, TileEncoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, size, batch, seconds] = args.as_slice() else {
        return Err("usage: encoder_speed ENCODER.onnx TILE_SIZE BATCH SECONDS".into());
    };
    let (size, batch, seconds): (usize, usize, f64) =
        (size.parse()?, batch.parse()?, seconds.parse()?);
    let mut encoder = TileEncoder::load(
        path,
        EncoderOptions {
            tile_size: size,
            batch,
            ..EncoderOptions::default()
        },
    )?;
    // Tiles like a scanner's: smooth colour fields with a little texture, never zeros.
    let rgb: Vec<u8> = (0..batch * size * size * 3)
        .map(|i| (96 + (i * 7919 % 97) + (i / (size * 3)) % 40) as u8)
        .collect();
    let mut embeddings = Vec::new();
    encoder.encode(&rgb, &mut embeddings)?; // warm-up
    let (start, mut tiles) = (std::time::Instant::now(), 0usize);
    while start.elapsed().as_secs_f64() < seconds {
        encoder.encode(&rgb, &mut embeddings)?;
        tiles += batch;
    }
    println!("tract {:.2}", tiles as f64 / start.elapsed().as_secs_f64());
    Ok(())
}
