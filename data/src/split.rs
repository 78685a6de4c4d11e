//! The seeded, class-stratified choices over a cohort's slides: which slides train, validate
//! and test ([`StratifiedSplit`], the one rule behind every route to a cohort: the split files
//! [`crate::layout::write_synthetic`] writes and the in-memory cohorts of
//! [`crate::cohort::from_synthetic`]), and which training tumor slides' tile labels are used
//! ([`choose_annotated`]).

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::{NORMAL, TUMOR};

/// Indices of the slides in each part of a split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// Training slides.
    pub train: Vec<usize>,
    /// Validation slides.
    pub val: Vec<usize>,
    /// Test slides.
    pub test: Vec<usize>,
}

impl Split {
    /// The same split with each part in increasing order.
    pub fn sorted(mut self) -> Split {
        self.train.sort_unstable();
        self.val.sort_unstable();
        self.test.sort_unstable();
        self
    }
}

/// Which of a class's slides left after the test part validate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Validation {
    /// The first `round(fraction x the class's slides)` of them.
    Fraction(f64),
    /// Fold `fold` of `parts`: of the `m` left, those at positions `fold * m / parts` up to
    /// (not including) `(fold + 1) * m / parts`.
    Window {
        /// The fold.
        fold: usize,
        /// Number of windows the remaining slides are cut into.
        parts: usize,
    },
}

/// Each class's slides shuffled once, with a test part taken off the front: every split of a
/// cohort (a fraction for validation, or one fold's window) is drawn from it, so that the
/// folds of a cohort share their test slides.
///
/// One random generator seeded with `seed` shuffles the normal slides, then the tumor slides
/// (in cohort order before shuffling); the test part of a class is its first
/// `round(test_fraction x its slides)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StratifiedSplit {
    /// Per class ([`NORMAL`], [`TUMOR`]): the test slides, in shuffled order.
    test: [Vec<usize>; 2],
    /// Per class: the other slides, in shuffled order.
    rest: [Vec<usize>; 2],
}

impl StratifiedSplit {
    /// Shuffles the slides of each class of `labels` (classes other than [`NORMAL`] and
    /// [`TUMOR`] are left out) and sets the test part aside.
    pub fn new(labels: &[usize], test_fraction: f64, seed: u64) -> StratifiedSplit {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut split = StratifiedSplit {
            test: Default::default(),
            rest: Default::default(),
        };
        for class in [NORMAL, TUMOR] {
            let mut members: Vec<usize> =
                (0..labels.len()).filter(|&i| labels[i] == class).collect();
            members.shuffle(&mut rng);
            let n_test =
                ((members.len() as f64 * test_fraction).round() as usize).min(members.len());
            split.rest[class] = members.split_off(n_test);
            split.test[class] = members;
        }
        split
    }

    /// The test slides: the normal ones, then the tumor ones, each in shuffled order.
    pub fn test(&self) -> Vec<usize> {
        self.test.concat()
    }

    /// The split with validation chosen by `validation` among each class's non-test slides.
    /// Every part lists the normal slides, then the tumor slides, each in shuffled order.
    pub fn split(&self, validation: Validation) -> Split {
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for class in [NORMAL, TUMOR] {
            let rest = &self.rest[class];
            let m = rest.len();
            let window = match validation {
                Validation::Fraction(fraction) => {
                    let n = self.test[class].len() + m;
                    0..((n as f64 * fraction).round() as usize).min(m)
                }
                Validation::Window { fold, parts } => {
                    let parts = parts.max(1);
                    fold * m / parts..(fold + 1) * m / parts
                }
            };
            for (j, &i) in rest.iter().enumerate() {
                if window.contains(&j) {
                    val.push(i);
                } else {
                    train.push(i);
                }
            }
        }
        Split {
            train,
            val,
            test: self.test(),
        }
    }
}

/// The training tumor slides whose tile labels are used: `round(k / 100 * tumor slides in
/// train + val)`, drawn (seeded) among the training tumor slides not excluded; all of them if
/// fewer are available. Returned in increasing order.
pub fn choose_annotated(
    labels: &[usize],
    excluded: &[bool],
    train: &[usize],
    val: &[usize],
    percent: f64,
    seed: u64,
) -> Vec<usize> {
    let tumor_train_val = train
        .iter()
        .chain(val)
        .filter(|&&i| labels[i] == TUMOR)
        .count();
    let n = (percent / 100.0 * tumor_train_val as f64).round() as usize;
    let mut candidates: Vec<usize> = train
        .iter()
        .copied()
        .filter(|&i| labels[i] == TUMOR && !excluded[i])
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xa770_7a7e);
    candidates.shuffle(&mut rng);
    candidates.truncate(n);
    candidates.sort_unstable();
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permutation `shuffle` gives `n` items with the generator seeded by `seed`, after
    /// `before` shuffles of the given lengths: the rule is one generator for both classes.
    fn shuffled(before: &[usize], n: usize, seed: u64) -> Vec<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for &len in before {
            (0..len).collect::<Vec<_>>().shuffle(&mut rng);
        }
        let mut v: Vec<usize> = (0..n).collect();
        v.shuffle(&mut rng);
        v
    }

    #[test]
    fn one_class_parts_by_hand() {
        // Ten normal slides: test round(10 x 0.3) = 3, then validation.
        let labels = vec![NORMAL; 10];
        let order = shuffled(&[], 10, 5);
        let split = StratifiedSplit::new(&labels, 0.3, 5);
        assert_eq!(split.test(), order[..3]);
        // A fraction of the class (10 x 0.2 = 2) from the front of the rest.
        let s = split.split(Validation::Fraction(0.2));
        assert_eq!(s.val, order[3..5]);
        assert_eq!(s.train, order[5..]);
        assert_eq!(s.test, order[..3]);
        // Fold windows of the 7 left, in 5 parts: [0, 1), [1, 2), [2, 4), [4, 5), [5, 7).
        for (fold, (a, b)) in [(0, 1), (1, 2), (2, 4), (4, 5), (5, 7)]
            .into_iter()
            .enumerate()
        {
            let s = split.split(Validation::Window { fold, parts: 5 });
            let rest = &order[3..];
            assert_eq!(s.val, rest[a..b], "fold {fold}");
            let train: Vec<usize> = rest[..a].iter().chain(&rest[b..]).copied().collect();
            assert_eq!(s.train, train, "fold {fold}");
        }
    }

    #[test]
    fn classes_are_split_apart_with_one_generator_normal_first() {
        // Slides 0, 2, 4, 6 are tumor; 1, 3, 5, 7, 9 normal; 8 another class (left out).
        let labels = [1, 0, 1, 0, 1, 0, 1, 0, 7, 0];
        let normal = [1, 3, 5, 7, 9];
        let tumor = [0, 2, 4, 6];
        let (pn, pt) = (shuffled(&[], 5, 9), shuffled(&[5], 4, 9));
        let n: Vec<usize> = pn.iter().map(|&k| normal[k]).collect();
        let t: Vec<usize> = pt.iter().map(|&k| tumor[k]).collect();
        // Test: round(5 x 0.4) = 2 normal, round(4 x 0.4) = 2 (1.6) tumor; validation
        // round(5 x 0.2) = 1 normal, round(4 x 0.2) = 1 (0.8) tumor.
        let s = StratifiedSplit::new(&labels, 0.4, 9).split(Validation::Fraction(0.2));
        assert_eq!(s.test, [&n[..2], &t[..2]].concat());
        assert_eq!(s.val, vec![n[2], t[2]]);
        assert_eq!(s.train, vec![n[3], n[4], t[3]]);
        assert!(!s.train.contains(&8) && !s.val.contains(&8) && !s.test.contains(&8));
        let sorted = s.clone().sorted();
        assert!(sorted.train.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sorted.train.len(), s.train.len());
    }

    #[test]
    fn edge_cases() {
        // No slides, all test, nothing left to validate, more windows than slides.
        let empty = StratifiedSplit::new(&[], 0.3, 1).split(Validation::Fraction(0.2));
        assert_eq!(empty, Split::default());
        let all_test = StratifiedSplit::new(&[0, 0, 1], 1.0, 1).split(Validation::Fraction(0.5));
        assert_eq!((all_test.test.len(), all_test.val.len()), (3, 0));
        let too_much = StratifiedSplit::new(&[0; 4], 0.5, 1).split(Validation::Fraction(0.9));
        assert_eq!((too_much.val.len(), too_much.train.len()), (2, 0));
        let split = StratifiedSplit::new(&[0; 3], 0.0, 1);
        let vals: Vec<usize> = (0..7)
            .map(|fold| split.split(Validation::Window { fold, parts: 7 }).val.len())
            .collect();
        // Three slides in seven windows: 0*3/7.. ; each slide validates in exactly one fold.
        assert_eq!(vals.iter().sum::<usize>(), 3);
    }

    #[test]
    fn the_former_rules_are_kept() {
        // Recorded from the two implementations this rule replaced (the trainer's in-memory
        // split, sorted; `write_synthetic`'s split files, in shuffled order): StdRng is the
        // same generator on every machine.
        let labels: Vec<usize> = (0..23).map(|i| usize::from(i % 3 == 0)).collect();
        let memory = StratifiedSplit::new(&labels, 0.2, 1)
            .split(Validation::Fraction(0.2))
            .sorted();
        assert_eq!(memory.train, [0, 2, 3, 5, 6, 8, 10, 12, 13, 14, 16, 17, 19]);
        assert_eq!(memory.val, [4, 7, 11, 18, 21]);
        assert_eq!(memory.test, [1, 9, 15, 20, 22]);
        let files =
            StratifiedSplit::new(&labels, 0.3, 1).split(Validation::Window { fold: 2, parts: 5 });
        assert_eq!(files.train, [4, 2, 10, 14, 19, 16, 5, 8, 21, 18, 6, 0, 3]);
        assert_eq!(files.val, [17, 13, 12]);
        assert_eq!(files.test, [1, 20, 22, 11, 7, 15, 9]);
    }

    #[test]
    fn annotated_slides_by_hand() {
        // Tumor slides 0..6; 1 is excluded; train 0..4, val 4..6: 6 tumor slides in train +
        // val, k = 50 %: 3 wanted, among the 3 training tumor slides not excluded (0, 2, 3).
        let labels = [1, 1, 1, 1, 1, 1, 0];
        let excluded = [false, true, false, false, false, false, false];
        let chosen = choose_annotated(&labels, &excluded, &[0, 1, 2, 3, 6], &[4, 5], 50.0, 3);
        assert_eq!(chosen, vec![0, 2, 3]);
        // k = 34 %: round(2.04) = 2 of those three, seeded.
        let two = choose_annotated(&labels, &excluded, &[0, 1, 2, 3, 6], &[4, 5], 34.0, 3);
        let mut candidates = [0, 2, 3];
        candidates.shuffle(&mut rand::rngs::StdRng::seed_from_u64(3 ^ 0xa770_7a7e));
        let mut expected = candidates[..2].to_vec();
        expected.sort_unstable();
        assert_eq!(two, expected);
        assert!(choose_annotated(&labels, &excluded, &[0, 2], &[], 0.0, 3).is_empty());
    }
}
