# SPDX-License-Identifier: Apache-2.0
# The CUDA backend (docs/cuda.md). Included from model.cmake after ss_engine.
#   ss_cuda_plan     host-side batch planning (plain C++, always built/tested)
#   ss_cuda_kernels  nvcc-compiled runner + kernels; no Abseil inside
#   cuda_model.cc, rwkv6_cuda_model.cc
#                    the engine::Model adapter and the x070/x060 loaders,
#                    compiled into ss_engine
add_library(ss_cuda_plan ${CMAKE_CURRENT_LIST_DIR}/batch_plan.cc)
target_include_directories(ss_cuda_plan PUBLIC ${PROJECT_SOURCE_DIR})
if(STATESTREAM_BUILD_TESTS)
  ss_add_test(engine_cuda_plan_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/batch_plan_test.cc LIBS ss_cuda_plan)
endif()

if(NOT STATESTREAM_HAVE_CUDA)
  return()
endif()

add_library(ss_cuda_kernels STATIC
  ${CMAKE_CURRENT_LIST_DIR}/runner.cu
  ${CMAKE_CURRENT_LIST_DIR}/rwkv7_cuda.cu
  ${CMAKE_CURRENT_LIST_DIR}/rwkv6_cuda.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_kernels.cu
  ${CMAKE_CURRENT_LIST_DIR}/rwkv6_kernels.cu)
target_include_directories(ss_cuda_kernels PUBLIC ${PROJECT_SOURCE_DIR})
set_target_properties(ss_cuda_kernels PROPERTIES
  CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON POSITION_INDEPENDENT_CODE ON)
target_compile_options(ss_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --expt-relaxed-constexpr>)
# Runtime API and cuBLAS only (never the driver library: binaries must start
# on machines without a GPU driver).
target_link_libraries(ss_cuda_kernels PUBLIC ss_cuda_plan CUDA::cudart
                      CUDA::cublas)

target_sources(ss_engine PRIVATE ${CMAKE_CURRENT_LIST_DIR}/cuda_model.cc
                                 ${CMAKE_CURRENT_LIST_DIR}/rwkv6_cuda_model.cc)
target_link_libraries(ss_engine PRIVATE ss_cuda_kernels absl::synchronization)
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/model.cc PROPERTIES
  COMPILE_DEFINITIONS STATESTREAM_HAVE_CUDA=1)

if(STATESTREAM_BUILD_TESTS)
  ss_add_test(engine_cuda_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_model_test.cc
            ${CMAKE_CURRENT_LIST_DIR}/rwkv6_cuda_test.cc
            ${CMAKE_CURRENT_LIST_DIR}/cuda_test_util.cc
            ${CMAKE_CURRENT_SOURCE_DIR}/golden.cc
    LIBS ss_engine ss_cuda_kernels nlohmann_json::nlohmann_json)
endif()
if(STATESTREAM_BUILD_BENCH)
  add_executable(cuda_bench ${PROJECT_SOURCE_DIR}/bench/gpu/cuda_bench.cc)
  target_link_libraries(cuda_bench PRIVATE ss_cuda_kernels)
endif()
