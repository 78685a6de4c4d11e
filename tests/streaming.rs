//! The streaming session against the plain f64 reference: correctness, chunking and
//! permutation invariance, extreme attention, single tiles, determinism, every model size and
//! every instruction set this CPU has.

mod common;

use std::sync::Arc;

use common::{assert_rel, model_of, random_model, strips};
use msclam::{random_weights, synthetic_slide};
use msclam_engine::{
    reference, AttentionKind, Error, Isa, Model, ModelConfig, ModelSize, SessionOptions,
    SlideSession, SmallStripSplit, TileClassifierKind,
};
use proptest::prelude::*;

const REL: f64 = 1e-5;

fn arb_config() -> impl Strategy<Value = ModelConfig> {
    (
        1usize..48,
        1usize..40,
        1usize..24,
        2usize..5,
        any::<bool>(),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(d, h, k, c, gated, per_class, tumor)| ModelConfig {
            input_dim: d,
            hidden_dim: h,
            attention_dim: k,
            attention: if gated {
                AttentionKind::Gated
            } else {
                AttentionKind::Plain
            },
            num_classes: c,
            tile_classifier: if per_class {
                TileClassifierKind::PerClass
            } else {
                TileClassifierKind::SingleBinary
            },
            tumor_class: tumor.index(c),
            threshold: 0.5,
        })
}

/// Streams `emb` in `sizes`-strips, checking after each push that the current slide
/// probabilities equal the reference over the prefix, then checks every final output.
fn check_streaming(config: ModelConfig, seed: u64, n: usize, sizes: &[usize], isa: Isa) {
    let (weights, model) = random_model(config, seed);
    let d = config.input_dim;
    let (emb, coords, _) = synthetic_slide(d, n, 0.2, seed ^ 0x5eed);
    let mut session = SlideSession::with_isa(model, n, isa).unwrap();
    for strip in strips(n, sizes) {
        let pushed = session
            .push(
                &emb[strip.start * d..strip.end * d],
                Some(&coords[strip.clone()]),
            )
            .unwrap();
        assert_eq!(
            (pushed.first_tile, pushed.tiles),
            (strip.start, strip.len())
        );
        let prefix = reference::forward(&weights, &emb[..strip.end * d]);
        let current = session.slide_probabilities().unwrap();
        for (c, want) in prefix.slide_probabilities.iter().enumerate() {
            assert_rel(
                current[c] as f64,
                *want,
                REL,
                &format!("slide prob {c} after {} tiles", strip.end),
            );
        }
        assert_eq!(
            pushed.slide_tumor_probability,
            Some(current[config.tumor_class])
        );
    }
    let want = reference::forward(&weights, &emb);
    let result = session.finalize().unwrap();
    for i in 0..n {
        assert_rel(
            result.tile_probabilities[i] as f64,
            want.tile_probabilities[i],
            REL,
            &format!("tile {i} prob"),
        );
        assert_rel(
            result.attention[i] as f64,
            want.attention[i],
            REL,
            &format!("tile {i} attention"),
        );
        // Logits can sit near zero (cancellation): bound them absolutely, relatively when large.
        let (got, want_logit) = (result.attention_logits[i] as f64, want.attention_logits[i]);
        assert!(
            (got - want_logit).abs() <= 1e-5 * (1.0 + want_logit.abs()),
            "tile {i} logit {got} vs {want_logit}"
        );
        assert_eq!(
            result.tile_mask[i],
            u8::from(result.tile_probabilities[i] >= config.threshold)
        );
    }
    for (c, want) in want.slide_logits.iter().enumerate() {
        assert!(
            (result.slide_logits[c] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "slide logit {c}"
        );
    }
    assert_eq!(result.coordinates.unwrap(), &coords[..]);
    let sum: f64 = result.attention.iter().map(|a| *a as f64).sum();
    assert!((sum - 1.0).abs() < 1e-5, "attention sums to {sum}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn streaming_equals_reference_for_any_dims_weights_and_chunking(
        config in arb_config(),
        seed in any::<u64>(),
        n in 1usize..140,
        sizes in prop::collection::vec(1usize..70, 1..6),
    ) {
        check_streaming(config, seed, n, &sizes, Isa::detect());
    }

    #[test]
    fn chunking_changes_nothing_beyond_rounding(
        config in arb_config(),
        seed in any::<u64>(),
        n in 1usize..200,
        sizes_a in prop::collection::vec(1usize..90, 1..5),
        sizes_b in prop::collection::vec(1usize..90, 1..5),
    ) {
        let (_, model) = random_model(config, seed);
        let d = config.input_dim;
        let (emb, _, _) = synthetic_slide(d, n, 0.1, seed);
        let run = |sizes: &[usize]| {
            let mut s = SlideSession::new(model.clone(), n).unwrap();
            for strip in strips(n, sizes) {
                s.push(&emb[strip.start * d..strip.end * d], None).unwrap();
            }
            let r = s.finalize().unwrap();
            (r.tile_probabilities.to_vec(), r.attention_logits.to_vec(), r.attention.to_vec(), r.slide_probabilities.to_vec())
        };
        let (pa, la, aa, sa) = run(&sizes_a);
        let (pb, lb, ab, sb) = run(&sizes_b);
        // Per-tile outputs do not depend on the strip a tile came in: bit-identical.
        prop_assert_eq!(pa, pb);
        prop_assert_eq!(la, lb);
        // The aggregate differs only by the order of f64 rescaling: far below f32 resolution.
        for (a, b) in aa.iter().zip(&ab) { assert_rel(*a as f64, *b as f64, 1e-6, "attention"); }
        for (a, b) in sa.iter().zip(&sb) { assert_rel(*a as f64, *b as f64, 1e-6, "slide prob"); }
    }

    #[test]
    fn permuting_tiles_keeps_the_slide_score(
        config in arb_config(),
        seed in any::<u64>(),
        n in 1usize..150,
        chunk in 1usize..40,
    ) {
        let (_, model) = random_model(config, seed);
        let d = config.input_dim;
        let (emb, _, _) = synthetic_slide(d, n, 0.3, seed);
        // A deterministic permutation: reverse, then rotate.
        let order: Vec<usize> = (0..n).rev().cycle().skip(seed as usize % n).take(n).collect();
        let permuted: Vec<f32> = order.iter().flat_map(|&i| emb[i * d..(i + 1) * d].iter().copied()).collect();
        let score = |e: &[f32]| {
            let mut s = SlideSession::new(model.clone(), n).unwrap();
            for strip in strips(n, &[chunk]) {
                s.push(&e[strip.start * d..strip.end * d], None).unwrap();
            }
            let r = s.finalize().unwrap();
            (r.slide_probabilities.to_vec(), r.attention.to_vec(), r.tile_probabilities.to_vec())
        };
        let (sp, sa, st) = score(&emb);
        let (pp, pa, pt) = score(&permuted);
        for (a, b) in sp.iter().zip(&pp) { assert_rel(*a as f64, *b as f64, 1e-6, "slide prob"); }
        for (j, &i) in order.iter().enumerate() {
            prop_assert_eq!(st[i], pt[j]);
            assert_rel(sa[i] as f64, pa[j] as f64, 1e-6, "attention");
        }
    }
}

#[test]
fn every_model_size_and_variant_matches_the_reference() {
    let mut configs = Vec::new();
    for size in [ModelSize::Small, ModelSize::Big, ModelSize::Tiny] {
        configs.push(ModelConfig::ms_clam(size));
        configs.push(ModelConfig::clam_sb(size));
    }
    configs.push(ModelConfig::ms_clam(ModelSize::Small).with_input_dim(1536));
    configs.push(ModelConfig {
        attention: AttentionKind::Plain,
        ..ModelConfig::ms_clam(ModelSize::Small)
    });
    for (i, config) in configs.into_iter().enumerate() {
        check_streaming(config, 100 + i as u64, 150, &[1, 7, 64, 33], Isa::detect());
    }
}

#[test]
fn every_instruction_set_of_this_cpu_matches_the_reference() {
    for isa in Isa::all_supported() {
        check_streaming(
            ModelConfig::ms_clam(ModelSize::Tiny),
            7,
            200,
            &[13, 64, 1],
            isa,
        );
        check_streaming(
            ModelConfig::clam_sb(ModelSize::Tiny).with_input_dim(77),
            8,
            90,
            &[90],
            isa,
        );
    }
}

#[test]
fn attention_logits_of_ten_thousand_stay_finite_and_correct() {
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let mut weights = random_weights(config, 3);
    // Scale the attention output so logits span about +-1e4.
    let d = config.input_dim;
    let (emb, _, _) = synthetic_slide(d, 120, 0.2, 4);
    let probe = reference::forward(&weights, &emb);
    let spread = probe
        .attention_logits
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = (1e4 / spread) as f32;
    weights
        .attention_c_weight
        .iter_mut()
        .for_each(|w| *w *= scale);
    let model = model_of(&weights);
    let want = reference::forward(&weights, &emb);
    let max_logit = want
        .attention_logits
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(max_logit > 5e3, "logits reach {max_logit}");
    // Increasing then decreasing order exercises both rescaling directions.
    for sizes in [[1usize, 5, 17], [64, 64, 64]] {
        let mut session = SlideSession::new(model.clone(), 120).unwrap();
        for strip in strips(120, &sizes) {
            session
                .push(&emb[strip.start * d..strip.end * d], None)
                .unwrap();
        }
        let r = session.finalize().unwrap();
        assert!(
            r.attention.iter().all(|a| a.is_finite())
                && r.slide_probabilities.iter().all(|p| p.is_finite())
        );
        for i in 0..120 {
            assert!(
                (r.attention[i] as f64 - want.attention[i]).abs() < 1e-6,
                "attention {i}"
            );
        }
        for (c, p) in want.slide_probabilities.iter().enumerate() {
            assert!(
                (r.slide_probabilities[c] as f64 - p).abs() < 1e-5,
                "slide prob {c}"
            );
        }
    }
}

#[test]
fn a_single_tile_slide_works() {
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let (weights, model) = random_model(config, 11);
    let (emb, _, _) = synthetic_slide(config.input_dim, 1, 0.0, 12);
    let mut session = SlideSession::new(model, 1).unwrap();
    session.push(&emb, None).unwrap();
    let want = reference::forward(&weights, &emb);
    let r = session.finalize().unwrap();
    assert_eq!(r.attention, &[1.0]);
    assert_rel(
        r.tile_probabilities[0] as f64,
        want.tile_probabilities[0],
        REL,
        "tile prob",
    );
    assert_rel(
        r.slide_probabilities[1] as f64,
        want.slide_probabilities[1],
        REL,
        "slide prob",
    );
}

#[test]
fn same_inputs_give_bit_identical_outputs_run_after_run() {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let bytes_a = msclam_engine::format::ModelWriter::new(&random_weights(config, 5))
        .to_bytes()
        .unwrap();
    let bytes_b = msclam_engine::format::ModelWriter::new(&random_weights(config, 5))
        .to_bytes()
        .unwrap();
    assert_eq!(bytes_a, bytes_b, "the writer is deterministic");
    let (emb, _, _) = synthetic_slide(config.input_dim, 300, 0.1, 6);
    let run = || {
        let model = Arc::new(Model::from_bytes(&bytes_a).unwrap());
        let mut s = SlideSession::new(model, 300).unwrap();
        let mut after_each = Vec::new();
        for strip in strips(300, &[1, 7, 64, 100]) {
            after_each.push(
                s.push(&emb[strip.start * 1024..strip.end * 1024], None)
                    .unwrap()
                    .slide_tumor_probability
                    .unwrap()
                    .to_bits(),
            );
        }
        let r = s.finalize().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        (
            after_each,
            bits(r.slide_logits),
            bits(r.attention),
            bits(r.tile_probabilities),
        )
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(run(), first);
    }
}

/// Everything a slide gives, as bits: the score after each push, then the finalized outputs.
fn stream_bits(s: &mut SlideSession<'_>, emb: &[f32], d: usize, sizes: &[usize]) -> Vec<u32> {
    s.reset();
    let n = emb.len() / d;
    let mut bits = Vec::new();
    for strip in strips(n, sizes) {
        let pushed = s.push(&emb[strip.start * d..strip.end * d], None).unwrap();
        bits.push(pushed.slide_tumor_probability.unwrap().to_bits());
    }
    let r = s.finalize().unwrap();
    for v in [
        r.slide_logits,
        r.attention,
        r.attention_logits,
        r.tile_probabilities,
    ] {
        bits.extend(v.iter().map(|x| x.to_bits()));
    }
    bits
}

#[test]
fn any_thread_count_gives_bit_identical_results_and_matches_the_reference() {
    for config in [
        ModelConfig::ms_clam(ModelSize::Small),
        ModelConfig::clam_sb(ModelSize::Tiny),
    ] {
        let d = config.input_dim;
        let (weights, model) = random_model(config, 21);
        let n = 1500;
        let (emb, _, _) = synthetic_slide(d, n, 0.1, 22);
        let want = reference::forward(&weights, &emb);
        for isa in Isa::all_supported() {
            let one = SlideSession::with_isa(model.clone(), n, isa).unwrap();
            let mut one = one;
            for sizes in [&[1500][..], &[300, 1, 64, 129], &[64]] {
                let expected = stream_bits(&mut one, &emb, d, sizes);
                for threads in [2, 3, 5] {
                    let options = SessionOptions {
                        isa,
                        threads,
                        ..SessionOptions::default()
                    };
                    let mut many = SlideSession::with_options(model.clone(), n, options).unwrap();
                    let got = stream_bits(&mut many, &emb, d, sizes);
                    assert!(
                        got == expected,
                        "{isa:?}, {threads} threads, strips {sizes:?}"
                    );
                }
            }
            let mut many = SlideSession::with_options(
                model.clone(),
                n,
                SessionOptions {
                    isa,
                    threads: 2,
                    ..SessionOptions::default()
                },
            )
            .unwrap();
            many.push(&emb, None).unwrap();
            let r = many.finalize().unwrap();
            for i in (0..n).step_by(97) {
                assert_rel(r.attention[i] as f64, want.attention[i], REL, "attention");
                assert_rel(
                    r.tile_probabilities[i] as f64,
                    want.tile_probabilities[i],
                    REL,
                    "tile probability",
                );
            }
        }
    }
}

/// Strips of at most one block are split between the threads by output panels (each thread
/// computes a share of every layer): for every weight type, instruction set and thread count,
/// including layers of an odd number of panels and threads left without a share, the results
/// are the bits of one thread.
#[test]
fn strips_split_between_threads_give_the_bits_of_one_thread_for_every_weight_type() {
    let odd = ModelConfig {
        input_dim: 37,
        hidden_dim: 80,    // 5 panels
        attention_dim: 20, // 2 panels: a third thread gets none
        attention: AttentionKind::Gated,
        num_classes: 3,
        tile_classifier: TileClassifierKind::PerClass,
        tumor_class: 1,
        threshold: 0.5,
    };
    let plain = ModelConfig {
        attention: AttentionKind::Plain,
        ..odd
    };
    for config in [ModelConfig::ms_clam(ModelSize::Small), odd, plain] {
        let d = config.input_dim;
        let weights = random_weights(config, 41);
        let n = 400;
        let (emb, _, _) = synthetic_slide(d, n, 0.1, 42);
        for (dtype, bf16_dot, _) in common::WEIGHT_VARIANTS {
            let bytes = msclam_engine::format::ModelWriter::new(&weights)
                .matrix_dtype(dtype)
                .to_bytes()
                .unwrap();
            let model = Arc::new(Model::from_bytes(&bytes).unwrap());
            for isa in Isa::all_supported() {
                let options = SessionOptions {
                    isa,
                    bf16_dot,
                    ..SessionOptions::default()
                };
                let mut one = SlideSession::with_options(model.clone(), n, options).unwrap();
                // Strips on both sides of the 16-bit switch (8, 9 tiles), of the kernels'
                // few-row path (16, 17) and of one block (128, 129).
                let sizes = [1, 3, 8, 9, 16, 17, 64, 128, 129, 1, 2];
                let expected = stream_bits(&mut one, &emb, d, &sizes);
                // Split always, or never (one-block strips on the calling thread, blocks of
                // longer ones on the workers).
                for (threads, small_strips) in [
                    (2, SmallStripSplit::Always),
                    (3, SmallStripSplit::Always),
                    (4, SmallStripSplit::Always),
                    (2, SmallStripSplit::Never),
                ] {
                    let options = SessionOptions {
                        threads,
                        small_strips,
                        ..options
                    };
                    let mut many = SlideSession::with_options(model.clone(), n, options).unwrap();
                    let got = stream_bits(&mut many, &emb, d, &sizes);
                    assert!(
                        got == expected,
                        "{dtype:?} (dot {bf16_dot}) {isa:?}, {threads} threads {small_strips:?}, \
                         h {}",
                        config.hidden_dim
                    );
                }
            }
        }
    }
}

/// A bad tile in a strip split between threads: the error names it, and the session keeps
/// what it had and goes on to the same results.
#[test]
fn a_split_strip_with_a_bad_tile_changes_nothing() {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let d = config.input_dim;
    let (_, model) = random_model(config, 43);
    let (emb, _, _) = synthetic_slide(d, 60, 0.1, 44);
    let options = SessionOptions {
        threads: 2,
        small_strips: SmallStripSplit::Always,
        ..SessionOptions::default()
    };
    let mut clean = SlideSession::with_options(model.clone(), 60, options).unwrap();
    clean.push(&emb[..10 * d], None).unwrap();
    clean.push(&emb[10 * d..], None).unwrap();
    let mut s = SlideSession::with_options(model, 60, options).unwrap();
    s.push(&emb[..10 * d], None).unwrap();
    for (tile, value) in [
        (13usize, f32::NAN),
        (59, f32::INFINITY),
        (10, f32::NEG_INFINITY),
    ] {
        let mut strip = emb[10 * d..].to_vec();
        strip[(tile - 10) * d + 5] = value;
        let err = s.push(&strip, None).unwrap_err();
        assert!(
            matches!(err, Error::NonFiniteInput { tile: t, feature: 5, .. } if t == tile - 10),
            "{err}"
        );
        assert_eq!(s.len(), 10);
    }
    s.push(&emb[10 * d..], None).unwrap();
    assert_eq!(s.tile_probabilities(), clean.tile_probabilities());
    assert_eq!(
        s.tumor_probability().unwrap().to_bits(),
        clean.tumor_probability().unwrap().to_bits()
    );
}

/// `v` rounded to the nearest bf16 (ties to even), as f32.
fn round_bf16(v: f32) -> f32 {
    let bits = v.to_bits();
    f32::from_bits(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16)
}

#[test]
fn a_bf16_model_matches_the_reference_over_its_rounded_weights() {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let d = config.input_dim;
    let weights = random_weights(config, 31);
    let bytes = msclam_engine::format::ModelWriter::new(&weights)
        .matrix_dtype(msclam_engine::format::Dtype::Bf16)
        .to_bytes()
        .unwrap();
    let model = Arc::new(Model::from_bytes(&bytes).unwrap());
    assert_eq!(model.weight_dtype(), msclam_engine::format::Dtype::Bf16);
    let mut rounded = weights.clone();
    for m in [
        &mut rounded.fc_weight,
        &mut rounded.attention_a_weight,
        &mut rounded.attention_b_weight,
    ] {
        m.iter_mut().for_each(|v| *v = round_bf16(*v));
    }
    let n = 700;
    let (emb, _, _) = synthetic_slide(d, n, 0.1, 32);
    let want = reference::forward(&rounded, &emb);
    for isa in Isa::all_supported() {
        for bf16_dot in [false, true] {
            let options = SessionOptions {
                isa,
                threads: 1,
                bf16_dot,
                ..SessionOptions::default()
            };
            let mut s = SlideSession::with_options(model.clone(), n, options).unwrap();
            for strip in strips(n, &[1, 64, 300]) {
                s.push(&emb[strip.start * d..strip.end * d], None).unwrap();
            }
            let dot = s.uses_bf16_dot();
            assert_eq!(
                dot,
                bf16_dot
                    && matches!(isa, Isa::Avx512 | Isa::Amx)
                    && is_x86_feature_detected!("avx512bf16")
            );
            let r = s.finalize().unwrap();
            // Widened bf16 weights are exact: the f32 tolerance. The dot products also round
            // every input and hidden value to bf16 (8 significant bits).
            let (rel, abs_prob) = if dot { (3e-2, 1e-2) } else { (REL, 1e-6) };
            for i in 0..n {
                let (got, w) = (r.attention_logits[i] as f64, want.attention_logits[i]);
                assert!(
                    (got - w).abs() <= rel * (1.0 + w.abs()),
                    "{isa:?} dot {dot}: logit {i}: {got} vs {w}"
                );
                let (got, w) = (r.tile_probabilities[i] as f64, want.tile_probabilities[i]);
                assert!(
                    (got - w).abs() <= abs_prob + REL * w,
                    "{isa:?} dot {dot}: tile probability {i}: {got} vs {w}"
                );
            }
            for (c, p) in want.slide_probabilities.iter().enumerate() {
                let got = r.slide_probabilities[c] as f64;
                assert!(
                    (got - p).abs() <= abs_prob + REL,
                    "{isa:?} dot {dot}: slide {got} vs {p}"
                );
            }
        }
    }
}

#[test]
fn an_f16_model_matches_the_reference_over_its_rounded_weights() {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let d = config.input_dim;
    let weights = random_weights(config, 33);
    let bytes = msclam_engine::format::ModelWriter::new(&weights)
        .matrix_dtype(msclam_engine::format::Dtype::F16)
        .to_bytes()
        .unwrap();
    let model = Arc::new(Model::from_bytes(&bytes).unwrap());
    assert_eq!(model.weight_dtype(), msclam_engine::format::Dtype::F16);
    // The f16 values of the large matrices, as the engine loads them.
    use msclam_engine::format::TensorId;
    let (h, k) = (config.hidden_dim, config.attention_dim);
    let mut rounded = weights.clone();
    for (m, id, rows, cols) in [
        (&mut rounded.fc_weight, TensorId::FcWeight, h, d),
        (
            &mut rounded.attention_a_weight,
            TensorId::AttentionAWeight,
            k,
            h,
        ),
        (
            &mut rounded.attention_b_weight,
            TensorId::AttentionBWeight,
            k,
            h,
        ),
    ] {
        let widened = model.tensor_values(id).unwrap();
        *m = msclam_engine::kernels::unpack_panels(widened, rows, cols);
    }
    let n = 500;
    let (emb, _, _) = synthetic_slide(d, n, 0.1, 34);
    let want = reference::forward(&rounded, &emb);
    for isa in Isa::all_supported() {
        let mut s = SlideSession::with_isa(model.clone(), n, isa).unwrap();
        for strip in strips(n, &[1, 64, 300]) {
            s.push(&emb[strip.start * d..strip.end * d], None).unwrap();
        }
        let r = s.finalize().unwrap();
        for i in 0..n {
            assert_rel(
                r.attention[i] as f64,
                want.attention[i],
                REL,
                "f16 attention",
            );
            assert_rel(
                r.tile_probabilities[i] as f64,
                want.tile_probabilities[i],
                REL,
                "f16 tile probability",
            );
        }
    }
}

/// Blocks of a few tiles read 16-bit weights as such, larger blocks their f32 copies: the same
/// values and operations, so a tile's results do not depend on the strip it came in.
#[test]
fn sixteen_bit_models_give_the_same_bits_at_every_strip_size() {
    use msclam_engine::format::Dtype;
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let d = config.input_dim;
    let weights = random_weights(config, 37);
    let n = 300;
    let (emb, _, _) = synthetic_slide(d, n, 0.1, 38);
    for dtype in [Dtype::Bf16, Dtype::F16] {
        let bytes = msclam_engine::format::ModelWriter::new(&weights)
            .matrix_dtype(dtype)
            .to_bytes()
            .unwrap();
        let model = Arc::new(Model::from_bytes(&bytes).unwrap());
        for isa in Isa::all_supported() {
            let run = |cuts: &[usize]| {
                let mut s = SlideSession::with_isa(model.clone(), n, isa).unwrap();
                for strip in strips(n, cuts) {
                    s.push(&emb[strip.start * d..strip.end * d], None).unwrap();
                }
                (
                    s.tile_probabilities().to_vec(),
                    s.attention_logits().to_vec(),
                )
            };
            let whole = run(&[n]);
            // Both sides of each instruction set's switch to the f32 copies (8 and 9 tiles).
            for cuts in [&[1usize][..], &[3, 5, 7], &[8, 1, 130], &[9, 16, 8, 17]] {
                assert!(run(cuts) == whole, "{dtype:?} {isa:?} strips {cuts:?}");
            }
        }
    }
}

#[test]
fn an_int8_model_is_identical_on_every_isa_and_close_to_the_reference_over_its_weights() {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let d = config.input_dim;
    let weights = random_weights(config, 35);
    let bytes = msclam_engine::format::ModelWriter::new(&weights)
        .matrix_dtype(msclam_engine::format::Dtype::Int8)
        .to_bytes()
        .unwrap();
    let model = Arc::new(Model::from_bytes(&bytes).unwrap());
    assert_eq!(model.weight_dtype(), msclam_engine::format::Dtype::Int8);
    // The dequantized large matrices, as the engine reports them.
    use msclam_engine::format::TensorId;
    let (h, k) = (config.hidden_dim, config.attention_dim);
    let mut dequantized = weights.clone();
    for (m, id, rows, cols) in [
        (&mut dequantized.fc_weight, TensorId::FcWeight, h, d),
        (
            &mut dequantized.attention_a_weight,
            TensorId::AttentionAWeight,
            k,
            h,
        ),
        (
            &mut dequantized.attention_b_weight,
            TensorId::AttentionBWeight,
            k,
            h,
        ),
    ] {
        let values = model.tensor_values(id).unwrap();
        *m = msclam_engine::kernels::unpack_panels(values, rows, cols);
        // Each weight within half a quantization step of the original (scale = max / 127).
        for (row, (q, w)) in m
            .chunks(cols)
            .zip(weights_of(&weights, id).chunks(cols))
            .enumerate()
        {
            let step = w.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
            for (a, b) in q.iter().zip(w) {
                assert!(
                    (a - b).abs() <= step * 0.5001,
                    "{id:?} row {row}: {a} vs {b}"
                );
            }
        }
    }
    let n = 500;
    let (emb, _, _) = synthetic_slide(d, n, 0.1, 36);
    let want = reference::forward(&dequantized, &emb);
    let mut first: Option<(Vec<f32>, Vec<f32>, Vec<f32>)> = None;
    for isa in Isa::all_supported() {
        for (threads, cuts) in [(1, &[1usize, 64, 300][..]), (2, &[500][..])] {
            let options = SessionOptions {
                isa,
                threads,
                bf16_dot: false,
                ..SessionOptions::default()
            };
            let mut s = SlideSession::with_options(model.clone(), n, options).unwrap();
            for strip in strips(n, cuts) {
                s.push(&emb[strip.start * d..strip.end * d], None).unwrap();
            }
            let r = s.finalize().unwrap();
            let got = (
                r.attention_logits.to_vec(),
                r.tile_probabilities.to_vec(),
                r.slide_probabilities.to_vec(),
            );
            match &first {
                None => first = Some(got),
                // Integer sums are exact and the rest is the same IEEE arithmetic: bit-identical.
                Some(f) => assert!(*f == got, "{isa:?}, {threads} threads differ"),
            }
            // Against the reference over the dequantized weights, the only difference is the
            // per-tile 8-bit quantization of the inputs and of the hidden layer.
            let mut worst = (0.0f64, 0.0f64);
            for i in 0..n {
                let dl = (r.attention_logits[i] as f64 - want.attention_logits[i]).abs();
                let dp = (r.tile_probabilities[i] as f64 - want.tile_probabilities[i]).abs();
                worst = (worst.0.max(dl), worst.1.max(dp));
            }
            assert!(
                worst.0 < 0.05 && worst.1 < 0.02,
                "{isa:?}: largest logit difference {}, tile probability {}",
                worst.0,
                worst.1
            );
            for (c, p) in want.slide_probabilities.iter().enumerate() {
                let got = r.slide_probabilities[c] as f64;
                assert!((got - p).abs() < 0.01, "{isa:?}: slide {got} vs {p}");
            }
        }
    }
}

/// The original values of a large matrix.
fn weights_of(w: &msclam_engine::ModelWeights, id: msclam_engine::format::TensorId) -> &[f32] {
    use msclam_engine::format::TensorId;
    match id {
        TensorId::FcWeight => &w.fc_weight,
        TensorId::AttentionAWeight => &w.attention_a_weight,
        _ => &w.attention_b_weight,
    }
}

#[test]
fn a_threaded_push_with_a_bad_tile_changes_nothing() {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let d = config.input_dim;
    let (_, model) = random_model(config, 23);
    let (mut emb, _, _) = synthetic_slide(d, 600, 0.1, 24);
    let options = SessionOptions {
        threads: 3,
        ..SessionOptions::default()
    };
    let mut s = SlideSession::with_options(model.clone(), 600, options).unwrap();
    s.push(&emb[..100 * d], None).unwrap();
    let before = (
        s.tumor_probability().unwrap(),
        s.tile_probabilities().to_vec(),
    );
    emb[450 * d + 3] = f32::NAN;
    let err = s.push(&emb[100 * d..], None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFiniteInput {
                tile: 350,
                feature: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.len(), 100);
    assert_eq!(s.tumor_probability().unwrap(), before.0);
    assert_eq!(s.tile_probabilities(), &before.1[..]);
    assert!(SlideSession::with_options(
        model.clone(),
        10,
        SessionOptions {
            threads: 0,
            ..options
        }
    )
    .is_err());
    assert!(SlideSession::with_options(
        model,
        10,
        SessionOptions {
            threads: 65,
            ..options
        }
    )
    .is_err());
}

/// The threads take a round's blocks as they become free, so a later block may be computed
/// first: the error must still name the first bad tile of the strip, and the session keep what
/// it had, in every round of a long strip. (Which block finishes first depends on timing: the
/// test cannot force the out-of-order case, only make it likely with bad tiles late in a round.)
#[test]
fn threads_report_the_first_bad_tile_whichever_block_they_computed_first() {
    let config = ModelConfig::clam_sb(ModelSize::Tiny);
    let d = config.input_dim;
    let (_, model) = random_model(config, 25);
    let n = 3000; // 24 blocks: 3 rounds of 8 blocks with 2 threads, 2 rounds of 12 with 3
    let (emb, _, _) = synthetic_slide(d, n, 0.1, 26);
    for threads in [2, 3] {
        let options = SessionOptions {
            threads,
            ..SessionOptions::default()
        };
        let mut clean = SlideSession::with_options(model.clone(), n, options).unwrap();
        clean.push(&emb, None).unwrap();
        // Bad tiles in a late block of a round and in an earlier one, then in a later round.
        for (bad_tiles, first_bad) in [
            (&[900usize, 150][..], 150usize),
            (&[2990, 1100][..], 1100),
            (&[2999][..], 2999),
        ] {
            let mut strip = emb.clone();
            for &t in bad_tiles {
                strip[t * d + 1] = f32::NAN;
            }
            let mut s = SlideSession::with_options(model.clone(), n, options).unwrap();
            let err = s.push(&strip, None).unwrap_err();
            assert!(
                matches!(err, Error::NonFiniteInput { tile, feature: 1, .. } if tile == first_bad),
                "{threads} threads, bad {bad_tiles:?}: {err}"
            );
            assert_eq!(s.len(), 0);
            s.push(&emb, None).unwrap();
            assert_eq!(s.tile_probabilities(), clean.tile_probabilities());
            assert_eq!(
                s.tumor_probability().unwrap().to_bits(),
                clean.tumor_probability().unwrap().to_bits()
            );
        }
    }
}

#[test]
fn reset_starts_a_clean_slide_in_the_same_memory() {
    let config = ModelConfig::clam_sb(ModelSize::Tiny);
    let (_, model) = random_model(config, 21);
    let d = config.input_dim;
    let (a, ca, _) = synthetic_slide(d, 50, 0.2, 22);
    let (b, _, _) = synthetic_slide(d, 70, 0.4, 23);
    let mut fresh = SlideSession::new(model.clone(), 100).unwrap();
    fresh.push(&b, None).unwrap();
    let want = fresh.finalize().unwrap().slide_probabilities.to_vec();
    let mut reused = SlideSession::new(model, 100).unwrap();
    reused.push(&a, Some(&ca)).unwrap();
    reused.finalize().unwrap();
    reused.reset();
    assert!(reused.is_empty() && reused.coordinates().is_none());
    reused.push(&b, None).unwrap(); // no coordinates is fine on the new slide
    assert_eq!(reused.finalize().unwrap().slide_probabilities, &want[..]);
}

#[test]
fn pushing_array_views_equals_pushing_slices() {
    use ndarray::{s, Array2};
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let (_, model) = random_model(config, 31);
    let d = config.input_dim;
    let (emb, coords, _) = synthetic_slide(d, 40, 0.2, 32);
    let mut by_slice = SlideSession::new(model.clone(), 40).unwrap();
    by_slice.push(&emb, Some(&coords)).unwrap();
    let array = ndarray::ArrayView2::from_shape((40, d), &emb).unwrap();
    let coord_array =
        Array2::from_shape_vec((40, 2), coords.iter().flatten().copied().collect()).unwrap();
    let mut by_view = SlideSession::new(model, 40).unwrap();
    // Row ranges of a standard-layout array are contiguous views.
    by_view
        .push_array(
            array.slice(s![..25, ..]),
            Some(coord_array.slice(s![..25, ..])),
        )
        .unwrap();
    by_view
        .push_array(
            array.slice(s![25.., ..]),
            Some(coord_array.slice(s![25.., ..])),
        )
        .unwrap();
    let a = by_slice.finalize().unwrap().tile_probabilities.to_vec();
    let r = by_view.finalize().unwrap();
    assert_eq!(r.tile_probabilities, &a[..]);
    assert_eq!(r.coordinates.unwrap(), &coords[..]);
    // Strided and column-major views are refused with a typed error (not copied behind the
    // caller's back, and never read through a slice spanning memory the view does not own).
    let mut wide = Array2::<f32>::zeros((4, d + 5));
    wide.slice_mut(s![.., ..d])
        .assign(&array.slice(s![..4, ..]));
    let before = by_view.len();
    let err = by_view
        .push_array(wide.slice(s![.., ..d]), None)
        .unwrap_err();
    assert!(
        matches!(err, msclam_engine::Error::UnsupportedLayout { .. }),
        "{err}"
    );
    use ndarray::ShapeBuilder;
    let column_major = Array2::from_shape_vec((3, d).f(), emb[..3 * d].to_vec()).unwrap();
    let err = by_view.push_array(column_major.view(), None);
    assert!(
        matches!(err, Err(msclam_engine::Error::UnsupportedLayout { .. })),
        "{err:?} {:?}",
        column_major.strides()
    );
    assert_eq!(by_view.len(), before);
}
