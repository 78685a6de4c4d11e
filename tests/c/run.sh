#!/usr/bin/env bash
# The C API's tests: builds libmsclam, installs it into a temporary prefix, compiles the C and
# C++ tests against the static and the shared library, runs them natively and under valgrind
# memcheck, and builds the C example through pkg-config and through CMake's find_package.
# Closes with "c-tests: N passed, M failed".
source "$(dirname "$0")/../../scripts/env.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
run() {
    local name="$1"
    shift
    echo "--- $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAILED: $name"
    fi
}

"$REPO_ROOT/scripts/install" "$work/prefix" >/dev/null
prefix="$work/prefix"
step "writing fixtures (model and expected outputs from the Rust engine)"
cargo run --release --locked --quiet --example c_fixtures -- "$work/fx"

step "compiling the C and C++ tests"
cflags=(-std=c99 -Wall -Wextra -Werror -pedantic -O1 -g -I"$prefix/include" -Itests/c)
shared=(-L"$prefix/lib" -lmsclam -Wl,-rpath,"$prefix/lib" -lm)
static=("$prefix/lib/libmsclam.a" -lpthread -ldl -lm -lrt -lutil)
wrap="-Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free,--wrap=posix_memalign,--wrap=aligned_alloc,--wrap=memalign"
bin="$work/bin"
mkdir -p "$bin"
for t in test_api test_threads; do
    cc "${cflags[@]}" "tests/c/$t.c" -o "$bin/${t}_shared" "${shared[@]}" -lpthread
    cc "${cflags[@]}" "tests/c/$t.c" -o "$bin/${t}_static" "${static[@]}"
done
cc "${cflags[@]}" -fno-builtin tests/c/test_no_malloc.c -o "$bin/test_no_malloc_static" "${static[@]}" "$wrap"
c++ -std=c++17 -Wall -Wextra -Werror -pedantic -O1 -g -I"$prefix/include" tests/c/test_cpp.cpp \
    -o "$bin/test_cpp_shared" "${shared[@]}"

step "running natively"
for t in test_api_shared test_api_static test_threads_shared test_threads_static test_no_malloc_static test_cpp_shared; do
    run "$t" "$bin/$t" "$work/fx"
done
run "shared library SONAME is versioned" \
    sh -c "readelf -d '$prefix/lib/libmsclam.so' | grep -q 'SONAME.*libmsclam.so.0'"

step "running under valgrind memcheck"
memcheck() {
    local log="$work/$1.valgrind"
    valgrind --error-exitcode=3 --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all \
        "$bin/$1" "$work/fx" >"$work/$1.out" 2>"$log"
    local rc=$?
    tail -n 1 "$work/$1.out"
    grep -E "ERROR SUMMARY|All heap blocks were freed|definitely lost" "$log" | sed "s/^==[0-9]*== /  $1: /"
    return $rc
}
for t in test_api_shared test_no_malloc_static test_threads_static test_cpp_shared; do
    run "valgrind $t" memcheck "$t"
done

step "the ONNX tile encoder (libmsclam built with the onnx feature)"
"$MSCLAM_VENV/bin/python" onnx/tests/onnx_reference.py encoders "$work/encoders" >/dev/null
# The dev profile and the whole workspace's targets, as scripts/test builds them: tract is
# already built there for msclam-onnx's tests, so only libmsclam is rebuilt (a release build of
# tract, or a build of this package alone, which resolves tract's dependencies with other
# features, would add minutes to CI for a correctness test). The libraries are built as the
# tests' dependencies, not selected (see scripts/test); cargo's JSON messages name the shared
# library.
onnx_so="$(cargo build --locked --workspace --bins --tests --benches --examples \
    --features msclam-ffi/onnx --message-format=json-render-diagnostics |
    "$MSCLAM_VENV/bin/python" -c '
import json, sys
found = set()
for line in sys.stdin:
    m = json.loads(line)
    # The library itself, not its unit-test program (which has the same target kinds).
    if m.get("reason") == "compiler-artifact" and "cdylib" in m["target"]["kind"] \
            and not m["profile"]["test"]:
        found.update(f for f in m["filenames"] if f.endswith(".so"))
if len(found) != 1:
    sys.exit(f"expected one shared library from cargo, found {sorted(found)}")
print(found.pop())
')"
test -f "$onnx_so"
onnx_lib="$work/onnx-lib"
mkdir -p "$onnx_lib"
cp "$onnx_so" "$onnx_lib/libmsclam.so.0"
ln -sf libmsclam.so.0 "$onnx_lib/libmsclam.so"
cc "${cflags[@]}" tests/c/test_encoder.c -o "$bin/test_encoder" -L"$onnx_lib" -lmsclam \
    -Wl,-rpath,"$onnx_lib" -lm
run "test_encoder (RGB tiles through tract vs PyTorch's embeddings)" "$bin/test_encoder" "$work/fx" "$work/encoders"
run "the default library has no tract-onnx in it" \
    sh -c "grep -q tract-core '$onnx_lib/libmsclam.so' && ! grep -q tract-core '$prefix/lib/libmsclam.so'"

step "installing and building the example with pkg-config and CMake"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
run "pkg-config build of examples/c/stream_slide.c" sh -c \
    "cc -std=c99 -Wall -Wextra -Werror examples/c/stream_slide.c \$(pkg-config --cflags --libs msclam) \
        -Wl,-rpath,'$prefix/lib' -o '$bin/stream_slide_pkgconfig' && \
     '$bin/stream_slide_pkgconfig' '$work/fx/model.mscl' '$work/fx/slide.f32' '$work/fx/coords.u32' 100"
run "CMake find_package(msclam) build of the example" sh -c \
    "cmake -S tests/c/cmake_consumer -B '$work/cmake' -DCMAKE_PREFIX_PATH='$prefix' \
        -DEXAMPLE_SOURCE='$REPO_ROOT/examples/c/stream_slide.c' >/dev/null && \
     cmake --build '$work/cmake' >/dev/null && \
     '$work/cmake/stream_slide_shared' '$work/fx/model.mscl' '$work/fx/slide.f32' | tail -n 2 && \
     '$work/cmake/stream_slide_static' '$work/fx/model.mscl' '$work/fx/slide.f32' | tail -n 1"

echo
echo "c-tests: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
