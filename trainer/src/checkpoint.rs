//! Checkpoints: everything a run needs to continue exactly where it stopped (weights, Adam's
//! moments and step, epoch, early-stopping and sampler state, history, configuration), in one
//! file written atomically (write to a temporary file, flush, rename).

use std::path::Path;

use msclam_data::history::EpochRecord;
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// A run's complete state.
#[derive(Debug)]
pub struct TrainingState {
    /// The configuration the run was started with.
    pub config: TrainConfig,
    /// Variable names, sorted.
    pub names: Vec<String>,
    /// Parameters (CPU), in `names` order.
    pub params: Vec<Tensor>,
    /// Adam first moments.
    pub m: Vec<Tensor>,
    /// Adam second moments.
    pub v: Vec<Tensor>,
    /// Adam steps taken.
    pub adam_step: i64,
    /// Epochs completed.
    pub epoch: usize,
    /// Best validation loss and its epoch.
    pub best: Option<(f64, usize)>,
    /// Early-stopping counter.
    pub stop_counter: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// EWSamp weights.
    pub ew_weights: Vec<f64>,
    /// Whether EWSamp's decay has ended.
    pub decay_stopped: bool,
    /// Completed epochs.
    pub history: Vec<EpochRecord>,
}

fn f64s(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).to_kind(Kind::Double)
}

/// Writes `state` to `path` atomically.
pub fn save(path: &Path, state: &TrainingState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    let config =
        serde_json::to_string(&state.config).map_err(|e| TrainError::Config(e.to_string()))?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (i, name) in state.names.iter().enumerate() {
        named.push((format!("param.{name}"), state.params[i].shallow_clone()));
        named.push((format!("adam_m.{name}"), state.m[i].shallow_clone()));
        named.push((format!("adam_v.{name}"), state.v[i].shallow_clone()));
    }
    let (best_loss, best_epoch) = state.best.unwrap_or((f64::NAN, 0));
    named.push((
        "state.scalars".into(),
        f64s(&[
            state.epoch as f64,
            state.adam_step as f64,
            best_loss,
            best_epoch as f64,
            state.stop_counter as f64,
            f64::from(u8::from(state.stopped_early)),
            f64::from(u8::from(state.decay_stopped)),
            f64::from(u8::from(state.best.is_some())),
        ]),
    ));
    named.push(("state.ew_weights".into(), f64s(&state.ew_weights)));
    let rows: Vec<f64> = state.history.iter().flat_map(|r| r.to_row()).collect();
    named.push((
        "state.history".into(),
        f64s(&rows).reshape([state.history.len() as i64, EpochRecord::FIELDS as i64]),
    ));
    named.push(("state.config".into(), Tensor::from_slice(config.as_bytes())));
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    Tensor::save_multi(&named, &tmp)?;
    // Flush to disk before the rename so that a crash never leaves a truncated checkpoint.
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
    Ok(())
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path, device: Device) -> Result<TrainingState> {
    let bad = |reason: &str| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if !path.exists() {
        return Err(bad("no such file"));
    }
    let named = Tensor::load_multi(path)?;
    let find = |key: &str| {
        named
            .iter()
            .find(|(n, _)| n == key)
            .map(|(_, t)| t.shallow_clone())
    };
    let config_bytes: Vec<u8> = find("state.config")
        .ok_or_else(|| bad("missing configuration"))
        .and_then(|t| Vec::<u8>::try_from(&t).map_err(|e| bad(&e.to_string())))?;
    let config: TrainConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| bad(&e.to_string()))?;
    let scalars: Vec<f64> = find("state.scalars")
        .ok_or_else(|| bad("missing state"))
        .and_then(|t| Vec::<f64>::try_from(&t).map_err(|e| bad(&e.to_string())))?;
    if scalars.len() < 8 {
        return Err(bad("state is too short"));
    }
    let ew_weights = find("state.ew_weights")
        .map(|t| Vec::<f64>::try_from(&t).unwrap_or_default())
        .unwrap_or_default();
    let history_rows = find("state.history")
        .map(|t| Vec::<f64>::try_from(&t.view([-1])).unwrap_or_default())
        .unwrap_or_default();
    let history = history_rows
        .chunks_exact(EpochRecord::FIELDS)
        .map(EpochRecord::from_row)
        .collect();
    let mut names: Vec<String> = named
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("param.").map(str::to_owned))
        .collect();
    names.sort();
    let get = |prefix: &str, name: &str| {
        find(&format!("{prefix}.{name}"))
            .map(|t| t.to_device(device))
            .ok_or_else(|| bad(&format!("missing {prefix}.{name}")))
    };
    let params = names
        .iter()
        .map(|n| get("param", n))
        .collect::<Result<Vec<_>>>()?;
    let m = names
        .iter()
        .map(|n| get("adam_m", n))
        .collect::<Result<Vec<_>>>()?;
    let v = names
        .iter()
        .map(|n| get("adam_v", n))
        .collect::<Result<Vec<_>>>()?;
    Ok(TrainingState {
        config,
        names,
        params,
        m,
        v,
        adam_step: scalars[1] as i64,
        epoch: scalars[0] as usize,
        best: (scalars[7] != 0.0).then_some((scalars[2], scalars[3] as usize)),
        stop_counter: scalars[4] as usize,
        stopped_early: scalars[5] != 0.0,
        ew_weights,
        decay_stopped: scalars[6] != 0.0,
        history,
    })
}
