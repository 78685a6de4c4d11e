//! Each loss against values computed by hand.

use msclam_trainer::losses::{
    attention_loss_normal, attention_loss_tumor, class_loss, smooth_top1_svm, ClassLoss,
};
use tch::{Kind, Tensor};

fn t(values: &[f32]) -> Tensor {
    Tensor::from_slice(values)
}
fn idx(values: &[i64]) -> Tensor {
    Tensor::from_slice(values)
}
fn close(got: &Tensor, want: f64) {
    let got = got.double_value(&[]);
    assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
}

#[test]
fn normal_slide_attention_loss_is_normalised_negative_entropy() {
    // Uniform attention has maximal entropy: -log N / log N = -1.
    close(&attention_loss_normal(&t(&[0.25; 4])), -1.0);
    // All attention on one tile: 0.
    close(&attention_loss_normal(&t(&[1.0, 0.0, 0.0])), 0.0);
    // [0.5, 0.25, 0.25]: (0.5 ln 0.5 + 2 * 0.25 ln 0.25) / ln 3.
    let want = (0.5 * 0.5f64.ln() + 0.5 * 0.25f64.ln()) / 3.0f64.ln();
    close(&attention_loss_normal(&t(&[0.5, 0.25, 0.25])), want);
    assert!((want - -0.946395).abs() < 1e-6);
    // A single-tile slide has nothing to spread.
    close(&attention_loss_normal(&t(&[1.0])), 0.0);
}

#[test]
fn tumor_slide_attention_loss_follows_equation_3() {
    // Tiles 0, 1 normal; 2, 3 tumor: sum(A_n) + sum_t A_t ln A_t / ln m - sum(A_t).
    let a = t(&[0.1, 0.2, 0.3, 0.4]);
    let want = 0.3 + (0.3 * 0.3f64.ln() + 0.4 * 0.4f64.ln()) / 2.0f64.ln() - 0.7;
    close(
        &attention_loss_tumor(&a, &idx(&[2, 3]), &idx(&[0, 1])),
        want,
    );
    assert!((want - -1.449861).abs() < 1e-5);
    // One tumor tile: sum(A_n) - A_t.
    close(
        &attention_loss_tumor(&t(&[0.2, 0.8]), &idx(&[1]), &idx(&[0])),
        0.2 - 0.8,
    );
    // No normal tile.
    let want = (0.5f64 * 0.5f64.ln() * 2.0) / 2.0f64.ln() - 1.0;
    close(
        &attention_loss_tumor(&t(&[0.5, 0.5]), &idx(&[0, 1]), &idx(&[])),
        want,
    );
}

#[test]
fn cross_entropy_and_smooth_svm() {
    // ln(1 + e^-2) for logits (2, 0) and label 0.
    let logits = Tensor::from_slice(&[2.0f32, 0.0]).reshape([1, 2]);
    close(
        &class_loss(&logits, &idx(&[0]), ClassLoss::Ce),
        (1.0 + (-2.0f64).exp()).ln(),
    );
    // Mean over a batch of two.
    let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).reshape([2, 2]);
    let want = ((1.0 + (-2.0f64).exp()).ln() + (1.0 + (-1.0f64).exp()).ln()) / 2.0;
    close(&class_loss(&logits, &idx(&[0, 1]), ClassLoss::Ce), want);
    // Smooth top-1 SVM, alpha = tau = 1, logits (1, 3), label 0: log(e^0 + e^(1 + 3 - 1)).
    let logits = Tensor::from_slice(&[1.0f32, 3.0]).reshape([1, 2]);
    close(
        &smooth_top1_svm(&logits, &idx(&[0]), 1.0, 1.0),
        (1.0 + 3.0f64.exp()).ln(),
    );
    // Correct with a wide margin: close to 0 but positive (smooth hinge).
    let logits = Tensor::from_slice(&[10.0f32, 0.0]).reshape([1, 2]);
    let v = smooth_top1_svm(&logits, &idx(&[0]), 1.0, 1.0).double_value(&[]);
    assert!(v > 0.0 && v < 1e-3 && (v - (1.0 + (-9.0f64).exp()).ln()).abs() < 1e-6);
    assert_eq!(
        class_loss(&logits, &idx(&[0]), ClassLoss::Svm).kind(),
        Kind::Float
    );
}
