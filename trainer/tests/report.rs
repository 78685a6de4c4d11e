//! Fold metrics from a hand-built evaluation, the paper-shaped table, and heatmap pictures.

use msclam_trainer::data::{Cohort, FeaturePrecision, Slide, NORMAL, TUMOR};
use msclam_trainer::report;
use msclam_trainer::training::SlideEval;
use tch::Device;

fn slide(id: &str, label: usize, reference: Vec<u8>) -> Slide {
    let n = reference.len();
    let coords = (0..n as u32).map(|i| [i % 3 * 256, i / 3 * 256]).collect();
    Slide::from_host(
        id,
        label,
        &vec![0.1; n * 2],
        2,
        coords,
        Some(reference),
        false,
        FeaturePrecision::F32,
        Device::Cpu,
    )
    .unwrap()
}

fn eval(slide: usize, p_tumor: f64, tiles: Vec<f32>) -> SlideEval {
    let n = tiles.len();
    SlideEval {
        slide,
        probabilities: vec![1.0 - p_tumor, p_tumor],
        loss: 0.0,
        attention: vec![1.0 / n as f32; n],
        tile_probabilities: tiles,
        attention_loss: -0.5,
    }
}

#[test]
fn fold_metrics_match_values_computed_by_hand() {
    let cohort = Cohort {
        slides: vec![
            slide("t1", TUMOR, vec![1, 1, 0, 0]),
            slide("t2", TUMOR, vec![0, 1, 0, 0]),
            slide("n1", NORMAL, vec![0, 0, 0, 0]),
            slide("n2", NORMAL, vec![0, 0]),
        ],
        dim: 2,
        train: vec![],
        val: vec![],
        test: vec![0, 1, 2, 3],
    };
    let evals = vec![
        eval(0, 0.9, vec![0.9, 0.6, 0.7, 0.1]), // mask 1 1 1 0 vs 1 1 0 0: Dice 2*2/(4+1) = 0.8
        eval(1, 0.4, vec![0.2, 0.3, 0.1, 0.1]), // mask empty vs 1 tumor tile: Dice 0
        eval(2, 0.3, vec![0.6, 0.1, 0.2, 0.3]), // 1 false positive of 4: specificity 0.75
        eval(3, 0.6, vec![0.1, 0.1]),           // specificity 1, but slide misclassified
    ];
    let m = report::fold_metrics(&cohort.slides, &evals);
    // Slides: scores t1 .9, t2 .4, n1 .3, n2 .6: pairs (t,n) won: t1>n1, t1>n2, t2>n1 => 3/4.
    assert!((m.slide_auc - 0.75).abs() < 1e-12);
    // Predicted tumor: t1, n2 (p > 0.5): TP 1, FN 1, FP 1, TN 1.
    assert!((m.slide_accuracy - 0.5).abs() < 1e-12);
    assert!((m.slide_f1 - 0.5).abs() < 1e-12);
    assert!((m.dice_tumor - 0.4).abs() < 1e-12, "dice {}", m.dice_tumor);
    assert!((m.specificity_normal - 0.875).abs() < 1e-12);
    assert!((m.latt_normal + 0.5).abs() < 1e-12 && (m.latt_tumor + 0.5).abs() < 1e-12);
    // Tiles pooled: positives at scores .9 .6 .3; negatives .7 .1 .2 .1 .1 .6 .1 .2 .3 .1 .1.
    let pos = [0.9, 0.6, 0.3];
    let neg = [0.7, 0.1, 0.2, 0.1, 0.1, 0.6, 0.1, 0.2, 0.3, 0.1, 0.1];
    let wins: f64 = pos
        .iter()
        .flat_map(|p| {
            neg.iter().map(move |n| {
                if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    assert!(
        (m.tile_auc - wins / 33.0).abs() < 1e-9,
        "tile AUC {} vs {}",
        m.tile_auc,
        wins / 33.0
    );
    assert!(m.tile_ap > 0.0 && m.tile_ap <= 1.0);

    let table = report::table(&[("MS-CLAM 12%".into(), vec![m, m])]);
    assert!(table.lines().next().unwrap().contains("Slide AUC"));
    assert!(
        table.contains("| MS-CLAM 12% | 2 | 0.750 ± 0.000 |"),
        "{table}"
    );
    let single = report::table(&[("one fold".into(), vec![m])]);
    assert!(single.contains("| one fold | 1 | 0.750 | "), "{single}");

    let dir = std::env::temp_dir().join(format!("msclam-report-{}", std::process::id()));
    report::write_fold(&dir, &cohort.slides, &evals, &m).unwrap();
    let slides = std::fs::read_to_string(dir.join("slides.csv")).unwrap();
    assert_eq!(slides.lines().count(), 5);
    assert!(slides.contains("t1,1,0.900000,1,0.800000"), "{slides}");
    let roc = image::open(dir.join("roc.png")).unwrap();
    assert_eq!(
        (roc.width(), roc.height()),
        (960, 480),
        "slide and tile panels"
    );
    let png = report::write_slide_heatmap(&dir, &cohort.slides, &evals[0]).unwrap();
    assert_eq!(png, dir.join("heatmaps/t1.png"));
    let img = image::open(&png).unwrap().to_rgb8();
    // Panels of 220 pixels (at least) after a 24-pixel margin, every 244 pixels; tiles of 32
    // pixels from y = 44 (a 3 x 2 grid). Predicted mask (panel 1): tile 0 (p 0.9) red, tile 3
    // (p 0.1, second row) grey; reference mask (panel 2): tile 1 red, tile 2 grey.
    let (red, grey) = ([200, 30, 40], [200, 200, 210]);
    let at = |panel: u32, cx: u32, cy: u32| {
        img.get_pixel(24 + 244 * panel + 32 * cx + 16, 44 + 32 * cy + 16)
            .0
    };
    assert_eq!(at(1, 0, 0), red);
    assert_eq!(at(1, 0, 1), grey);
    assert_eq!(at(2, 1, 0), red);
    assert_eq!(at(2, 2, 0), grey);
    std::fs::remove_dir_all(&dir).unwrap();
}
