//! ROC and training-curve PNGs: the curves land where their values say, in their colours,
//! and awkward inputs (one class only, NaN values, a single epoch) still draw.

use msclam_data::history::EpochRecord;
use msclam_data::plots::{self, RocInput, COLOURS};

fn temp(name: &str) -> msclam::ScratchDir {
    msclam::ScratchDir::new("plots", name)
}

/// Pixels of exactly `colour` in the column range `x0..x1`, as (x, y) pairs.
fn pixels_of(
    img: &image::RgbImage,
    colour: plotters::style::RGBColor,
    x0: u32,
    x1: u32,
) -> Vec<(u32, u32)> {
    img.enumerate_pixels()
        .filter(|(x, _, p)| *x >= x0 && *x < x1 && p.0 == [colour.0, colour.1, colour.2])
        .map(|(x, y, _)| (x, y))
        .collect()
}

fn input(label: &str, scores: &[f64], truth: &[bool]) -> RocInput {
    RocInput {
        label: label.into(),
        scores: scores.to_vec(),
        truth: truth.to_vec(),
    }
}

#[test]
fn roc_curves_are_drawn_where_their_rates_are() {
    let dir = temp("roc");
    let truth = [true, true, true, false, false, false];
    // Left panel: a perfect ranking (blue) and an inverted one (orange).
    // Right panel: one class only (AUC undefined) must still draw.
    let path = dir.join("roc.png");
    plots::write_roc_png(
        &path,
        &[
            (
                "slides",
                vec![
                    input("perfect", &[0.9, 0.8, 0.7, 0.3, 0.2, 0.1], &truth),
                    input("inverted", &[0.1, 0.2, 0.3, 0.7, 0.8, 0.9], &truth),
                ],
            ),
            (
                "tiles",
                vec![input("one class", &[0.1, 0.5], &[false, false])],
            ),
        ],
    )
    .unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (960, 480));
    let perfect = pixels_of(&img, COLOURS[0], 0, 480);
    let inverted = pixels_of(&img, COLOURS[1], 0, 480);
    assert!(perfect.len() > 300 && inverted.len() > 300);
    // The perfect curve goes up the left edge then along the top: its pixels sit high
    // (small y) and far left; the inverted one runs along the bottom then up the right.
    let mean = |v: &[(u32, u32)], f: fn(&(u32, u32)) -> u32| {
        v.iter().map(f).sum::<u32>() as f64 / v.len() as f64
    };
    let (px, py) = (mean(&perfect, |p| p.0), mean(&perfect, |p| p.1));
    let (ix, iy) = (mean(&inverted, |p| p.0), mean(&inverted, |p| p.1));
    assert!(py < iy - 100.0, "perfect y {py}, inverted y {iy}");
    assert!(px < ix - 100.0, "perfect x {px}, inverted x {ix}");
    // The top-left corner of the plot area belongs to the perfect curve only.
    let top_left_perfect = perfect.iter().filter(|p| p.0 < 150 && p.1 < 150).count();
    let top_left_inverted = inverted.iter().filter(|p| p.0 < 150 && p.1 < 150).count();
    assert!(top_left_perfect > 20 && top_left_inverted == 0);
    // The right panel drew its one curve (a straight line at y = 0 then to x = 1).
    assert!(!pixels_of(&img, COLOURS[0], 480, 960).is_empty());
}

fn record(epoch: usize, loss: f64, auc: f64) -> EpochRecord {
    EpochRecord {
        epoch,
        train_loss: loss,
        val_loss: loss * 1.2,
        val_auc: auc,
        val_error: 1.0 - auc,
        val_att_normal: -0.5,
        val_att_tumor: f64::NAN,
        train_seconds: 1.0,
    }
}

#[test]
fn training_curves_draw_every_run_and_skip_undefined_values() {
    let dir = temp("curves");
    let falling: Vec<EpochRecord> = (1..=10)
        .map(|e| {
            record(
                e,
                1.0 / e as f64,
                if e == 1 {
                    f64::NAN
                } else {
                    0.5 + e as f64 / 25.0
                },
            )
        })
        .collect();
    let flat: Vec<EpochRecord> = (1..=10).map(|e| record(e, 0.7, 0.5)).collect();
    let path = dir.join("curves.png");
    plots::write_training_curves_png(&path, &[("a", &falling), ("b", &flat)]).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (1440, 460));
    // Both runs appear in each of the three panels.
    for panel in 0..3 {
        let (x0, x1) = (panel * 480, panel * 480 + 480);
        assert!(
            pixels_of(&img, COLOURS[0], x0, x1).len() > 50,
            "panel {panel}, run a"
        );
        assert!(
            pixels_of(&img, COLOURS[1], x0, x1).len() > 50,
            "panel {panel}, run b"
        );
    }
    // In the loss panel the falling run starts high on the left and ends low on the right.
    let a = pixels_of(&img, COLOURS[0], 0, 480);
    let left: Vec<u32> = a.iter().filter(|p| p.0 < 120).map(|p| p.1).collect();
    let right: Vec<u32> = a.iter().filter(|p| p.0 > 380).map(|p| p.1).collect();
    let (l, r) = (
        left.iter().sum::<u32>() as f64 / left.len() as f64,
        right.iter().sum::<u32>() as f64 / right.len() as f64,
    );
    assert!(l < r - 100.0, "loss should fall: left y {l}, right y {r}");
    // One epoch, and no finite value at all, still draw.
    let one = [record(1, f64::NAN, f64::NAN)];
    plots::write_training_curves_png(&dir.join("one.png"), &[("", &one)]).unwrap();
    assert!(image::open(dir.join("one.png")).is_ok());
}
