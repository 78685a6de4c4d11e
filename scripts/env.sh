# Sourced by the other scripts: shared settings.
# Build outputs go to a cache outside the clone, keyed on the toolchain and the lock file, so
# repeated runs (and CI on the same machine) rebuild only what changed. Set CARGO_TARGET_DIR
# to override, or MSCLAM_NO_CACHE=1 to build inside the clone.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
if [[ -z "${CARGO_TARGET_DIR:-}" && -z "${MSCLAM_NO_CACHE:-}" ]]; then
    key="$( (rustc -vV; cat Cargo.lock 2>/dev/null) | sha256sum | cut -c1-16)"
    export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/msclam/target-$key"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s\n' "$*"; }
