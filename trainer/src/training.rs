//! The training loop: paired (or single-slide) steps, an [`Adam`] step each, validation every
//! epoch, early stopping, best-checkpoint keeping, atomic per-epoch checkpoints and exact
//! resumption; and evaluation in eval mode.
//!
//! Speed: features stay on the device for the whole run; a paired step forwards both slides
//! in one pass; tile batches are index tensors drawn on the device; losses are accumulated as
//! device tensors and read once per epoch, so a step never waits for the host.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::{self, TrainingState};
use crate::config::TrainConfig;
use crate::data::{Cohort, Slide, TUMOR};
use crate::error::{Result, TrainError};
use crate::losses::{self, AttentionLossMode};
use crate::metrics;
use crate::model::{architecture, Network};
use crate::optimizer::Adam;
use crate::samplers::{SlideSampler, Step, TileSampling};

pub use msclam_data::history::EpochRecord;
pub use msclam_data::report::SlideEval;

/// Trains one model on one cohort split.
pub struct Trainer<'c> {
    /// The configuration.
    pub config: TrainConfig,
    /// Where tensors live.
    pub device: Device,
    /// The variables.
    pub vs: nn::VarStore,
    /// The network.
    pub net: Network,
    /// The optimiser.
    pub adam: Adam,
    /// The slide sampler.
    pub sampler: SlideSampler,
    tiles: TileSampling,
    cohort: &'c Cohort,
    /// Epochs completed.
    pub epoch: usize,
    /// Best validation loss so far and its epoch.
    pub best: Option<(f64, usize)>,
    /// Early-stopping counter.
    pub stop_counter: usize,
    /// Every completed epoch.
    pub history: Vec<EpochRecord>,
    /// Set when early stopping ended training.
    pub stopped_early: bool,
    /// The best epoch's parameters (CPU copies), kept when early stopping is on.
    best_params: Option<Vec<Tensor>>,
}

impl<'c> Trainer<'c> {
    /// A fresh trainer: initialises the network from the seed.
    pub fn new(config: TrainConfig, cohort: &'c Cohort, device: Device) -> Result<Trainer<'c>> {
        config.validate()?;
        if cohort.train.is_empty() {
            return Err(TrainError::Config("the training set is empty".into()));
        }
        if config.threads > 0 {
            tch::set_num_threads(config.threads as i32);
        }
        tch::manual_seed(config.seed as i64);
        let vs = nn::VarStore::new(device);
        let arch = architecture(config.method, config.size.into(), cohort.dim, config.gated);
        let net = Network::new(&vs.root(), arch, config.dropout);
        let adam = Adam::new(&vs, &config);
        let sampler = SlideSampler::new(
            config.sampler,
            &cohort.slides,
            &cohort.train,
            config.ew_weight,
            config.ew_gamma,
            config.seed,
        );
        let tiles = TileSampling {
            b_plus: config.b_plus,
            b_minus: config.b_minus,
            method: config.method,
        };
        Ok(Trainer {
            config,
            device,
            vs,
            net,
            adam,
            sampler,
            tiles,
            cohort,
            epoch: 0,
            best: None,
            stop_counter: 0,
            history: Vec::new(),
            stopped_early: false,
            best_params: None,
        })
    }

    /// Steps in the next epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.sampler.epoch_plan(self.epoch).len()
    }

    /// Whether training is over (all epochs done, or stopped early).
    pub fn finished(&self) -> bool {
        self.stopped_early || self.epoch >= self.config.epochs
    }

    fn attention_terms(&self, attention: &Tensor, slide: &Slide) -> Tensor {
        let zero = || Tensor::zeros([], (Kind::Float, self.device));
        let mode = self.config.attention_loss;
        if mode == AttentionLossMode::Off {
            return zero();
        }
        if slide.label != TUMOR {
            return losses::attention_loss_normal(attention);
        }
        match (&slide.tile_labels, mode) {
            (Some(l), AttentionLossMode::Total) => {
                losses::attention_loss_tumor(attention, &l.tumor, &l.normal)
            }
            _ => zero(),
        }
    }

    /// The loss of one step (training mode).
    fn step_loss(&self, step: Step) -> Tensor {
        let c = &self.config;
        let slides = &self.cohort.slides;
        let (parts, labels): (Vec<&Slide>, Vec<i64>) = match step {
            Step::Single(i) => (vec![&slides[i]], vec![slides[i].label as i64]),
            Step::Pair { tumor, normal } => (
                vec![&slides[tumor], &slides[normal]],
                vec![TUMOR as i64, slides[normal].label as i64],
            ),
        };
        let mut slide_logits = Vec::new();
        let mut tile_logits = Vec::new();
        let mut tile_labels = Vec::new();
        let mut attention_loss = Tensor::zeros([], (Kind::Float, self.device));
        let mut balance: Option<usize> = None;
        for slide in &parts {
            // One forward pass per slide: as fast as one over both slides concatenated, without
            // copying the features together and the gradients apart (docs/PERFORMANCE.md).
            let fwd = self.net.forward(&slide.features_f32(), true);
            let hidden = fwd.hidden;
            let attention = fwd.attention_logits.softmax(0, Kind::Float);
            slide_logits.push(self.net.slide_logits(&hidden, &attention));
            let detached = attention.detach();
            let batch = if slide.label == TUMOR {
                let b = self.tiles.tumor_slide(slide, &detached);
                balance = Some((b.positives - b.negatives).max(0) as usize);
                b
            } else {
                // Paired: exactly as many normal tiles as balance the tumor slide's batch.
                self.tiles.normal_slide(
                    slide,
                    &detached,
                    if parts.len() > 1 { balance } else { None },
                )
            };
            if batch.positives + batch.negatives > 0 {
                tile_logits.push(
                    self.net
                        .tile_logits(&hidden.index_select(0, &batch.indices), batch.classifier),
                );
                tile_labels.push(batch.labels);
            }
            attention_loss += self.attention_terms(&attention, slide);
        }
        let slide_loss = losses::class_loss(
            &Tensor::stack(&slide_logits, 0),
            &Tensor::from_slice(&labels).to_device(self.device),
            c.bag_loss,
        );
        let inst_loss = if tile_logits.is_empty() {
            Tensor::zeros([], (Kind::Float, self.device))
        } else {
            losses::class_loss(
                &Tensor::cat(&tile_logits, 0),
                &Tensor::cat(&tile_labels, 0),
                c.inst_loss,
            )
        };
        slide_loss * c.bag_weight + inst_loss * (1.0 - c.bag_weight) + attention_loss * c.att_weight
    }

    /// Runs one epoch of training and validation; saves `checkpoint_dir/last.ckpt` (and
    /// `best.ckpt` on improvement) atomically when a directory is given.
    pub fn train_epoch(
        &mut self,
        checkpoint_dir: Option<&Path>,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<EpochRecord> {
        let epoch = self.epoch;
        // Re-seeding per epoch makes every epoch reproducible on its own: a resumed run
        // continues exactly as an uninterrupted one.
        tch::manual_seed(self.config.seed as i64 ^ ((epoch as i64 + 1) << 20));
        let plan = self.sampler.epoch_plan(epoch);
        let started = Instant::now();
        let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
        for (i, step) in plan.iter().enumerate() {
            self.adam.zero_grad();
            let loss = self.step_loss(*step);
            loss.backward();
            self.adam.step();
            loss_sum += loss.detach();
            on_step(i + 1, plan.len());
        }
        let train_loss = loss_sum.double_value(&[]) / plan.len().max(1) as f64; // one sync per epoch
        let train_seconds = started.elapsed().as_secs_f64();
        self.sampler.end_epoch();

        let val = self.evaluate(&self.cohort.val)?;
        let mean = |v: Vec<f64>| metrics::summarize(&v).map_or(f64::NAN, |s| s.mean);
        let val_loss = mean(val.iter().map(|e| e.loss).collect());
        let probs: Vec<f64> = val.iter().map(|e| e.probabilities[TUMOR]).collect();
        let truth: Vec<bool> = val
            .iter()
            .map(|e| self.cohort.slides[e.slide].label == TUMOR)
            .collect();
        let errors = val
            .iter()
            .zip(&truth)
            .filter(|(e, t)| (e.probabilities[TUMOR] >= e.probabilities[0]) != **t)
            .count();
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss,
            val_loss,
            val_auc: metrics::roc_auc(&probs, &truth).unwrap_or(f64::NAN),
            val_error: if val.is_empty() {
                f64::NAN
            } else {
                errors as f64 / val.len() as f64
            },
            val_att_normal: mean(
                val.iter()
                    .filter(|e| self.cohort.slides[e.slide].label != TUMOR)
                    .map(|e| e.attention_loss)
                    .collect(),
            ),
            val_att_tumor: mean(
                val.iter()
                    .filter(|e| self.cohort.slides[e.slide].label == TUMOR)
                    .map(|e| e.attention_loss)
                    .collect(),
            ),
            train_seconds,
        };
        self.epoch += 1;
        self.history.push(record);

        // Best checkpoint and early stopping on the validation slide loss (CLAM's rule: a
        // counter rises on each epoch that is strictly worse than the best, resets otherwise).
        let improved = val_loss.is_finite() && self.best.is_none_or(|(b, _)| val_loss <= b);
        if improved {
            self.best = Some((val_loss, self.epoch));
            self.stop_counter = 0;
            if self.config.early_stopping {
                self.best_params = Some(
                    self.adam
                        .params()
                        .iter()
                        .map(|t| t.detach().to_device(Device::Cpu).copy()) // a copy: on the CPU to_device shares storage
                        .collect(),
                );
            }
            if let Some(dir) = checkpoint_dir {
                checkpoint::save(&dir.join("best.ckpt"), &self.state())?;
            }
        } else if val_loss.is_finite() {
            self.stop_counter += 1;
        }
        if self.config.early_stopping
            && self.stop_counter >= self.config.patience
            && self.epoch > self.config.min_epochs
        {
            self.stopped_early = true;
            log::info!(
                "early stopping after epoch {} (best epoch {:?})",
                self.epoch,
                self.best.map(|b| b.1)
            );
        }
        if let Some(dir) = checkpoint_dir {
            checkpoint::save(&dir.join("last.ckpt"), &self.state())?;
        }
        Ok(record)
    }

    /// Trains until the configured number of epochs (or early stopping); with early stopping,
    /// ends with the best checkpoint's weights.
    pub fn train(
        &mut self,
        checkpoint_dir: Option<&Path>,
        mut on_epoch: impl FnMut(&EpochRecord),
    ) -> Result<()> {
        while !self.finished() {
            let record = self.train_epoch(checkpoint_dir, |_, _| {})?;
            on_epoch(&record);
        }
        self.finish(checkpoint_dir)?;
        Ok(())
    }

    /// Ends training: with early stopping on, the network takes the best epoch's weights
    /// (whether or not training actually stopped early, as CLAM does); otherwise the last
    /// epoch's weights are kept.
    /// After a resume the best weights are read back from `checkpoint_dir/best.ckpt`.
    pub fn finish(&mut self, checkpoint_dir: Option<&Path>) -> Result<()> {
        if !self.config.early_stopping {
            return Ok(());
        }
        if self.best_params.is_none() {
            if let Some(dir) = checkpoint_dir {
                let path = dir.join("best.ckpt");
                if path.exists() {
                    self.best_params = Some(checkpoint::load(&path, Device::Cpu)?.params);
                }
            }
        }
        if let Some(best) = self.best_params.take() {
            tch::no_grad(|| {
                for (dst, src) in self.adam.params_mut().iter_mut().zip(&best) {
                    dst.copy_(src);
                }
            });
            log::info!(
                "using the best epoch's weights (epoch {:?})",
                self.best.map(|b| b.1)
            );
        }
        Ok(())
    }

    /// Evaluates slides in eval mode (no dropout, no gradients).
    pub fn evaluate(&self, slides: &[usize]) -> Result<Vec<SlideEval>> {
        evaluate(&self.net, &self.cohort.slides, slides, self.device)
    }

    /// Everything needed to resume (copies on the CPU, independent of later training).
    pub fn state(&self) -> TrainingState {
        TrainingState {
            config: self.config.clone(),
            names: self.adam.names.clone(),
            params: self
                .adam
                .params()
                .iter()
                .map(|t| t.detach().to_device(Device::Cpu).copy())
                .collect(),
            m: self
                .adam
                .m
                .iter()
                .map(|t| t.to_device(Device::Cpu).copy())
                .collect(),
            v: self
                .adam
                .v
                .iter()
                .map(|t| t.to_device(Device::Cpu).copy())
                .collect(),
            adam_step: self.adam.step,
            epoch: self.epoch,
            best: self.best,
            stop_counter: self.stop_counter,
            stopped_early: self.stopped_early,
            ew_weights: self.sampler.weights().to_vec(),
            decay_stopped: self.sampler.decay_stopped(),
            history: self.history.clone(),
        }
    }

    /// Restores a saved state (same configuration and architecture).
    pub fn restore(&mut self, state: &TrainingState) -> Result<()> {
        if state.config != self.config {
            return Err(TrainError::Config(
                "the checkpoint was written with a different configuration; resume with the same flags".into(),
            ));
        }
        self.restore_weights(state)?;
        for (dst, src) in self.adam.m.iter_mut().zip(&state.m) {
            *dst = src.to_device(self.device);
        }
        for (dst, src) in self.adam.v.iter_mut().zip(&state.v) {
            *dst = src.to_device(self.device);
        }
        self.adam.step = state.adam_step;
        self.epoch = state.epoch;
        self.best = state.best;
        self.stop_counter = state.stop_counter;
        self.stopped_early = state.stopped_early;
        self.sampler.restore(&state.ew_weights, state.decay_stopped);
        self.history = state.history.clone();
        Ok(())
    }

    fn restore_weights(&mut self, state: &TrainingState) -> Result<()> {
        if state.names != self.adam.names {
            return Err(TrainError::Config(
                "the checkpoint's variables do not match this network".into(),
            ));
        }
        tch::no_grad(|| {
            for (dst, src) in self.adam.params_mut().iter_mut().zip(&state.params) {
                dst.copy_(src);
            }
        });
        Ok(())
    }
}

/// Evaluates `indices` of `slides` with `net` in eval mode.
pub fn evaluate(
    net: &Network,
    slides: &[Slide],
    indices: &[usize],
    device: Device,
) -> Result<Vec<SlideEval>> {
    let _ = device;
    tch::no_grad(|| {
        indices
            .iter()
            .map(|&i| {
                let slide = &slides[i];
                let fwd = net.forward(&slide.features_f32(), false);
                let attention = fwd.attention_logits.softmax(0, Kind::Float);
                let logits = net.slide_logits(&fwd.hidden, &attention);
                let probabilities: Vec<f64> =
                    Vec::<f64>::try_from(logits.softmax(0, Kind::Double).to_device(Device::Cpu))?;
                let loss = -probabilities[slide.label].max(1e-300).ln();
                let tile_probabilities = Vec::<f32>::try_from(
                    net.tile_probabilities(&fwd.hidden).to_device(Device::Cpu),
                )?;
                let attention_loss = match (&slide.reference_tiles, slide.label == TUMOR) {
                    (_, false) => losses::attention_loss_normal(&attention).double_value(&[]),
                    (Some(r), true) if !slide.excluded && r.iter().any(|t| *t != 0) => {
                        let tumor: Vec<i64> = (0..r.len())
                            .filter(|&k| r[k] != 0)
                            .map(|k| k as i64)
                            .collect();
                        let normal: Vec<i64> = (0..r.len())
                            .filter(|&k| r[k] == 0)
                            .map(|k| k as i64)
                            .collect();
                        let dev = attention.device();
                        losses::attention_loss_tumor(
                            &attention,
                            &Tensor::from_slice(&tumor).to_device(dev),
                            &Tensor::from_slice(&normal).to_device(dev),
                        )
                        .double_value(&[])
                    }
                    _ => f64::NAN,
                };
                Ok(SlideEval {
                    slide: i,
                    probabilities,
                    loss,
                    attention: Vec::<f32>::try_from(attention.to_device(Device::Cpu))?,
                    tile_probabilities,
                    attention_loss,
                })
            })
            .collect()
    })
}

/// Where a run keeps its checkpoints.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}
