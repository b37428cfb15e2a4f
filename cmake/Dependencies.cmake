# SPDX-License-Identifier: Apache-2.0
# Every third-party dependency, from Debian 12's packages (see docs/building.md).

find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
if(NOT STATESTREAM_ENGINE_ONLY)
  find_package(Protobuf REQUIRED)  # module mode: Debian ships no CONFIG package
  find_package(gRPC CONFIG REQUIRED)
  find_package(OpenSSL REQUIRED)  # services/tls.cc checks PEM files
endif()
find_package(nlohmann_json CONFIG REQUIRED)
find_package(ZLIB REQUIRED)
find_package(PkgConfig REQUIRED)
if(NOT STATESTREAM_ENGINE_ONLY)
  pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
endif()
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
pkg_check_modules(SQLITE3 REQUIRED IMPORTED_TARGET sqlite3)  # state_store
if(STATESTREAM_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(STATESTREAM_BUILD_BENCH AND NOT STATESTREAM_ENGINE_ONLY)
  find_package(benchmark CONFIG REQUIRED)
endif()

# CUDA: OFF never looks; AUTO builds the backend when nvcc is usable; ON requires it.
set(STATESTREAM_HAVE_CUDA OFF)
if(NOT STATESTREAM_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual")  # sm_90 + PTX
    endif()
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(STATESTREAM_HAVE_CUDA ON)
  elseif(STATESTREAM_CUDA STREQUAL "ON")
    message(FATAL_ERROR "STATESTREAM_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "statestream: CUDA backend ${STATESTREAM_HAVE_CUDA}")
