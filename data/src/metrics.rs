//! The paper's metrics: slide AUC, accuracy, F1; tile Dice and specificity; tile AUC and
//! average precision; mean, standard deviation and standard error over folds.

/// Area under the ROC curve of `scores` for binary `labels` (true = positive), counting a
/// tied positive/negative pair as one half (the Mann-Whitney statistic, via midranks).
/// `None` when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n_pos = labels.iter().filter(|l| **l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 || scores.len() != labels.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let midrank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += order[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * midrank;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// ROC curve points `(false positive rate, true positive rate)`, from (0, 0) to (1, 1), one
/// point per distinct score (ties move diagonally).
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = labels.iter().filter(|l| **l).count().max(1) as f64;
    let n_neg = (labels.len() - labels.iter().filter(|l| **l).count()).max(1) as f64;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if labels[order[j]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        points.push((fp / n_neg, tp / n_pos));
        i = j;
    }
    points
}

/// Average precision: `sum_n (R_n - R_{n-1}) P_n` over thresholds at each distinct score,
/// highest first, tied scores taken together (scikit-learn's definition). `None` without
/// positives.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n_pos = labels.iter().filter(|l| **l).count();
    if n_pos == 0 || scores.len() != labels.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            tp += usize::from(labels[order[j]]);
            seen += 1;
            j += 1;
        }
        let recall = tp as f64 / n_pos as f64;
        let precision = tp as f64 / seen as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
        i = j;
    }
    Some(ap)
}

/// Counts of a binary prediction against the truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Predicted positive, truly positive.
    pub tp: usize,
    /// Predicted positive, truly negative.
    pub fp: usize,
    /// Predicted negative, truly negative.
    pub tn: usize,
    /// Predicted negative, truly positive.
    pub fn_: usize,
}

impl Confusion {
    /// Counts `predicted` against `truth`.
    pub fn of(predicted: &[bool], truth: &[bool]) -> Confusion {
        let mut c = Confusion::default();
        for (p, t) in predicted.iter().zip(truth) {
            match (p, t) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    /// (TP + TN) / all.
    pub fn accuracy(&self) -> f64 {
        (self.tp + self.tn) as f64 / (self.tp + self.tn + self.fp + self.fn_).max(1) as f64
    }

    /// 2 TP / (2 TP + FP + FN): the F1 score of the positive class, also the Dice coefficient
    /// of two masks. `None` when both prediction and truth are empty.
    pub fn f1(&self) -> Option<f64> {
        let denom = 2 * self.tp + self.fp + self.fn_;
        (denom > 0).then(|| 2.0 * self.tp as f64 / denom as f64)
    }

    /// TN / (TN + FP). `None` without negatives.
    pub fn specificity(&self) -> Option<f64> {
        let denom = self.tn + self.fp;
        (denom > 0).then(|| self.tn as f64 / denom as f64)
    }
}

/// Mean, sample standard deviation and standard error of per-fold values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for one value.
    pub std: f64,
    /// Standard error of the mean, std / sqrt(n).
    pub sem: f64,
    /// Number of values.
    pub n: usize,
}

/// Summarises `values` (NaNs skipped). `None` when there is none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(Summary {
        mean,
        std,
        sem: std / (n as f64).sqrt(),
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AUC by brute force over all positive/negative pairs, ties counting one half.
    fn auc_pairs(scores: &[f64], labels: &[bool]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if labels[i] && !labels[j] {
                    den += 1.0;
                    num += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        num / den
    }

    #[test]
    fn auc_matches_scikit_learns_documented_example() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        let auc = roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
    }

    #[test]
    fn auc_equals_the_pairwise_count_with_ties() {
        let mut seed = 7u64;
        for n in [2usize, 5, 17, 60] {
            let mut scores = Vec::new();
            let mut labels = Vec::new();
            for i in 0..n {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                scores.push(((seed >> 33) % 7) as f64 / 7.0); // few distinct values: many ties
                labels.push(i % 3 == 0 || (seed >> 20).is_multiple_of(2));
            }
            if labels.iter().all(|l| *l) || labels.iter().all(|l| !*l) {
                continue;
            }
            let auc = roc_auc(&scores, &labels).unwrap();
            assert!((auc - auc_pairs(&scores, &labels)).abs() < 1e-12, "n={n}");
        }
        assert_eq!(roc_auc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn average_precision_matches_scikit_learns_documented_example() {
        // sklearn.metrics.average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((ap - 5.0 / 6.0).abs() < 1e-12);
        // All scores tied: one threshold, precision = prevalence.
        let ap = average_precision(&[0.3; 4], &[true, false, false, false]).unwrap();
        assert!((ap - 0.25).abs() < 1e-12);
        // Ties grouped: [1 pos, 1 neg] at 0.9 then a pos at 0.1: (0.5 * 0.5) + (0.5 * 2/3).
        let ap = average_precision(&[0.9, 0.9, 0.1], &[true, false, true]).unwrap();
        assert!((ap - (0.25 + 1.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn roc_curve_ends_at_corners_and_its_area_is_the_auc() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4];
        let labels = [false, false, true, true, true];
        let pts = roc_curve(&scores, &labels);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        let area: f64 = pts
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - roc_auc(&scores, &labels).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn confusion_metrics() {
        let c = Confusion::of(
            &[true, true, false, false, true],
            &[true, false, false, true, true],
        );
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 1,
                fn_: 1
            }
        );
        assert!((c.accuracy() - 0.6).abs() < 1e-12);
        assert!((c.f1().unwrap() - 4.0 / 6.0).abs() < 1e-12);
        assert!((c.specificity().unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(Confusion::of(&[false], &[false]).f1(), None);
    }

    #[test]
    fn summaries() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((s.mean - 2.5).abs() < 1e-12);
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.sem - s.std / 2.0).abs() < 1e-12);
        assert_eq!(summarize(&[f64::NAN]), None);
    }
}
