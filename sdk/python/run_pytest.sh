#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Usage: run_pytest.sh PYTHON DIR... — runs pytest over DIRs; exit 77
# (skipped) when PYTHON lacks grpc or pytest, or 1 under CI (CI set: .ci/run
# installs both, so a skip there would hide the whole Python suite).
set -eu
python=$1
shift
if ! "$python" -c 'import grpc, pytest' 2>/dev/null; then
  if [ -n "${CI:-}" ]; then
    echo "FAIL: $python needs python3-grpcio and python3-pytest (CI is set)"
    exit 1
  fi
  echo "skipped: $python needs python3-grpcio and python3-pytest"
  exit 77
fi
exec "$python" -m pytest -q -p no:cacheprovider "$@"
