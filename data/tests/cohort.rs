//! A fold in host memory: the split files `write_synthetic` writes are the rule of
//! `split::StratifiedSplit` (one rule for every route to a cohort), a generated cohort read
//! back from the CLAM layout is the one written, generated slides split in memory follow the
//! same rule with a validation fraction, and loading hands slides over one at a time.

use msclam_data::cohort::{self, Annotated, SplitSpec};
use msclam_data::layout::{self, ClamLayout};
use msclam_data::split::{StratifiedSplit, Validation};
use msclam_data::synthetic::{generate, SyntheticSlide, SyntheticSpec};
use msclam_data::TUMOR;

/// Debian's HDF5 is the serial (not thread-safe) build, and tests run in parallel threads of
/// one process: take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn temp(name: &str) -> msclam::ScratchDir {
    msclam::ScratchDir::new("host", name)
}

fn slides(seed: u64) -> Vec<SyntheticSlide> {
    generate(&SyntheticSpec {
        slides: 23,
        tiles_per_slide: 20,
        dim: 4,
        seed,
        tumor_slide_fraction: 0.4,
        incomplete_fraction: 0.5,
        profile: msclam_data::synthetic::Profile::DigestPath,
        ..Default::default()
    })
}

fn ids(slides: &[impl AsRef<str>], part: &[usize]) -> Vec<String> {
    part.iter()
        .map(|&i| slides[i].as_ref().to_owned())
        .collect()
}

#[test]
fn split_files_follow_the_stratified_rule_and_load_back() {
    let _serial = serial();
    for folds in [1, 5, 7] {
        let root = temp(&format!("folds{folds}"));
        let generated = slides(3);
        layout::write_synthetic(&root, &generated, folds, 11).unwrap();
        let labels: Vec<usize> = generated.iter().map(|s| s.label).collect();
        let names: Vec<&str> = generated.iter().map(|s| s.id.as_str()).collect();
        let rule = StratifiedSplit::new(&labels, 0.3, 11);
        let layout = ClamLayout::under(&root);
        let mut validated = vec![0usize; generated.len()];
        for fold in 0..folds {
            let expected = rule.split(Validation::Window {
                fold,
                parts: folds.max(5),
            });
            // The split file lists the rule's parts, in its order.
            let file =
                layout::read_split_csv(&root.join(format!("splits/splits_{fold}.csv"))).unwrap();
            assert_eq!(
                file[0],
                ids(&names, &expected.train),
                "{folds} folds, fold {fold}"
            );
            assert_eq!(file[1], ids(&names, &expected.val));
            assert_eq!(file[2], ids(&names, &expected.test));
            for &i in &expected.val {
                validated[i] += 1;
            }
            // Loaded back: the same slides in the same parts and order, read as written.
            let (c, chosen) =
                cohort::load_fold(&layout, fold, &Annotated::Percent(50.0, 2)).unwrap();
            let loaded: Vec<&str> = c.slides.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(ids(&loaded, &c.train), ids(&names, &expected.train));
            assert_eq!(ids(&loaded, &c.val), ids(&names, &expected.val));
            assert_eq!(ids(&loaded, &c.test), ids(&names, &expected.test));
            assert_eq!(c.dim, 4);
            for s in &c.slides {
                let g = generated.iter().find(|g| g.id == s.id).unwrap();
                assert_eq!(
                    (s.label, &s.features, &s.coords),
                    (g.label, &g.features, &g.coords)
                );
                assert_eq!(s.reference_tiles.as_ref(), Some(&g.annotation), "{}", s.id);
                assert_eq!(s.excluded, g.incomplete);
                assert_eq!(s.tile_labels.is_some(), chosen.contains(&s.id), "{}", s.id);
            }
            for id in &chosen {
                let i = loaded.iter().position(|l| l == id).unwrap();
                assert!(c.train.contains(&i) && !c.slides[i].excluded);
            }
            assert_eq!(
                c.tiles(&c.test),
                expected
                    .test
                    .iter()
                    .map(|&i| generated[i].tile_labels.len())
                    .sum::<usize>()
            );
        }
        // Up to 5 folds, no slide validates twice; with more, every non-test slide once.
        let test = rule.test();
        assert!(validated.iter().all(|&v| v <= 1));
        if folds >= 5 {
            for (i, v) in validated.iter().enumerate() {
                assert_eq!(*v == 1, !test.contains(&i), "slide {i}");
            }
        }
    }
}

#[test]
fn generated_slides_in_memory_take_a_validation_fraction_of_the_same_rule() {
    let generated = slides(5);
    let labels: Vec<usize> = generated.iter().map(|s| s.label).collect();
    let spec = SplitSpec {
        val_fraction: 0.25,
        test_fraction: 0.2,
        annotated_percent: 60.0,
        seed: 8,
    };
    let expected = StratifiedSplit::new(&labels, 0.2, 8)
        .split(Validation::Fraction(0.25))
        .sorted();
    let c = cohort::from_synthetic(generated.clone(), &spec).unwrap();
    assert_eq!(
        (&c.train, &c.val, &c.test),
        (&expected.train, &expected.val, &expected.test)
    );
    // Per class: round(n x 0.2) test, round(n x 0.25) validation.
    for class in [0, 1] {
        let n = labels.iter().filter(|&&l| l == class).count() as f64;
        let count = |part: &[usize]| part.iter().filter(|&&i| labels[i] == class).count();
        assert_eq!(count(&c.test), (n * 0.2).round() as usize);
        assert_eq!(count(&c.val), (n * 0.25).round() as usize);
    }
    let annotated: Vec<usize> = (0..c.slides.len())
        .filter(|&i| c.slides[i].tile_labels.is_some())
        .collect();
    let excluded: Vec<bool> = generated.iter().map(|s| s.incomplete).collect();
    let chosen =
        msclam_data::split::choose_annotated(&labels, &excluded, &c.train, &c.val, 60.0, 8);
    // Chosen slides with at least one marked tumor tile carry training tile labels.
    let marked: Vec<usize> = chosen
        .into_iter()
        .filter(|&i| generated[i].annotation.contains(&1))
        .collect();
    assert_eq!(annotated, marked);
    for (s, g) in c.slides.iter().zip(&generated) {
        assert_eq!((&s.id, s.excluded), (&g.id, g.incomplete));
        if let Some(t) = &s.tile_labels {
            assert_eq!(s.label, TUMOR);
            assert_eq!(t.tumor.len() + t.normal.len(), g.annotation.len());
            assert!(t.tumor.iter().all(|&k| g.annotation[k] == 1));
        }
    }
}

#[test]
fn slides_are_handed_over_one_at_a_time_and_errors_name_the_slide() {
    let _serial = serial();
    let root = temp("handover");
    layout::write_synthetic(&root, &slides(4), 1, 1).unwrap();
    let layout = ClamLayout::under(&root);
    let mut seen = Vec::new();
    let (c, _) = cohort::load_fold_with(&layout, 0, &Annotated::Percent(0.0, 1), |s| {
        seen.push(s.id.clone());
        Ok::<_, msclam_data::DataError>(s.features.len())
    })
    .unwrap();
    assert_eq!(c.slides.len(), seen.len());
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "dataset order");
    // A listed slide that is not in the dataset, and a non-finite feature.
    let e = cohort::load_fold(&layout, 0, &Annotated::List(vec!["slide_9999".into()]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("slide_9999") && e.contains("not in the dataset"),
        "{e}"
    );
    let bad = cohort::HostSlide::new(
        "slide_x",
        0,
        vec![0.0, f32::NAN],
        2,
        vec![[0, 0]],
        None,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("slide_x") && bad.contains("non-finite"),
        "{bad}"
    );
    let list = root.join("annotated.txt");
    std::fs::write(&list, "slide_0001\n\n  slide_0002 \n").unwrap();
    assert_eq!(
        Annotated::read_list(&list).unwrap(),
        Annotated::List(vec!["slide_0001".into(), "slide_0002".into()])
    );
    let (tiles, dim) = cohort::count_tiles(&layout, 0).unwrap();
    // The memory check's count, from the files' shapes, against the values handed over.
    assert_eq!((tiles, dim), (c.slides.iter().sum::<usize>() / 4, 4));
}
