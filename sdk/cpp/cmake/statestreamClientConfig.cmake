# SPDX-License-Identifier: Apache-2.0
# find_package(statestreamClient) -> the imported target statestream::client
# (the C++ SDK, its generated API stubs and its status helpers), installed
# by `cmake --install <build> --component statestream_client`. Static,
# position-independent archives built against this machine's Debian gRPC,
# Protobuf and Abseil: link with those same versions (the generated headers
# are tied to the protoc that made them). find_package(statestreamClient
# 0.1) matches 0.1.x only (statestreamClientConfigVersion.cmake).
include(CMakeFindDependencyMacro)
find_dependency(Threads)
find_dependency(Protobuf)
find_dependency(gRPC CONFIG)
find_dependency(absl CONFIG)

get_filename_component(_ss_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET statestream::client)
  add_library(statestream::client INTERFACE IMPORTED)
  set_target_properties(statestream::client PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_ss_prefix}/include"
    INTERFACE_COMPILE_FEATURES cxx_std_17
    INTERFACE_LINK_LIBRARIES
      "${_ss_prefix}/lib/libss_sdk.a;${_ss_prefix}/lib/libss_common_grpc.a;${_ss_prefix}/lib/libss_proto.a;${_ss_prefix}/lib/libss_common.a;gRPC::grpc++;protobuf::libprotobuf;absl::status;absl::statusor;absl::strings;absl::synchronization;absl::time;Threads::Threads")
endif()
unset(_ss_prefix)
