//! Which slides each optimiser step sees (RandSamp, DoubleSamp, EWSamp), and which tiles of a
//! slide form the tile classifier's batch (true labels, attention pseudo-labels, paired
//! balancing), as the paper and its method notes specify.

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use tch::{Kind, Tensor};

use crate::data::{Slide, TUMOR};
use crate::model::ModelKind;

/// Slide sampling strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// One slide per step, every training slide once per epoch, shuffled (original CLAM).
    Rand,
    /// One normal and one tumor slide per step: every normal slide once, tumor slides drawn
    /// uniformly with replacement (EWSamp with W = 1).
    Double,
    /// As Double, tumor slides with tile labels drawn with weight W, decaying by gamma.
    Ew,
}

/// One optimiser step's slides (indices into the cohort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A single slide.
    Single(usize),
    /// A tumor slide and a normal slide, processed together.
    Pair {
        /// The tumor slide (forwarded first).
        tumor: usize,
        /// The normal slide.
        normal: usize,
    },
}

/// Draws each epoch's steps. Deterministic for a seed and an epoch number; the only state
/// that carries over epochs (EWSamp's weights) is exposed for checkpoints.
#[derive(Debug, Clone)]
pub struct SlideSampler {
    kind: SamplerKind,
    seed: u64,
    all: Vec<usize>,
    normal: Vec<usize>,
    tumor: Vec<usize>,
    annotated: Vec<bool>,
    weights: Vec<f64>,
    gamma: f64,
    decay_stopped: bool,
}

impl SlideSampler {
    /// A sampler over the training slides `train` of `slides`. `w` and `gamma` are EWSamp's
    /// initial weight and decay (ignored by Rand and Double; forced to 1 when no training
    /// slide has tile labels).
    pub fn new(
        kind: SamplerKind,
        slides: &[Slide],
        train: &[usize],
        w: f64,
        gamma: f64,
        seed: u64,
    ) -> SlideSampler {
        let normal: Vec<usize> = train
            .iter()
            .copied()
            .filter(|&i| slides[i].label != TUMOR)
            .collect();
        let tumor: Vec<usize> = train
            .iter()
            .copied()
            .filter(|&i| slides[i].label == TUMOR)
            .collect();
        let annotated: Vec<bool> = tumor
            .iter()
            .map(|&i| slides[i].tile_labels.is_some())
            .collect();
        let any_annotated = annotated.iter().any(|a| *a);
        let (w, gamma) = if kind == SamplerKind::Ew && any_annotated {
            (w, gamma)
        } else {
            (1.0, 1.0)
        };
        let weights = annotated.iter().map(|&a| if a { w } else { 1.0 }).collect();
        SlideSampler {
            kind,
            seed,
            all: train.to_vec(),
            normal,
            tumor,
            annotated,
            weights,
            gamma,
            decay_stopped: w == 1.0,
        }
    }

    /// The steps of `epoch` (0-based).
    pub fn epoch_plan(&self, epoch: usize) -> Vec<Step> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5a3c_9e1d_0000_0000 ^ epoch as u64);
        match self.kind {
            SamplerKind::Rand => {
                let mut order = self.all.clone();
                order.shuffle(&mut rng);
                order.into_iter().map(Step::Single).collect()
            }
            SamplerKind::Double | SamplerKind::Ew => {
                if self.tumor.is_empty() || self.normal.is_empty() {
                    // No pairs possible: fall back to single slides.
                    let mut order = self.all.clone();
                    order.shuffle(&mut rng);
                    return order.into_iter().map(Step::Single).collect();
                }
                let mut normals = self.normal.clone();
                normals.shuffle(&mut rng);
                let draw = WeightedIndex::new(&self.weights).ok();
                normals
                    .into_iter()
                    .map(|normal| {
                        let t = draw.as_ref().map_or(0, |d| d.sample(&mut rng));
                        Step::Pair {
                            tumor: self.tumor[t],
                            normal,
                        }
                    })
                    .collect()
            }
        }
    }

    /// Ends an epoch: annotated weights decay by gamma; once their sum is at most their count,
    /// every weight becomes 1 and decay stops.
    pub fn end_epoch(&mut self) {
        if self.decay_stopped {
            return;
        }
        let mut sum = 0.0;
        let mut count = 0usize;
        for (w, a) in self.weights.iter_mut().zip(&self.annotated) {
            if *a {
                *w *= self.gamma;
                sum += *w;
                count += 1;
            }
        }
        if sum <= count as f64 {
            self.weights.iter_mut().for_each(|w| *w = 1.0);
            self.decay_stopped = true;
        }
    }

    /// Current tumor-slide weights (one per training tumor slide, in cohort order).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Training tumor slides the weights refer to.
    pub fn tumor_slides(&self) -> &[usize] {
        &self.tumor
    }

    /// Restores the state saved by a checkpoint.
    pub fn restore(&mut self, weights: &[f64], decay_stopped: bool) {
        if weights.len() == self.weights.len() {
            self.weights.copy_from_slice(weights);
            self.decay_stopped = decay_stopped;
        }
    }

    /// Whether EWSamp's decay has ended.
    pub fn decay_stopped(&self) -> bool {
        self.decay_stopped
    }
}

/// Tiles chosen from one slide for the tile classifier, with their labels.
#[derive(Debug)]
pub struct TileBatch {
    /// Tile indices into the slide (int64).
    pub indices: Tensor,
    /// Labels (int64): 1 tumor (or "in class" for CLAM), 0 otherwise.
    pub labels: Tensor,
    /// Number of label-1 tiles.
    pub positives: i64,
    /// Number of label-0 tiles.
    pub negatives: i64,
    /// Which tile classifier these tiles train.
    pub classifier: usize,
}

/// Sizes of the tile batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSampling {
    /// Tumor tiles drawn from an annotated tumor slide (B+).
    pub b_plus: usize,
    /// Top-attention tiles of an unannotated slide (B-).
    pub b_minus: usize,
    /// MS-CLAM's or CLAM's rules.
    pub method: ModelKind,
}

fn random_subset(pool: &Tensor, pool_len: usize, k: usize) -> Tensor {
    let perm =
        Tensor::randperm(pool_len as i64, (Kind::Int64, pool.device())).narrow(0, 0, k as i64);
    pool.index_select(0, &perm)
}

fn batch(pos: Tensor, neg: Tensor, classifier: usize) -> TileBatch {
    let (p, n) = (pos.size()[0], neg.size()[0]);
    let device = pos.device();
    TileBatch {
        indices: Tensor::cat(&[pos, neg], 0),
        labels: Tensor::cat(
            &[
                Tensor::ones([p], (Kind::Int64, device)),
                Tensor::zeros([n], (Kind::Int64, device)),
            ],
            0,
        ),
        positives: p,
        negatives: n,
        classifier,
    }
}

impl TileSampling {
    /// The tile batch of a tumor slide (MS-CLAM: true labels when the slide has them, else
    /// attention pseudo-labels, `k = min(B-, N/2)` top as 1 and `k/2` bottom as 0; CLAM: `B-`
    /// top as 1 and `B-` bottom as 0 for the tumor class's classifier).
    pub fn tumor_slide(&self, slide: &Slide, attention: &Tensor) -> TileBatch {
        let n = slide.num_tiles;
        match (self.method, &slide.tile_labels) {
            (ModelKind::MsClam, Some(labels)) => {
                let n_pos = self.b_plus.min(labels.num_tumor);
                let n_neg = (n_pos / 2).min(labels.num_normal);
                let pos = random_subset(&labels.tumor, labels.num_tumor, n_pos);
                let neg = random_subset(&labels.normal, labels.num_normal, n_neg);
                batch(pos, neg, 0)
            }
            (ModelKind::MsClam, None) => {
                let k = self.b_minus.min(n / 2);
                let (top, bottom) = top_bottom(attention, k, k / 2);
                batch(top, bottom, 0)
            }
            (ModelKind::ClamSb, _) => {
                let k = self.b_minus.min(n / 2);
                let (top, bottom) = top_bottom(attention, k, k);
                batch(top, bottom, TUMOR)
            }
        }
    }

    /// The tile batch of a normal slide. MS-CLAM: `count` (paired step: what balances the
    /// batch) or `min(B-, N/2)` (single-slide step) highest-attention tiles, all labelled 0.
    /// CLAM: the normal class's classifier with `B-` top as 1 and `B-` bottom as 0.
    pub fn normal_slide(
        &self,
        slide: &Slide,
        attention: &Tensor,
        count: Option<usize>,
    ) -> TileBatch {
        let n = slide.num_tiles;
        match self.method {
            ModelKind::MsClam => {
                let k = count.unwrap_or(self.b_minus.min(n / 2)).min(n);
                let (top, _) = top_bottom(attention, k, 0);
                batch(top.narrow(0, 0, 0), top, 0)
            }
            ModelKind::ClamSb => {
                let k = self.b_minus.min(n / 2);
                let (top, bottom) = top_bottom(attention, k, k);
                batch(top, bottom, crate::data::NORMAL)
            }
        }
    }
}

/// Indices of the `top` highest and `bottom` lowest entries of `scores`.
fn top_bottom(scores: &Tensor, top: usize, bottom: usize) -> (Tensor, Tensor) {
    let t = scores.topk(top as i64, 0, true, true).1;
    let b = scores.topk(bottom as i64, 0, false, true).1;
    (t, b)
}
