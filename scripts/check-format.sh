#!/usr/bin/env bash
# Fails when a C++ source differs from clang-format (Google style).
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(git ls-files '*.h' '*.cc' '*.cu' | xargs -r clang-format --dry-run 2>&1 \
  | grep -oE '^[^:]+:[0-9]+:[0-9]+: (warning|error)' | cut -d: -f1 | sort -u)
if [ -n "$bad" ]; then
  echo "not clang-formatted (run: clang-format -i FILE):"
  echo "$bad"
  exit 1
fi
echo "format check: ok"
