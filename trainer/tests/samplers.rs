//! Slide samplers' statistics and the tile-batch composition for each kind of slide.

use msclam_trainer::data::{FeaturePrecision, Slide, NORMAL, TUMOR};
use msclam_trainer::model::ModelKind;
use msclam_trainer::samplers::{SamplerKind, SlideSampler, Step, TileSampling};
use tch::{Device, Kind, Tensor};

/// A slide with `n` tiles; `tumor` lists its tumor tiles; tile labels used in training when
/// `annotated`.
fn slide(id: usize, label: usize, n: usize, tumor: &[usize], annotated: bool) -> Slide {
    let mut reference = vec![0u8; n];
    for &t in tumor {
        reference[t] = 1;
    }
    let features = vec![0.5f32; n * 4];
    Slide::from_host(
        &format!("s{id}"),
        label,
        &features,
        4,
        vec![[0, 0]; n],
        Some(reference),
        annotated,
        FeaturePrecision::F32,
        Device::Cpu,
    )
    .unwrap()
}

/// 6 normal slides, 4 tumor slides of which 2 annotated.
fn cohort() -> Vec<Slide> {
    let mut s: Vec<Slide> = (0..6).map(|i| slide(i, NORMAL, 10, &[], false)).collect();
    s.push(slide(6, TUMOR, 10, &[1, 2], true));
    s.push(slide(7, TUMOR, 10, &[3], true));
    s.push(slide(8, TUMOR, 10, &[4], false));
    s.push(slide(9, TUMOR, 10, &[5], false));
    s
}

#[test]
fn paired_sampling_covers_every_normal_slide_once_per_epoch() {
    let slides = cohort();
    let train: Vec<usize> = (0..10).collect();
    for kind in [SamplerKind::Double, SamplerKind::Ew] {
        let sampler = SlideSampler::new(kind, &slides, &train, 90.0, 0.9, 3);
        for epoch in 0..5 {
            let plan = sampler.epoch_plan(epoch);
            let mut normals: Vec<usize> = plan
                .iter()
                .map(|s| match s {
                    Step::Pair { tumor, normal } => {
                        assert_eq!(slides[*tumor].label, TUMOR);
                        *normal
                    }
                    Step::Single(_) => panic!("paired sampler gave a single step"),
                })
                .collect();
            normals.sort_unstable();
            assert_eq!(normals, vec![0, 1, 2, 3, 4, 5], "epoch {epoch}");
        }
        assert_eq!(
            sampler.epoch_plan(2),
            sampler.epoch_plan(2),
            "deterministic"
        );
        assert_ne!(
            sampler.epoch_plan(1),
            sampler.epoch_plan(2),
            "epochs differ"
        );
    }
}

#[test]
fn random_sampling_visits_every_training_slide_once() {
    let slides = cohort();
    let train: Vec<usize> = (0..10).collect();
    let sampler = SlideSampler::new(SamplerKind::Rand, &slides, &train, 90.0, 0.9, 5);
    let mut seen: Vec<usize> = sampler
        .epoch_plan(0)
        .iter()
        .map(|s| match s {
            Step::Single(i) => *i,
            Step::Pair { .. } => panic!("RandSamp gave a pair"),
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, train);
}

#[test]
fn ewsamp_weights_decay_for_43_epochs_then_become_uniform() {
    let slides = cohort();
    let train: Vec<usize> = (0..10).collect();
    let mut sampler = SlideSampler::new(SamplerKind::Ew, &slides, &train, 90.0, 0.9, 1);
    assert_eq!(sampler.weights(), &[90.0, 90.0, 1.0, 1.0]);
    let mut epochs = 0;
    while !sampler.decay_stopped() {
        sampler.end_epoch();
        epochs += 1;
        assert!(epochs < 100);
    }
    // 90 * 0.9^e <= 1 first holds at e = 43 (log 90 / log(1 / 0.9) = 42.7).
    assert_eq!(epochs, 43);
    assert_eq!(sampler.weights(), &[1.0; 4]);
    // Before decay, annotated slides are drawn about 90 / 182 of the time each.
    let fresh = SlideSampler::new(SamplerKind::Ew, &slides, &train, 90.0, 0.9, 1);
    let (mut annotated, mut total) = (0usize, 0usize);
    for epoch in 0..400 {
        for step in fresh.epoch_plan(epoch) {
            if let Step::Pair { tumor, .. } = step {
                total += 1;
                annotated += usize::from(tumor == 6 || tumor == 7);
            }
        }
    }
    let share = annotated as f64 / total as f64;
    assert!((share - 180.0 / 182.0).abs() < 0.01, "share {share}");
    // DoubleSamp: uniform.
    let double = SlideSampler::new(SamplerKind::Double, &slides, &train, 90.0, 0.9, 1);
    assert_eq!(double.weights(), &[1.0; 4]);
}

#[test]
fn ewsamp_without_tile_labels_is_doublesamp() {
    let slides: Vec<Slide> = (0..4)
        .map(|i| slide(i, if i < 2 { NORMAL } else { TUMOR }, 6, &[1], false))
        .collect();
    let sampler = SlideSampler::new(SamplerKind::Ew, &slides, &[0, 1, 2, 3], 90.0, 0.9, 1);
    assert_eq!(sampler.weights(), &[1.0, 1.0]);
    assert!(sampler.decay_stopped());
}

fn values(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

#[test]
fn tile_batches_for_each_kind_of_slide() {
    tch::manual_seed(0);
    let n = 40;
    let tumor_tiles: Vec<usize> = (10..16).collect(); // 6 tumor tiles
    let attention = Tensor::arange(n as i64, (Kind::Float, Device::Cpu)) / 1000.0; // tile i has attention rank i
    let ms = TileSampling {
        b_plus: 4,
        b_minus: 8,
        method: ModelKind::MsClam,
    };

    // Annotated tumor slide: min(B+, Ntum) = 4 true tumor tiles, 4 / 2 = 2 true normal tiles.
    let annotated = slide(0, TUMOR, n, &tumor_tiles, true);
    let b = ms.tumor_slide(&annotated, &attention);
    assert_eq!((b.positives, b.negatives), (4, 2));
    let (idx, lab) = (values(&b.indices), values(&b.labels));
    for (i, l) in idx.iter().zip(&lab) {
        assert_eq!(
            *l == 1,
            tumor_tiles.contains(&(*i as usize)),
            "tile {i} label {l}"
        );
    }
    // B+ above the number of tumor tiles is capped at Ntum.
    let big = TileSampling { b_plus: 1024, ..ms };
    let b = big.tumor_slide(&annotated, &attention);
    assert_eq!((b.positives, b.negatives), (6, 3));

    // Unannotated tumor slide: k = min(B-, N/2) = 8 top-attention as 1, k/2 = 4 lowest as 0.
    let plain = slide(1, TUMOR, n, &tumor_tiles, false);
    let b = ms.tumor_slide(&plain, &attention);
    assert_eq!((b.positives, b.negatives), (8, 4));
    let idx = values(&b.indices);
    assert_eq!(&idx[..8], &[39, 38, 37, 36, 35, 34, 33, 32]);
    assert_eq!(&idx[8..], &[0, 1, 2, 3]);

    // Normal slide in a paired step: exactly (positives - negatives) highest-attention tiles, label 0.
    let normal = slide(2, NORMAL, n, &[], false);
    let b = ms.normal_slide(&normal, &attention, Some(4));
    assert_eq!((b.positives, b.negatives), (0, 4));
    assert_eq!(values(&b.indices), vec![39, 38, 37, 36]);
    assert!(values(&b.labels).iter().all(|l| *l == 0));
    // Single-slide mode: min(B-, N/2) tiles.
    let b = ms.normal_slide(&normal, &attention, None);
    assert_eq!(b.negatives, 8);
    // The paired batch is balanced: 4 + 2 from the tumor slide, 4 - 2 = 2 from the normal one.
    let t = ms.tumor_slide(&annotated, &attention);
    let nb = ms.normal_slide(
        &normal,
        &attention,
        Some((t.positives - t.negatives) as usize),
    );
    assert_eq!(t.positives, t.negatives + nb.negatives);

    // CLAM: B- top as 1 and B- bottom as 0 for the slide's own class's classifier.
    let clam = TileSampling {
        method: ModelKind::ClamSb,
        ..ms
    };
    let b = clam.tumor_slide(&annotated, &attention); // tile labels are ignored by CLAM
    assert_eq!((b.positives, b.negatives, b.classifier), (8, 8, TUMOR));
    let b = clam.normal_slide(&normal, &attention, Some(3));
    assert_eq!((b.positives, b.negatives, b.classifier), (8, 8, NORMAL));
    // A tiny slide: k = N / 2.
    let tiny = slide(3, TUMOR, 5, &[1], false);
    let b = ms.tumor_slide(&tiny, &Tensor::arange(5, (Kind::Float, Device::Cpu)));
    assert_eq!((b.positives, b.negatives), (2, 1));
}
