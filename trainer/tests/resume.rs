//! A run killed for real (SIGKILL) and resumed with `--resume` ends with exactly the weights of
//! an uninterrupted run (CPU, one thread, same seed). One thread: with several, libtorch's CPU
//! kernels are not bit-reproducible from run to run (1 of 16 uninterrupted 2-thread runs of this
//! configuration ended a few ulps away from the others), resumed or not.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msclam_engine::format::TensorId;
use msclam_engine::Model;

const EPOCHS: usize = 8;

fn train_command(out: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msclam-train"));
    cmd.args([
        "train",
        "--device",
        "cpu",
        "--size",
        "tiny",
        "--threads",
        "1",
        "--seed",
        "3",
    ])
    .args(["--epochs", &EPOCHS.to_string()])
    .args([
        "--synthetic-slides",
        "40",
        "--synthetic-tiles",
        "400",
        "--synthetic-dim",
        "128",
    ])
    .args(["--annotated-percent", "50", "--synthetic-signal", "2"])
    .arg("--out")
    .arg(out)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

fn epochs_done(out: &Path) -> usize {
    std::fs::read_to_string(out.join("history.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .map_or(0, |h| h.len())
}

fn temp_dir(name: &str) -> msclam::ScratchDir {
    msclam::ScratchDir::unmade("resume", name)
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let straight = temp_dir("straight");
    assert!(train_command(&straight, false).status().unwrap().success());

    let killed = temp_dir("killed");
    let mut child = train_command(&killed, false).spawn().unwrap();
    let started = Instant::now();
    while epochs_done(&killed) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "training made no progress"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    let status = child.wait().unwrap();
    assert!(!status.success(), "the process was killed, not finished");
    let at_kill = epochs_done(&killed);
    assert!(
        at_kill < EPOCHS,
        "killed after {at_kill} of {EPOCHS} epochs"
    );

    assert!(train_command(&killed, true).status().unwrap().success());
    assert_eq!(epochs_done(&killed), EPOCHS);

    let a = Model::load(straight.join("model.mscl")).unwrap();
    let b = Model::load(killed.join("model.mscl")).unwrap();
    for id in TensorId::ALL {
        assert_eq!(
            a.tensor_values(id),
            b.tensor_values(id),
            "{} differs after resuming",
            id.name()
        );
    }
    // The validation history is the same too (timings aside).
    let history = |dir: &Path| -> Vec<(f64, f64)> {
        let h: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).unwrap())
                .unwrap();
        h.iter()
            .map(|r| {
                (
                    r["val_loss"].as_f64().unwrap(),
                    r["train_loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(history(&straight), history(&killed));
}
