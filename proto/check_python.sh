#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Compiles the protos for Python and imports the generated modules.
# Usage: check_python.sh PROTOC GRPC_PYTHON_PLUGIN PYTHON PROTO_DIR FILE...
# Exit 77 (skipped) when PYTHON has no grpc module, or 1 under CI (CI set).
set -eu
protoc=$1 plugin=$2 python=$3 dir=$4
shift 4
if ! "$python" -c 'import grpc' 2>/dev/null; then
  if [ -n "${CI:-}" ]; then
    echo "FAIL: $python cannot import grpc (CI is set; install python3-grpcio)"
    exit 1
  fi
  echo "skipped: $python cannot import grpc (install python3-grpcio)"
  exit 77
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$protoc" -I "$dir" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python="$plugin" "$@"
PYTHONPATH=$out "$python" -c '
import statestream.v1.statestream_pb2 as pb
import statestream.v1.statestream_pb2_grpc as rpc
import statestream.v1.internal_pb2
import google.rpc.status_pb2, google.rpc.error_details_pb2
for name in ("Sessions", "Streams", "Models"):
    assert hasattr(rpc, name + "Stub"), name
assert pb.Reason.Name(4) == "POSITION_MISMATCH"
print("python stubs ok:", sorted(pb.DESCRIPTOR.services_by_name))
'
