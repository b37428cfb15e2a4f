#!/usr/bin/env bash
# Installs the Debian 12 packages statestream builds and tests with, only
# those missing. Needs root (or sudo). Non-interactive.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build ccache pkg-config clang clang-format
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  libabsl-dev libhiredis-dev libsqlite3-dev libxxhash-dev zlib1g-dev
  nlohmann-json3-dev libmicrohttpd-dev libcpp-httplib-dev libgtest-dev libgmock-dev
  libbenchmark-dev
  redis-server redis-tools python3 python3-grpcio python3-pytest python3-yaml grpc-proto
  libicu-dev  # NeoX tokenizer: NFC and Unicode categories
  libssl-dev openssl  # TLS: PEM checks (services/tls.cc); test certificates
  libfaketime  # tests: the wall clock stepped (cmake/ClockStepTests.cmake)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  # env inside sudo: sudo's env_reset would drop a variable set before it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi
