//! Losses: slide-level cross-entropy (or CLAM's smooth top-1 SVM), instance-level
//! cross-entropy (or SVM), and MS-CLAM's attention loss (equations 2 and 3 of the paper).

use tch::{Kind, Reduction, Tensor};

/// Loss on slide (or tile) class logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ClassLoss {
    /// Cross-entropy.
    Ce,
    /// Smooth top-1 SVM (Berrada et al., as CLAM's `SmoothTop1SVM`, alpha = 1, tau = 1).
    Svm,
}

/// Which attention-loss terms are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AttentionLossMode {
    /// Normal slides (eq. 2) and annotated tumor slides (eq. 3).
    Total,
    /// Normal slides only.
    Partial,
    /// No attention loss (the paper's "no att. loss" ablation).
    Off,
}

/// Mean classification loss of `logits` (`B x C`) against `labels` (`B`, int64).
pub fn class_loss(logits: &Tensor, labels: &Tensor, kind: ClassLoss) -> Tensor {
    match kind {
        ClassLoss::Ce => {
            logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
        }
        ClassLoss::Svm => smooth_top1_svm(logits, labels, 1.0, 1.0),
    }
}

/// Smooth top-1 multi-class SVM: `tau * log sum_j exp((alpha [j != y] + s_j - s_y) / tau)`,
/// averaged over the batch.
pub fn smooth_top1_svm(logits: &Tensor, labels: &Tensor, alpha: f64, tau: f64) -> Tensor {
    let classes = logits.size()[1];
    let one_hot = labels.one_hot(classes).to_kind(Kind::Float);
    let margin = (1.0 - &one_hot) * alpha; // alpha for j != y, 0 for j = y
    let true_score = (logits * &one_hot).sum_dim_intlist(1, true, Kind::Float);
    let z: Tensor = (&margin + logits - &true_score) / tau;
    (z.logsumexp(1, false) * tau).mean(Kind::Float)
}

/// `sum a log a` over `attention`, with `0 log 0 = 0` and a finite gradient there too (an
/// attention weight that underflows to exactly 0 must not turn the gradient into NaN, as
/// `xlogy(a, a)`'s derivative would).
fn sum_a_log_a(attention: &Tensor) -> Tensor {
    (attention * attention.clamp_min(1e-30).log()).sum(Kind::Float)
}

/// Attention loss of a normal slide, eq. (2): `sum_k A_k log A_k / log N`, the negative entropy
/// normalised to [-1, 0]. Zero for a single-tile slide (nothing to spread).
pub fn attention_loss_normal(attention: &Tensor) -> Tensor {
    let n = attention.size()[0];
    if n < 2 {
        return Tensor::zeros([], (Kind::Float, attention.device()));
    }
    sum_a_log_a(attention) / (n as f64).ln()
}

/// Attention loss of a tumor slide with known tile labels, eq. (3):
/// `sum(A_normal) + sum_t A_t log A_t / log m - sum(A_tumor)` with `m` tumor tiles; with a
/// single tumor tile, `sum(A_normal) - A_tumor`.
pub fn attention_loss_tumor(attention: &Tensor, tumor: &Tensor, normal: &Tensor) -> Tensor {
    let a_tumor = attention.index_select(0, tumor);
    let m = a_tumor.size()[0];
    let normal_sum = if normal.size()[0] > 0 {
        attention.index_select(0, normal).sum(Kind::Float)
    } else {
        Tensor::zeros([], (Kind::Float, attention.device()))
    };
    let tumor_sum = a_tumor.sum(Kind::Float);
    if m == 1 {
        normal_sum - tumor_sum
    } else {
        normal_sum + sum_a_log_a(&a_tumor) / (m as f64).ln() - tumor_sum
    }
}
