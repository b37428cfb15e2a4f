# SPDX-License-Identifier: Apache-2.0
# ss_engine: model architectures, kernels, thread pool.
add_library(ss_engine
  model.cc
  accuracy.cc
  rwkv7.cc
  rwkv_common.cc
  rwkv4.cc
  rwkv5.cc
  rwkv6.cc
  weight_loader.cc
  weight_arena.cc
  huge_pages.cc
  ops.cc
  weight_writer.cc
  random_model.cc
  thread_pool.cc
  kernels.cc
  kernels_avx512.cc
  kernels_avx512_onerow.cc
  kernels_avx512vnni.cc
  kernels_amx.cc
  kernels_avx512bf16.cc
  kernels_avx2.cc
  kernels_scalar.cc)
target_include_directories(ss_engine PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(ss_engine PUBLIC ss_weights ss_common absl::span
                      absl::flat_hash_map absl::flat_hash_set Threads::Threads
                      PRIVATE PkgConfig::XXHASH ZLIB::ZLIB nlohmann_json::nlohmann_json)
# Fixed evaluation order: no compiler-chosen contractions (determinism).
# -fno-trapping-math only lets GCC turn branches on float comparisons into
# selects (nothing reads the FP exception flags); values are unchanged, and
# loops of Exp/Sigmoid vectorise.
target_compile_options(ss_engine PRIVATE -ffp-contract=off -fno-trapping-math)
set_source_files_properties(kernels_avx512.cc PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-Wno-uninitialized;-Wno-maybe-uninitialized")
# (GCC 12 flags its own _mm512_undefined_ps() inside the intrinsic headers.)
set_source_files_properties(kernels_avx512_onerow.cc PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mtune=skylake-avx512;-Wno-uninitialized;-Wno-maybe-uninitialized")
set_source_files_properties(kernels_avx512vnni.cc PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-Wno-uninitialized;-Wno-maybe-uninitialized")
set_source_files_properties(kernels_amx.cc PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mamx-tile;-mamx-int8;-mamx-bf16;-Wno-uninitialized;-Wno-maybe-uninitialized")
set_source_files_properties(kernels_avx512bf16.cc PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-Wno-uninitialized;-Wno-maybe-uninitialized")
set_source_files_properties(kernels_avx2.cc PROPERTIES COMPILE_OPTIONS
  "-mavx2;-mfma")

if(STATESTREAM_BUILD_TESTS)
  ss_add_test(engine_model_test
    SOURCES model_test.cc model_load_test.cc kernels_test.cc wkv7_test.cc
            thread_pool_test.cc weight_arena_test.cc
            golden.cc
            golden_trace.cc
    LIBS ss_engine nlohmann_json::nlohmann_json)
  ss_add_test(engine_arch_test
    SOURCES arch_golden_test.cc reference_model_test.cc golden.cc golden_trace.cc
    LIBS ss_engine nlohmann_json::nlohmann_json)
endif()

# The CUDA backend (worker/engine/cuda/; builds only its host planner unless
# STATESTREAM_CUDA finds nvcc).
include(${CMAKE_CURRENT_LIST_DIR}/cuda/cuda.cmake)
