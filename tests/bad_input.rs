//! Bad input gives a typed error, never a panic, and never loses what was pushed before.

mod common;

use common::random_model;
use msclam::synthetic_slide;
use msclam_engine::{
    Error, Model, ModelConfig, ModelSize, SessionOptions, SlideSession, SmallStripSplit,
};

type Snapshot = (usize, Vec<f32>, Vec<f32>, Option<Vec<f32>>);

fn snapshot(s: &SlideSession<'_>) -> Snapshot {
    (
        s.len(),
        s.tile_probabilities().to_vec(),
        s.attention_logits().to_vec(),
        s.slide_probabilities().ok().map(|p| p.to_vec()),
    )
}

/// A session holding 10 tiles with coordinates, and the rest of the slide.
fn session_with_ten_tiles() -> (SlideSession<'static>, Vec<f32>, Vec<[u32; 2]>, usize) {
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let (_, model) = random_model(config, 1);
    let d = config.input_dim;
    let (emb, coords, _) = synthetic_slide(d, 20, 0.2, 2);
    let mut s = SlideSession::new(model, 20).unwrap();
    s.push(&emb[..10 * d], Some(&coords[..10])).unwrap();
    (s, emb, coords, d)
}

/// After the rejected push, the session is unchanged and the rest of the slide gives exactly
/// what a session that never saw the bad push gives.
fn assert_unchanged_and_usable(
    mut s: SlideSession<'static>,
    before: Snapshot,
    emb: &[f32],
    coords: &[[u32; 2]],
    d: usize,
) {
    assert_eq!(snapshot(&s), before);
    s.push(&emb[10 * d..], Some(&coords[10..])).unwrap();
    let mut clean = SlideSession::new(s.model().clone(), 20).unwrap();
    clean.push(&emb[..10 * d], Some(&coords[..10])).unwrap();
    clean.push(&emb[10 * d..], Some(&coords[10..])).unwrap();
    assert_eq!(s.finalize().unwrap(), clean.finalize().unwrap());
}

#[test]
fn wrong_embedding_length_is_rejected_and_nothing_is_lost() {
    let (mut s, emb, coords, d) = session_with_ten_tiles();
    let before = snapshot(&s);
    let err = s
        .push(&emb[10 * d..11 * d - 1], Some(&coords[10..11]))
        .unwrap_err();
    assert!(
        matches!(err, Error::EmbeddingLength { len, dim } if len == d - 1 && dim == d),
        "{err}"
    );
    assert!(err.to_string().contains("features per tile"));
    assert_unchanged_and_usable(s, before, &emb, &coords, d);
}

#[test]
fn nan_or_infinity_rejects_the_whole_push() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let (mut s, emb, coords, d) = session_with_ten_tiles();
        let before = snapshot(&s);
        let mut strip = emb[10 * d..20 * d].to_vec();
        strip[7 * d + 3] = bad; // tile 7 of the strip, feature 3: after six good tiles
        let err = s.push(&strip, Some(&coords[10..])).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFiniteInput {
                    tile: 7,
                    feature: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_unchanged_and_usable(s, before, &emb, &coords, d);
    }
}

#[test]
fn exceeding_capacity_is_rejected_and_nothing_is_lost() {
    let (mut s, emb, coords, d) = session_with_ten_tiles();
    let before = snapshot(&s);
    let too_many: Vec<f32> = emb[..d].iter().cycle().take(11 * d).copied().collect();
    let err = s.push(&too_many, Some(&coords[..11])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CapacityExceeded {
                capacity: 20,
                len: 10,
                requested: 11
            }
        ),
        "{err}"
    );
    assert_unchanged_and_usable(s, before, &emb, &coords, d);
}

#[test]
fn coordinate_mistakes_are_rejected_and_nothing_is_lost() {
    let (mut s, emb, coords, d) = session_with_ten_tiles();
    let before = snapshot(&s);
    let err = s
        .push(&emb[10 * d..12 * d], Some(&coords[10..11]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CoordinateCount {
                coords: 1,
                tiles: 2
            }
        ),
        "{err}"
    );
    let err = s.push(&emb[10 * d..12 * d], None).unwrap_err();
    assert!(
        matches!(err, Error::CoordinatesInconsistent { .. }),
        "{err}"
    );
    assert_unchanged_and_usable(s, before, &emb, &coords, d);
}

#[test]
fn overflowing_arithmetic_is_rejected_and_rolled_back() {
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let mut weights = msclam::random_weights(config, 5);
    weights
        .fc_weight
        .iter_mut()
        .for_each(|w| *w = w.abs() * 1e30); // finite weights...
    let model = common::model_of(&weights);
    let d = config.input_dim;
    // One thread, and strips split between 2 and 3 threads: the same tile is reported.
    for threads in [1, 2, 3] {
        let options = SessionOptions {
            threads,
            small_strips: SmallStripSplit::Always,
            ..SessionOptions::default()
        };
        let mut s = SlideSession::with_options(model.clone(), 10, options).unwrap();
        let small = vec![1e-35f32; d]; // ...that stay finite on tiny inputs
        s.push(&small, None).unwrap();
        let before = snapshot(&s);
        let mut strip = small.repeat(3);
        strip[d..2 * d].fill(1e10); // and overflow on large ones
        let err = s.push(&strip, None).unwrap_err();
        assert!(
            matches!(err, Error::NumericalOverflow { tile: 1 }),
            "{threads} threads: {err}"
        );
        assert_eq!(snapshot(&s), before);
        s.push(&small, None).unwrap();
        assert_eq!(s.len(), 2);
    }
}

#[test]
fn empty_sessions_have_no_slide_result() {
    let (_, model) = random_model(ModelConfig::ms_clam(ModelSize::Tiny), 3);
    let mut s = SlideSession::new(model.clone(), 5).unwrap();
    assert!(matches!(s.finalize(), Err(Error::EmptySession)));
    assert!(matches!(s.slide_probabilities(), Err(Error::EmptySession)));
    assert!(matches!(s.tumor_probability(), Err(Error::EmptySession)));
    // An empty push is not an error and changes nothing.
    assert_eq!(s.push(&[], None).unwrap().tiles, 0);
    assert!(matches!(s.finalize(), Err(Error::EmptySession)));
    assert!(matches!(
        SlideSession::new(model, 0),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn a_too_small_caller_buffer_is_rejected_with_the_size_needed() {
    let (_, model) = random_model(ModelConfig::ms_clam(ModelSize::Tiny), 4);
    let needed = SlideSession::memory_bytes(&model, 100).unwrap();
    // A 64-aligned buffer: allocate as u64 blocks and view as bytes.
    let mut storage = vec![0u64; needed / 8 + 16];
    let offset = (storage.as_ptr() as usize).next_multiple_of(64) - storage.as_ptr() as usize;
    let bytes: &mut [u8] = bytemuck_bytes(&mut storage);
    let aligned = &mut bytes[offset..];
    let err = SlideSession::in_buffer(model.clone(), 100, &mut aligned[..needed - 1]).unwrap_err();
    assert!(
        matches!(err, Error::BufferTooSmall { needed: n, given, .. } if n == needed && given == needed - 1),
        "{err}"
    );
    let s = SlideSession::in_buffer(model, 100, &mut aligned[..needed]).unwrap();
    assert_eq!(s.memory_used(), needed);
}

fn bytemuck_bytes(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers exactly the
    // u64 storage, borrowed mutably for the returned lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8) }
}

#[test]
fn memory_formula_is_as_documented_and_a_few_mb_for_100k_tiles() {
    let (_, model) = random_model(ModelConfig::ms_clam(ModelSize::Small), 6);
    let bytes = SlideSession::memory_bytes(&model, 100_000).unwrap();
    let (h, k, c) = (512usize, 256usize, 2usize);
    let r64 = |b: usize| b.div_ceil(64) * 64;
    let formula = r64(8 * h) * 2
        + r64(512 * h)
        + 2 * r64(512 * k)
        + 147_456
        + 4 * r64(8 * h)
        + 2 * r64(4 * c)
        + 3 * r64(4 * 100_000)
        + r64(8 * 100_000)
        + r64(100_000);
    assert_eq!(bytes, formula);
    assert!(bytes < 3 * 1024 * 1024, "{bytes} bytes");
}

#[test]
fn an_overflowing_slide_logit_is_rejected_and_rolled_back() {
    // Hidden values stay finite (~1e36) but the slide classifier's sum overflows f32.
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let mut weights = msclam::random_weights(config, 8);
    weights.fc_weight.iter_mut().for_each(|w| *w = 1.0);
    weights.classifier_weight.iter_mut().for_each(|w| *w = 1e3);
    let model = common::model_of(&weights);
    let d = config.input_dim;
    let mut s = SlideSession::new(model, 10).unwrap();
    s.push(&vec![0.5f32; d], None).unwrap();
    let before = snapshot(&s);
    let err = s.push(&vec![1e33f32; 2 * d], None).unwrap_err();
    assert!(matches!(err, Error::NumericalOverflow { .. }), "{err}");
    assert_eq!(snapshot(&s), before);
    assert!(s
        .slide_probabilities()
        .unwrap()
        .iter()
        .all(|p| p.is_finite()));
}

#[test]
fn absurd_capacities_are_errors_not_aborts() {
    let (_, model) = random_model(ModelConfig::ms_clam(ModelSize::Tiny), 9);
    for capacity in [usize::MAX, usize::MAX / 32, msclam_engine::MAX_CAPACITY + 1] {
        assert!(matches!(
            SlideSession::new(model.clone(), capacity),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(SlideSession::memory_bytes(&model, capacity).is_err());
    }
}

#[test]
fn a_fifo_or_a_directory_as_model_path_is_refused_without_blocking() {
    let dir = std::env::temp_dir().join(format!("msclam-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("model.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Opening a FIFO for reading would wait for a writer forever: refused before opening.
    for result in [Model::load(&fifo), Model::read(&fifo), Model::load(&dir)] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The forward pass checks the embeddings on the way (no pass of its own without embedding
/// statistics): a NaN or an infinity is named by tile and feature for every weight dtype,
/// kernel, thread count and with statistics, also in a later block of the strip, and the
/// rejected push leaves the session as a session that never saw it.
#[test]
fn non_finite_input_is_named_on_every_kernel_dtype_and_thread_count() {
    use msclam_engine::format::ModelWriter;
    use msclam_engine::statistics::EmbeddingStatistics;
    use msclam_engine::{Isa, SessionOptions};
    use std::sync::Arc;

    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let d = config.input_dim;
    let (emb, _, _) = synthetic_slide(d, 400, 0.2, 5);
    let statistics =
        EmbeddingStatistics::fit::<Error>(d, 1, |_| Ok(emb[..100 * d].to_vec())).unwrap();
    // A NaN whose payload carries into the sign bit when rounded to bf16 naively.
    let payload_nan = f32::from_bits(0x7FFF_FFFF);
    for (dtype, bf16_dot, with_statistics) in common::WEIGHT_VARIANTS {
        let weights = msclam::random_weights(config, 3);
        let mut writer = ModelWriter::new(&weights).matrix_dtype(dtype);
        if with_statistics {
            writer = writer.embedding_statistics(statistics.clone());
        }
        let model = Arc::new(Model::from_bytes(&writer.to_bytes().unwrap()).unwrap());
        for isa in Isa::all_supported() {
            for threads in [1, 2] {
                let options = SessionOptions {
                    isa,
                    threads,
                    bf16_dot,
                    ..SessionOptions::default()
                };
                let what = format!("{dtype:?} dot {bf16_dot} statistics {with_statistics} {isa:?} threads {threads}");
                let mut clean = SlideSession::with_options(model.clone(), 400, options).unwrap();
                clean.push(&emb[..400 * d], None).unwrap();
                for bad in [f32::NAN, payload_nan, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut s = SlideSession::with_options(model.clone(), 400, options).unwrap();
                    s.push(&emb[..100 * d], None).unwrap();
                    let before = snapshot(&s);
                    // Tile 200 of the strip: its second block of 128 tiles.
                    let mut strip = emb[100 * d..400 * d].to_vec();
                    strip[200 * d + 3] = bad;
                    let err = s.push(&strip, None).unwrap_err();
                    assert!(
                        matches!(
                            err,
                            Error::NonFiniteInput {
                                tile: 200,
                                feature: 3,
                                ..
                            }
                        ),
                        "{what}, {bad}: {err}"
                    );
                    assert_eq!(snapshot(&s), before, "{what}, {bad}");
                    s.push(&emb[100 * d..400 * d], None).unwrap();
                    assert_eq!(s.tile_probabilities(), clean.tile_probabilities(), "{what}");
                    assert_eq!(
                        s.tumor_probability().unwrap(),
                        clean.tumor_probability().unwrap(),
                        "{what}"
                    );
                }
            }
        }
    }
}
