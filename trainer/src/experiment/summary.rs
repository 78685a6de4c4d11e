//! The table over folds: `summary.json` (per-fold metrics, mean, SD, SE) and `summary.md` (the
//! paper-shaped table), written by the ablation and by merging the test metrics of folds
//! trained as separate jobs ([`merge`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::write_json;
use crate::error::{Result, TrainError};
use crate::report::{self, FoldMetrics};

/// Writes `summary.json` (per-fold metrics, mean, SD, SE) and `summary.md` (the paper-shaped
/// table) into `out`, and prints the table.
pub fn write_summary(out: &Path, rows: &[(String, Vec<FoldMetrics>)]) -> Result<()> {
    let summary: Vec<serde_json::Value> = rows
        .iter()
        .map(|(name, folds)| {
            let stats: BTreeMap<_, _> = report::summarize_folds(folds).into_iter().collect();
            serde_json::json!({ "run": name, "folds": folds, "summary": stats })
        })
        .collect();
    write_json(&out.join("summary.json"), &summary)?;
    let table = report::table(rows);
    let md = out.join("summary.md");
    std::fs::write(&md, &table).map_err(|e| TrainError::io(&md, e))?;
    println!("{table}");
    Ok(())
}

/// Reads `<run>/test/metrics.json` of every run folder (each written by `train`), groups them
/// into table rows by their parent folder's name (in order of first appearance), and writes
/// the summary into `out` ([`write_summary`]).
pub fn merge(runs: &[PathBuf], out: &Path) -> Result<()> {
    let mut rows: Vec<(String, Vec<FoldMetrics>)> = Vec::new();
    for run in runs {
        let path = run.join("test").join("metrics.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let m: FoldMetrics = serde_json::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let name = run.parent().and_then(|p| p.file_name()).map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match rows.iter_mut().find(|(n, _)| *n == name) {
            Some((_, folds)) => folds.push(m),
            None => rows.push((name, vec![m])),
        }
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    write_summary(out, &rows)
}
