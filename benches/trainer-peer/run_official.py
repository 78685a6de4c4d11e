"""Seconds per training epoch: msclam's trainer against the published MS-CLAM code.

Run through scripts/bench-trainer (which builds msclam-train and calls this script with the
project's Python environment); the published code is never vendored here:

    git clone https://github.com/paul-tourniaire/MS-CLAM /somewhere/MS-CLAM
    scripts/bench-trainer --official /somewhere/MS-CLAM          # side by side
    scripts/bench-trainer                                        # our trainer alone

What it does:
  1. `msclam-train generate` writes one Camelyon16-like cohort (default 270 slides of about
     2,100 tiles, D = 1024, seed 1) in msclam's CLAM layout (dataset.csv, h5_files/,
     tile_labels/*.pkl). Its split file is replaced by the bench's: per class, 20 % of the
     slides (rounded) for validation, the rest for training (159 normal slides -> 127 training
     normal slides -> 127 paired steps per epoch); the test column (read by both codes after
     training, outside the timed epochs) repeats 2 validation slides of each class.
  2. With --official DIR, the same cohort in the published code's layout: features/pt_files/
     <slide>.pt (torch.save of the N x D float32 tensor read from the .h5), dataset_csv/
     camelyon16.csv, splits/bench/splits_0.csv, gt_patches_indexes/<slide>.pkl (the list of
     tumorous tile indices: msclam's tile_labels/ are already in that format, re-pickled by
     Python) and an exclusion csv. The checkout is copied (without .git) and the patches in
     patches/ are applied to the copy and printed; the checkout itself is left untouched.
     pandas, scipy, scikit-learn and h5py are installed into this Python environment (pinned
     below) when missing, unless --no-install.
  3. For each thread count: the published main.py with main.sh's flags (MS-CLAM small,
     --ms_clam --use_tile_labels --B 8 --B_gt 1024 --use_att_loss total --exp_weighted_sample
     --sampler_weight_decay 0.9 --labeled_weights_init_val 90 --double_loader
     --tile_labels_at_random 10, --bag_weight 0.6, --drop_out, lr 2e-4, one fold) on the CPU,
     then `msclam-train train` with the same settings (its defaults) on the same fold and the
     same annotated slides (the published run's with_annot_0.csv, passed as --annotated-list;
     without a checkout --annotated-percent 10, the same count), both pinned to the same
     cores (sched_setaffinity, as taskset -c) with OMP/MKL/OPENBLAS_NUM_THREADS = threads.
  4. A markdown table: per implementation and thread count, each epoch's training seconds,
     s/step (mean over the epochs), published / ours, and "other load": the CPUs that other
     processes kept busy during the run (/proc/stat less the run's own CPU time; on 2 cores a
     compile next to the 2-thread runs makes them several times slower). Before each run it
     waits (--wait-quiet, up to 600 s) for 10 s in which the machine is idle. Also the CPU
     model, the date and the load average before and after.

Timed: the training steps of each epoch (ours: history.json's train_seconds; the published
code: patch 0004's perf_counter around its train loop, which includes its torch.load of each
slide's .pt file, from the page cache after the conversion). Validation is not in the epoch
seconds; the published code's is printed separately.

Patches to the published code (patches/, applied at run time to the copy):
  0001-cpu-instance-loss.patch  the CE instance loss is moved with .cuda() unconditionally:
                                 .to(device), so that it runs on the CPU
  0002-numpy2-np-inf.patch      np.Inf was removed in NumPy 2 (only reached with
                                 --early_stopping, not by the reference flags)
  0003-topk-stand-in.patch      only when `import topk` fails: smooth-topk (SmoothTop1SVM) is
                                 not on PyPI; it is imported at module level but used only with
                                 --bag_loss/--inst_loss svm, so a stand-in class that raises
  0004-epoch-timing.patch       prints "MSCLAM_BENCH epoch=E train_seconds=S val_seconds=V
                                 steps=N" after each epoch

Tested with Python 3.11, torch 2.11.0 (CUDA wheel, run on the CPU), numpy 2.2.6, pandas 2.2.3,
scipy 1.15.2, scikit-learn 1.6.1, h5py 3.13.0, and MS-CLAM at commit 18e8827.
"""

import argparse
import csv
import datetime
import json
import os
import pickle
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"
# What the published code imports beyond torch and numpy, pinned (versions that support
# Python 3.11 and NumPy 2.2); numpy and torch are held at the installed versions.
PEER_PACKAGES = {
    "pandas": "pandas==2.2.3",
    "scipy": "scipy==1.15.2",
    "sklearn": "scikit-learn==1.6.1",
    "h5py": "h5py==3.13.0",
}
DIM = 1024


def log(msg):
    print(f"==> [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"bench-trainer: {msg}", file=sys.stderr)
    sys.exit(1)


def parse_args():
    p = argparse.ArgumentParser(
        description="Seconds per training epoch: msclam-train against the published MS-CLAM "
        "code (--official DIR) on one generated cohort, or msclam-train alone.",
    )
    p.add_argument("--msclam-train", required=True, type=Path, help="the msclam-train binary")
    p.add_argument("--official", type=Path,
                   help="a checkout of https://github.com/paul-tourniaire/MS-CLAM")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (1,2)")
    p.add_argument("--slides", type=int, default=270, help="slides, train + val (270)")
    p.add_argument("--tiles", type=int, default=2100, help="mean tiles per slide (2100)")
    p.add_argument("--epochs", type=int, default=2, help="epochs (2)")
    p.add_argument("--core", type=int, default=0,
                   help="first core to pin to; t threads use cores core..core+t-1 (0)")
    p.add_argument("--seed", type=int, default=1, help="cohort, split and training seed (1)")
    p.add_argument("--work", type=Path,
                   help="keep the cohorts, logs and runs here (reused when the sizes match); "
                   "default: a temporary folder, removed at the end")
    p.add_argument("--wait-quiet", type=int, default=600, metavar="SECONDS",
                   help="before each run, wait up to this long for 10 s in which other "
                   "processes keep less than 0.1 CPU busy (600; 0: do not wait)")
    p.add_argument("--no-install", action="store_true",
                   help="do not pip-install the published code's missing packages")
    p.add_argument("--only", choices=["ours", "official"],
                   help="run one side only (with --official)")
    a = p.parse_args()
    try:
        a.threads = [int(t) for t in a.threads.split(",") if t.strip()]
    except ValueError:
        fail(f"--threads: not a comma-separated list of integers: {a.threads}")
    if not a.threads or min(a.threads) < 1:
        fail("--threads: give at least one count >= 1")
    if a.slides < 10 or a.tiles < 20 or a.epochs < 1:
        fail("--slides >= 10, --tiles >= 20 and --epochs >= 1 please")
    if a.official is not None:
        a.official = a.official.resolve()
        if not (a.official / "main.py").is_file() or not (
                a.official / "utils" / "training_utils.py").is_file():
            fail(f"{a.official} is not a checkout of MS-CLAM (no main.py, utils/training_utils.py);"
                 " get one with: git clone https://github.com/paul-tourniaire/MS-CLAM")
    if a.only == "official" and a.official is None:
        fail("--only official needs --official DIR")
    return a


# ---------------------------------------------------------------------------------------------
# Machine


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cores_for(threads, first):
    avail = sorted(os.sched_getaffinity(0))
    if threads > len(avail):
        log(f"warning: {threads} threads on {len(avail)} available cores")
    start = avail.index(first) if first in avail else 0
    return [avail[(start + i) % len(avail)] for i in range(min(threads, len(avail)))]


def busy_seconds():
    """CPU seconds spent busy by the whole machine so far (/proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    ticks = [int(v) for v in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit):
    """Waits (up to limit seconds) for a 10 s window in which other processes keep less than
    0.1 CPU busy; returns at once when busy time cannot be read."""
    if limit <= 0 or busy_seconds() is None:
        return
    deadline = time.monotonic() + limit
    said = False
    while True:
        b0 = busy_seconds()
        time.sleep(10)
        load = (busy_seconds() - b0) / 10
        if load < 0.1:
            return
        if time.monotonic() >= deadline:
            log(f"warning: the machine is still busy ({load:.1f} CPUs); running anyway")
            return
        if not said:
            log(f"waiting up to {limit} s for a quiet machine ({load:.1f} CPUs busy)")
            said = True


def run_pinned(cmd, cores, threads, log_path, cwd=None, echo=lambda line: False, extra_env=None):
    """Runs cmd pinned to cores with the thread variables set; writes its output to log_path,
    echoing the lines echo() accepts. Returns the exit status and how many CPUs other
    processes kept busy on average meanwhile (the machine's busy time less the command's)."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env.update(extra_env or {})
    with open(log_path, "w") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n# cores {cores}, {threads} threads, cwd {cwd}\n")
        out.flush()
        busy0, wall0 = busy_seconds(), time.monotonic()
        own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        own0 = own0.ru_utime + own0.ru_stime + sum(os.times()[:2])
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )
        for line in proc.stdout:
            out.write(line)
            if echo(line):
                print("    " + line.rstrip(), file=sys.stderr, flush=True)
        rc = proc.wait()
        busy1, wall = busy_seconds(), time.monotonic() - wall0
        own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        own1 = own1.ru_utime + own1.ru_stime + sum(os.times()[:2])
        other = None
        if busy0 is not None and busy1 is not None and wall > 0:
            other = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
        out.write(f"# other processes kept {other} CPUs busy on average\n")
        return rc, other


def tail(path, n=40):
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------------
# The cohort


def generate_cohort(args, root):
    params = {"slides": args.slides, "tiles": args.tiles, "dim": DIM, "seed": args.seed}
    stamp = root / "bench-params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        log(f"reusing the cohort in {root}")
    else:
        if root.exists():
            shutil.rmtree(root)
        need = args.slides * args.tiles * DIM * 4 * (2 if args.official else 1)
        free = shutil.disk_usage(root.parent).free
        if free < need * 1.1:
            fail(f"{root.parent}: {free / 2**30:.1f} GiB free, the cohort needs about "
                 f"{need / 2**30:.1f} GiB (--work elsewhere?)")
        log(f"generating {args.slides} slides x ~{args.tiles} tiles (D {DIM}, seed {args.seed}) "
            f"into {root}")
        subprocess.run(
            [str(args.msclam_train), "generate", "--out", str(root), "--slides",
             str(args.slides), "--tiles", str(args.tiles), "--dim", str(DIM), "--folds", "1",
             "--seed", str(args.seed)], check=True, stdout=sys.stderr)
        write_split(root, args.seed)
        stamp.write_text(json.dumps(params))
    return read_cohort(root)


def read_rows(root):
    with open(root / "dataset.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_split(root, seed):
    """Per class (in dataset order, shuffled with seed): round(20 %) validation, the rest
    training; test: the first 2 validation slides of each class."""
    rows = read_rows(root)
    rng = random.Random(seed)
    train, val, test = [], [], []
    for label in ("normal_tissue", "tumor_tissue"):
        ids = [r["slide_id"] for r in rows if r["label"] == label]
        rng.shuffle(ids)
        n_val = max(1, round(0.2 * len(ids)))
        val += sorted(ids[:n_val])
        train += sorted(ids[n_val:])
        test += sorted(ids[:n_val])[:2]
    split_dir = root / "splits"
    for old in split_dir.glob("splits_*.csv"):
        old.unlink()
    with open(split_dir / "splits_0.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "train", "val", "test"])
        for i in range(max(len(train), len(val), len(test))):
            w.writerow([i] + [c[i] if i < len(c) else "" for c in (train, val, test)])


def read_cohort(root):
    rows = read_rows(root)
    label = {r["slide_id"]: r["label"] for r in rows}
    cols = {"train": [], "val": [], "test": []}
    with open(root / "splits" / "splits_0.csv", newline="") as f:
        for r in csv.DictReader(f):
            for k in cols:
                if r[k]:
                    cols[k].append(r[k])
    tumor_train = [s for s in cols["train"] if label[s] == "tumor_tissue"]
    normal_train = [s for s in cols["train"] if label[s] == "normal_tissue"]
    return {"root": root, "rows": rows, "label": label, "split": cols,
            "tumor_train": tumor_train, "normal_train": normal_train,
            "tumors": sum(1 for r in rows if r["label"] == "tumor_tissue")}


# ---------------------------------------------------------------------------------------------
# Our trainer


def run_ours(args, cohort, threads, cores, out, annotated_list):
    if out.exists():
        shutil.rmtree(out)
    cmd = [args.msclam_train, "train", "--cohort", cohort["root"], "--fold", "0",
           "--out", out, "--device", "cpu", "--method", "ms-clam", "--size", "small",
           "--sampler", "ew", "--attention-loss", "total", "--b-plus", "1024",
           "--epochs", args.epochs, "--threads", threads, "--seed", args.seed]
    if annotated_list is not None:
        cmd += ["--annotated-list", annotated_list]
    else:
        cmd += ["--annotated-percent", "10"]
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    log(f"ours: {threads} thread(s) on cores {cores}; log {log_path}")
    rc, other = run_pinned(cmd, cores, threads, log_path, echo=lambda l: " epoch " in l,
                           extra_env={"RUST_LOG": "info"})
    if rc != 0:
        print(tail(log_path), file=sys.stderr)
        fail(f"msclam-train train failed ({rc}); log: {log_path}")
    history = json.loads((out / "history.json").read_text())
    return [float(r["train_seconds"]) for r in history], other


# ---------------------------------------------------------------------------------------------
# The published code


def ensure_packages(no_install):
    import importlib.util
    missing = [spec for mod, spec in PEER_PACKAGES.items()
               if importlib.util.find_spec(mod) is None]
    if not missing:
        return
    if no_install:
        fail(f"the published code needs {', '.join(missing)} (without --no-install they are "
             f"installed into {sys.prefix})")
    import numpy
    import torch
    constraints = Path(tempfile.mkstemp(suffix=".txt")[1])
    constraints.write_text(f"numpy=={numpy.__version__}\ntorch=={torch.__version__}\n")
    log(f"installing {' '.join(missing)} into {sys.prefix} (for the published code)")
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-c", str(constraints), *missing],
                       check=True, stdout=sys.stderr)
    except subprocess.CalledProcessError:
        fail("pip could not install " + " ".join(missing) + " (no network?). On a machine "
             "with PyPI: " + f"{sys.executable} -m pip install " + " ".join(missing))
    finally:
        constraints.unlink()


def apply_patch(root, patch_path):
    """Applies a unified diff (the -p1 form of patches/) to the files under root: each hunk's
    old lines must match exactly, at the stated line or, failing that, at one place only."""
    lines = patch_path.read_text().splitlines(True)
    i = 0
    while i < len(lines):
        if not lines[i].startswith("--- "):
            i += 1
            continue
        old_name = lines[i][4:].strip().split("\t")[0]
        new_name = lines[i + 1][4:].strip().split("\t")[0]
        i += 2
        target = root / new_name.split("/", 1)[1]
        if old_name == "/dev/null":
            if target.exists():
                fail(f"{patch_path.name}: {target} already exists")
            text = []
        else:
            text = target.read_text().splitlines(True)
        offset = 0
        while i < len(lines) and lines[i].startswith("@@"):
            start = int(lines[i].split()[1].split(",")[0][1:])
            i += 1
            old, new = [], []
            while i < len(lines) and lines[i][:1] in (" ", "-", "+", "\\"):
                tag, body = lines[i][:1], lines[i][1:]
                if tag in (" ", "-"):
                    old.append(body)
                if tag in (" ", "+"):
                    new.append(body)
                i += 1
            at = max(start - 1, 0) + offset if old else len(text)
            if text[at:at + len(old)] != old:
                places = [k for k in range(len(text) - len(old) + 1)
                          if text[k:k + len(old)] == old]
                if len(places) != 1:
                    fail(f"{patch_path.name} does not apply to {target} (the checkout differs "
                         f"from MS-CLAM commit 18e8827 there)")
                at = places[0]
            text[at:at + len(old)] = new
            offset += len(new) - len(old)
        target.write_text("".join(text))


def prepare_code(args, work):
    code = work / "official-code"
    if code.exists():
        shutil.rmtree(code)
    shutil.copytree(args.official, code, ignore=shutil.ignore_patterns(".git"))
    patches = sorted(PATCHES.glob("*.patch"))
    try:
        import topk  # noqa: F401
        patches = [p for p in patches if "topk" not in p.name]
    except ImportError:
        pass
    print(f"\nPatches applied to a copy of {args.official} ({code}), not to the checkout:\n",
          file=sys.stderr)
    for p in patches:
        apply_patch(code, p)
        print(f"# {p.name}\n{p.read_text()}", file=sys.stderr)
    return code


def prepare_data(args, cohort, work):
    """The cohort in the published code's layout, under work/official-data (the published
    main.py is run from there: it reads dataset_csv/ and splits/ relative to its cwd)."""
    import h5py
    import torch
    data = work / "official-data"
    params = {"slides": args.slides, "tiles": args.tiles, "dim": DIM, "seed": args.seed}
    stamp = data / "bench-params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        log(f"reusing the published layout in {data}")
        return data
    if data.exists():
        shutil.rmtree(data)
    root = cohort["root"]
    pt_dir = data / "features" / "pt_files"
    gt_dir = data / "gt_patches_indexes"
    for d in (pt_dir, gt_dir, data / "dataset_csv", data / "splits" / "bench"):
        d.mkdir(parents=True)
    shutil.copy(root / "dataset.csv", data / "dataset_csv" / "camelyon16.csv")
    shutil.copy(root / "splits" / "splits_0.csv", data / "splits" / "bench" / "splits_0.csv")
    excl = root / "exclusions.csv"
    if excl.exists():
        shutil.copy(excl, data / "exclusions.csv")
    else:
        (data / "exclusions.csv").write_text("slide_id\n")
    used = sorted(set(sum(cohort["split"].values(), [])))
    log(f"converting {len(used)} slides: h5_files/*.h5 -> features/pt_files/*.pt, "
        f"tile_labels/*.pkl -> gt_patches_indexes/*.pkl")
    for sid in used:
        with h5py.File(root / "h5_files" / f"{sid}.h5", "r") as f:
            feats = torch.from_numpy(f["features"][:].astype("float32", copy=False))
        torch.save(feats, pt_dir / f"{sid}.pt")
        labels = root / "tile_labels" / f"{sid}.pkl"
        if labels.exists():
            with open(labels, "rb") as f:
                tumor = [int(t) for t in pickle.load(f)]
            if any(t < 0 or t >= feats.shape[0] for t in tumor):
                fail(f"{labels}: a tile index is out of range")
            with open(gt_dir / f"{sid}.pkl", "wb") as f:
                pickle.dump(tumor, f)
    stamp.write_text(json.dumps(params))
    return data


def run_official(args, code, data, threads, cores, work):
    name = f"official-t{threads}"
    results = work / "official-results" / name
    if results.exists():
        shutil.rmtree(results)
    cmd = [sys.executable, code / "main.py",
           "--data_root_dir", data, "--max_epochs", args.epochs, "--lr", "2e-4", "--k", "1",
           "--results_dir", results, "--split_dir", "bench", "--drop_out", "--bag_loss", "ce",
           "--exp_code", "bench", "--task", "camelyon16", "--inst_loss", "ce",
           "--bag_weight", "0.6", "--B", "8", "--ms_clam", "--use_tile_labels",
           "--B_gt", "1024", "--use_att_loss", "total", "--att_weight", "1.0",
           "--exp_weighted_sample", "--sampler_weight_decay", "0.90",
           "--labeled_weights_init_val", "90", "--double_loader",
           "--tile_labels_at_random", "10", "--to_exclude", data / "exclusions.csv",
           "--gt_dir", data / "gt_patches_indexes", "--seed", args.seed]
    log_path = work / f"{name}.log"
    log(f"published: {threads} thread(s) on cores {cores}; log {log_path}")
    rc, other = run_pinned(cmd, cores, threads, log_path, cwd=data,
                           echo=lambda l: l.startswith("MSCLAM_BENCH") or l.startswith("Epoch:"),
                           extra_env={"CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    train_s, val_s, steps = [], [], None
    for line in Path(log_path).read_text().splitlines():
        if line.startswith("MSCLAM_BENCH "):
            kv = dict(item.split("=") for item in line.split()[1:])
            train_s.append(float(kv["train_seconds"]))
            val_s.append(float(kv["val_seconds"]))
            steps = int(kv["steps"])
    if len(train_s) != args.epochs:
        print(tail(log_path), file=sys.stderr)
        fail(f"the published main.py failed ({rc}) after {len(train_s)} of {args.epochs} "
             f"timed epochs; log: {log_path}")
    if rc != 0:
        # After the timed epochs: its test summary (main.py's f1_score divides by
        # precision + recall, zero when no test slide is called tumor, as after 2 epochs on a
        # small cohort) does not change the epochs' seconds.
        last = tail(log_path, 1)
        log(f"warning: the published main.py exited with {rc} after its timed epochs "
            f"({last.strip()}); log: {log_path}")
    annotated = results / "bench_s{}".format(args.seed) / "with_annot_0.csv"
    with open(annotated, newline="") as f:
        ids = [r["slide_id"] for r in csv.DictReader(f)]
    return train_s, {"val_seconds": val_s, "steps": steps, "annotated": ids, "other": other}


# ---------------------------------------------------------------------------------------------


def main():
    args = parse_args()
    args.msclam_train = args.msclam_train.resolve()
    if not args.msclam_train.is_file():
        fail(f"{args.msclam_train}: no such binary (scripts/bench-trainer builds it)")
    load_before = loadavg()
    started = datetime.datetime.now()
    tmp = None
    if args.work is None:
        tmp = Path(tempfile.mkdtemp(prefix="msclam-bench-trainer-"))
        work = tmp
    else:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        report = bench(args, work)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(args, report, started, load_before, loadavg())


def bench(args, work):
    cohort = generate_cohort(args, work / "cohort")
    steps = len(cohort["normal_train"])
    code = data = None
    if args.official is not None and args.only != "ours":
        ensure_packages(args.no_install)
        code = prepare_code(args, work)
        data = prepare_data(args, cohort, work)
    runs = []
    annotated_list = None
    for t in args.threads:
        cores = cores_for(t, args.core)
        if code is not None:
            wait_quiet(args.wait_quiet)
            secs, info = run_official(args, code, data, t, cores, work)
            if info["steps"] != steps:
                log(f"warning: the published code ran {info['steps']} steps per epoch, "
                    f"the split has {steps} training normal slides")
            runs.append({"impl": "published MS-CLAM", "threads": t, "cores": cores,
                         "epochs": secs, "steps": info["steps"], "val": info["val_seconds"],
                         "other": info["other"]})
            if annotated_list is None:
                annotated_list = work / "annotated.txt"
                annotated_list.write_text("\n".join(info["annotated"]) + "\n")
        if args.only != "official":
            wait_quiet(args.wait_quiet)
            secs, other = run_ours(args, cohort, t, cores, work / "ours" / f"t{t}",
                                   annotated_list)
            runs.append({"impl": "msclam-train", "threads": t, "cores": cores,
                         "epochs": secs, "steps": steps, "val": None, "other": other})
    return {"cohort": cohort, "runs": runs, "steps": steps, "tiles": mean_tiles(cohort),
            "annotated": annotated_list.read_text().split() if annotated_list else None}


def mean_tiles(cohort):
    """Mean tiles per train+val slide, from the .h5 shapes (h5py when present)."""
    try:
        import h5py
    except ImportError:
        return None
    ids = cohort["split"]["train"] + cohort["split"]["val"]
    n = 0
    for sid in ids:
        with h5py.File(cohort["root"] / "h5_files" / f"{sid}.h5", "r") as f:
            n += f["features"].shape[0]
    return n / len(ids)


def print_report(args, report, started, load_before, load_after):
    cohort, runs, steps = report["cohort"], report["runs"], report["steps"]
    split = cohort["split"]
    tiles = report["tiles"]
    # Without the published run: --annotated-percent 10, round(10 % of train + val tumors).
    n_annot = (len(report["annotated"]) if report["annotated"] is not None
               else round(0.10 * sum(1 for s in split["train"] + split["val"]
                                     if cohort["label"][s] == "tumor_tissue")))
    ours = {r["threads"]: r for r in runs if r["impl"] == "msclam-train"}
    theirs = {r["threads"]: r for r in runs if r["impl"] != "msclam-train"}

    def per_step(r):
        return sum(r["epochs"]) / len(r["epochs"]) / r["steps"]

    lines = []
    lines.append(f"Training epochs, {started:%Y-%m-%d %H:%M}, {cpu_model()} "
                 f"({os.cpu_count()} logical CPUs); load average {load_before} before, "
                 f"{load_after} after.")
    lines.append(
        f"Cohort: `msclam-train generate` seed {args.seed}, {len(split['train'])} train + "
        f"{len(split['val'])} val slides"
        + (f" (~{tiles:.0f} tiles each)" if tiles else f" (~{args.tiles} tiles each)")
        + f", D {DIM}; {steps} paired steps per epoch; {n_annot} training tumor slides with "
        f"tile labels; MS-CLAM small, reference settings (EW sampler, B 8, B_gt 1024, "
        f"attention loss total). Seconds of the training steps of each epoch (no validation); "
        f"other load: CPUs kept busy by other processes during the run (0.0 on a quiet "
        f"machine; above 0.1 the numbers are skewed).")
    lines.append("")
    head = ["implementation", "threads", "cores"] + [
        f"epoch {e + 1} (s)" for e in range(args.epochs)] + [
        "s/step", "published / ours", "other load"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    for r in runs:
        ratio = ""
        t = r["threads"]
        if r["impl"] == "msclam-train" and t in theirs:
            ratio = f"{per_step(theirs[t]) / per_step(ours[t]):.2f}x"
        row = [r["impl"], str(t), ",".join(map(str, r["cores"]))] + [
            f"{s:.2f}" for s in r["epochs"]] + [
            f"{per_step(r):.4f}", ratio, "?" if r["other"] is None else f"{r['other']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    vals = [(r["threads"], r["val"]) for r in runs if r["val"]]
    if vals:
        lines.append("")
        lines.append("Published code's validation after each epoch (not in the table): " + "; ".join(
            f"{t} thread(s): " + ", ".join(f"{v:.2f} s" for v in vs) for t, vs in vals) + ".")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
