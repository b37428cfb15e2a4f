#!/usr/bin/env bash
# Fails when a C++ or CUDA source differs from clang-format (Google style).
set -euo pipefail
cd "$(dirname "$0")/.."
bad=()
while IFS= read -r f; do
  clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
if ((${#bad[@]})); then
  echo "not clang-formatted (run: clang-format -i FILE):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "format check: ok"
