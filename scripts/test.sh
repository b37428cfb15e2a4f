#!/usr/bin/env bash
# The test command: configure (Release, Ninja, ccache), build everything once,
# run every test with ctest, then check formatting. Tests that need
# ../shared/testdata fail under CI=1 if it is missing, else skip.
#   BUILD_DIR   build folder (default: build)
#   SANITIZE    e.g. address,undefined: build a second tree with sanitizers
#               and run the unit tests (label "unit") in it as well.
#   TEST_TIMEOUT seconds one test may run before ctest fails it (default
#               900): a hung test fails instead of stalling CI.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
# Paths under the checkout are hashed relative to it, so a fresh clone
# elsewhere (CI) hits the cache another checkout filled.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
JOBS=${JOBS:-$(nproc)}
TEST_TIMEOUT=${TEST_TIMEOUT:-900}

# Tests ON whatever an earlier configure of BUILD_DIR cached, and ctest
# fails when it finds none (a tree configured without them would pass).
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSTATESTREAM_BUILD_TESTS=ON >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error -j "$JOBS" \
  --timeout "$TEST_TIMEOUT"

if [ -n "${SANITIZE:-}" ]; then
  SAN_DIR="$BUILD_DIR-san"
  cmake -S . -B "$SAN_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSTATESTREAM_SANITIZE="$SANITIZE" -DSTATESTREAM_BUILD_BENCH=OFF \
    -DSTATESTREAM_BUILD_TESTS=ON >/dev/null
  cmake --build "$SAN_DIR" -j "$JOBS"
  ctest --test-dir "$SAN_DIR" --output-on-failure --no-tests=error -j "$JOBS" \
    --timeout "$TEST_TIMEOUT" -L unit
fi

scripts/check-format.sh
