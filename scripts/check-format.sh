#!/usr/bin/env bash
# Fails when a C++ or CUDA source differs from clang-format (Google style).
set -euo pipefail
cd "$(dirname "$0")/.."
# The file list first, so that a failing git (no repository, a "dubious
# ownership" refusal) fails the check instead of checking nothing.
files=$(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
[ -n "$files" ] || { echo "format check: no sources listed by git" >&2; exit 1; }
bad=()
while IFS= read -r f; do
  clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done <<<"$files"
if ((${#bad[@]})); then
  echo "not clang-formatted (run: clang-format -i FILE):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "format check: ok"
