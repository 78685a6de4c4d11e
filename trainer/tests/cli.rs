//! The command-line tool end to end: the demo, and generate -> train -> merge as a user runs
//! folds as separate jobs; bad input gives a clear error and a failing exit code.

use std::path::Path;
use std::process::Command;

fn tool() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_msclam-train"));
    c.env("RUST_LOG", "warn");
    c
}

fn temp(name: &str) -> msclam::ScratchDir {
    msclam::ScratchDir::unmade("cli", name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_demo_runs_end_to_end() {
    let out = temp("demo");
    let stdout = run(tool()
        .args([
            "demo",
            "--slides",
            "24",
            "--tiles",
            "80",
            "--dim",
            "32",
            "--epochs",
            "2",
            "--annotated-percent",
            "50",
            "--out",
        ])
        .arg(&out));
    assert!(
        stdout.contains("| CLAM-SB") && stdout.contains("| MS-CLAM"),
        "{stdout}"
    );
    assert!(
        stdout.contains("largest difference from the trainer"),
        "{stdout}"
    );
    for method in ["clam-sb", "ms-clam"] {
        assert!(out.join(method).join("test/metrics.json").exists());
        assert!(
            std::fs::read_dir(out.join(method).join("heatmaps"))
                .unwrap()
                .count()
                > 0
        );
    }
    assert!(out.join("ms-clam/model.mscl").exists());
    assert!(out.join("cohort/dataset.csv").exists());
}

fn train_fold(cohort: &Path, fold: usize, out: &Path) {
    run(tool()
        .args([
            "train",
            "--device",
            "cpu",
            "--size",
            "tiny",
            "--epochs",
            "2",
            "--threads",
            "2",
            "--annotated-percent",
            "50",
        ])
        .arg("--cohort")
        .arg(cohort)
        .args(["--fold", &fold.to_string(), "--out"])
        .arg(out));
}

#[test]
fn folds_as_separate_jobs_then_merged() {
    let root = temp("folds");
    let cohort = root.join("cohort");
    run(tool()
        .args([
            "generate", "--slides", "30", "--tiles", "60", "--dim", "16", "--folds", "2", "--out",
        ])
        .arg(&cohort));
    for fold in 0..2 {
        train_fold(
            &cohort,
            fold,
            &root.join(format!("runs/ms-clam/fold{fold}")),
        );
    }
    let fold0 = root.join("runs/ms-clam/fold0");
    for file in [
        "model.mscl",
        "history.json",
        "test/metrics.json",
        "test/slides.csv",
        "test/tiles.csv",
        "annotated_slides.txt",
        "checkpoints/last.ckpt",
    ] {
        assert!(fold0.join(file).exists(), "{file}");
    }
    let table = run(tool()
        .arg("merge")
        .arg(root.join("runs/ms-clam/fold0"))
        .arg(root.join("runs/ms-clam/fold1"))
        .arg("--out")
        .arg(root.join("summary")));
    assert!(table.contains("| ms-clam | 2 |"), "{table}");
    assert!(root.join("summary/summary.json").exists());
    // The exported model carries its training summary.
    let model = msclam_engine::Model::load(fold0.join("model.mscl")).unwrap();
    assert!(model
        .metadata()
        .get("training.summary")
        .unwrap()
        .contains("\"fold\":0"));
}

#[test]
fn the_ablation_runner_covers_the_grid_and_resumes() {
    let root = temp("ablation");
    let cohort = root.join("cohort");
    run(tool()
        .args([
            "generate", "--slides", "24", "--tiles", "40", "--dim", "8", "--folds", "2", "--out",
        ])
        .arg(&cohort));
    let args = |out: &Path| {
        let mut c = tool();
        c.args([
            "ablation", "--folds", "2", "--epochs", "1", "--grid", "small", "--size", "tiny",
            "--b-plus", "32", "--cohort",
        ])
        .arg(&cohort)
        .arg("--out")
        .arg(out);
        c
    };
    let runs = root.join("runs");
    let table = run(&mut args(&runs));
    for run_name in [
        "clam-sb",
        "ms-clam-0pct",
        "ms-clam-12pct",
        "ms-clam-100pct",
        "ms-clam-12pct-no-att",
        "ms-clam-12pct-randsamp",
        "ms-clam-12pct-doublesamp",
    ] {
        assert!(
            table.contains(&format!("| {run_name} | 2 |")),
            "{run_name} missing from\n{table}"
        );
        assert!(runs.join(run_name).join("fold1/test/metrics.json").exists());
    }
    // A second call finds every fold done and trains nothing.
    let again = run(&mut args(&runs));
    assert!(!again.contains(" fold 0: "), "{again}");
    assert_eq!(
        again.lines().filter(|l| l.starts_with("| ")).count(),
        table.lines().filter(|l| l.starts_with("| ")).count()
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    // Held to the end: a folder the tool makes before it fails is removed with them.
    let (bad, bad2) = (temp("bad"), temp("bad2"));
    let out = tool()
        .args(["train", "--cohort", "/nonexistent/cohort", "--out"])
        .arg(bad.as_os_str())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("/nonexistent/cohort"),
        "{stderr}"
    );
    let out = tool()
        .args(["train", "--epochs", "0", "--out"])
        .arg(bad2.as_os_str())
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("epochs"));
}
