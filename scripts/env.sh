# Sourced by the other scripts: shared settings.
# Build outputs go to a cache outside the clone, keyed on the toolchain (cargo itself rebuilds
# what a changed lock file or source needs), so repeated runs (and CI on the same machine)
# rebuild only what changed. Set CARGO_TARGET_DIR
# to override, or MSCLAM_NO_CACHE=1 to build inside the clone.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
if [[ -z "${CARGO_TARGET_DIR:-}" && -z "${MSCLAM_NO_CACHE:-}" ]]; then
    key="$(rustc -vV | sha256sum | cut -c1-16)"
    export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/msclam/target-$key"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
# libtorch for the trainer: the torch wheel (PyPI torch==2.11.0, which tch 0.24 expects) in a
# virtual environment cached outside the clone, keyed on the Python and torch versions.
TORCH_VERSION=2.11.0
# NumPy in the same environment: the tests write .npy and torch.save files with it.
NUMPY_VERSION=2.2.6
# ONNX and ONNX Runtime in the same environment: the peers of scripts/bench.
ONNX_VERSION=1.23.2
ONNXRUNTIME_VERSION=1.32.0
# Shapely: the independent check of the GeoJSON tumor masks that `msclam score` writes.
SHAPELY_VERSION=2.1.2
py_tag="$(python3 -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')"
py_dir="$(python3 -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')"
if [[ -z "${MSCLAM_VENV:-}" ]]; then
    if [[ -n "${MSCLAM_NO_CACHE:-}" ]]; then
        MSCLAM_VENV="$REPO_ROOT/.venv"
    else
        MSCLAM_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/msclam/venv-$py_tag-torch$TORCH_VERSION"
    fi
fi
export MSCLAM_VENV TORCH_VERSION NUMPY_VERSION ONNX_VERSION ONNXRUNTIME_VERSION SHAPELY_VERSION
export LIBTORCH="$MSCLAM_VENV/lib/$py_dir/site-packages/torch"
# HDF5 1.10 locks files with flock(); that fails on some network filesystems and between
# threads of one process: CLAM users commonly turn it off.
export HDF5_USE_FILE_LOCKING="${HDF5_USE_FILE_LOCKING:-FALSE}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Each step says when it started, so that a log shows where the time went.
step() { printf '\n==> [%s] %s\n' "$(date +%T)" "$*"; }
