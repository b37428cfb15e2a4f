#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Asks a running statestream server for its health over gRPC.

Usage: health_demo.py HOST:PORT STUBS_DIR
STUBS_DIR holds Python stubs health_pb2*.py of grpc/health/v1/health.proto (the quick start
generates them with protoc + grpc_python_plugin).
"""
import sys

sys.path.insert(0, sys.argv[2])
import grpc  # noqa: E402
import health_pb2  # noqa: E402
import health_pb2_grpc  # noqa: E402

target = sys.argv[1]
with grpc.insecure_channel(target) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", "statestream.v1.Sessions", "statestream.v1.Streams",
                    "statestream.v1.Models"]:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service),
                           timeout=5)
        name = service or "(server)"
        print(f"  health {name:28s} {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            sys.exit(1)
