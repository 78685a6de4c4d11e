//! A training run's history: what each epoch gave (written by the trainer, drawn by
//! [`crate::plots`]).

/// What one epoch gave.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EpochRecord {
    /// Epoch number (1-based).
    pub epoch: usize,
    /// Mean total training loss per step.
    pub train_loss: f64,
    /// Mean validation slide cross-entropy.
    pub val_loss: f64,
    /// Validation slide AUC (NaN when undefined).
    pub val_auc: f64,
    /// Validation slide error rate.
    pub val_error: f64,
    /// Mean validation attention loss on normal slides.
    pub val_att_normal: f64,
    /// Mean validation attention loss on tumor slides with tile labels.
    pub val_att_tumor: f64,
    /// Seconds the epoch's training steps took.
    pub train_seconds: f64,
}

impl EpochRecord {
    /// Number of values in [`EpochRecord::to_row`].
    pub const FIELDS: usize = 8;

    /// The record as numbers (for checkpoints).
    pub fn to_row(&self) -> [f64; Self::FIELDS] {
        [
            self.epoch as f64,
            self.train_loss,
            self.val_loss,
            self.val_auc,
            self.val_error,
            self.val_att_normal,
            self.val_att_tumor,
            self.train_seconds,
        ]
    }

    /// The record from [`EpochRecord::to_row`]'s numbers.
    pub fn from_row(r: &[f64]) -> EpochRecord {
        EpochRecord {
            epoch: r[0] as usize,
            train_loss: r[1],
            val_loss: r[2],
            val_auc: r[3],
            val_error: r[4],
            val_att_normal: r[5],
            val_att_tumor: r[6],
            train_seconds: r[7],
        }
    }
}
