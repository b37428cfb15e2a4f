# SPDX-License-Identifier: Apache-2.0
# ss_weights: checkpoint files (.pth, .safetensors) -> strided tensor views.
set(SS_WEIGHTS_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/float16.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/weight_file.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/zip_reader.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/pickle_reader.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/pickle_ops.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/pth_reader.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/safetensors_reader.cc)
set(SS_WEIGHTS_DEPS ss_common absl::flat_hash_map absl::flat_hash_set
    absl::strings nlohmann_json::nlohmann_json)

add_library(ss_weights ${SS_WEIGHTS_SOURCES})
target_include_directories(ss_weights PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(ss_weights PUBLIC ss_common absl::status absl::statusor
                      PRIVATE absl::flat_hash_map absl::flat_hash_set
                      absl::strings nlohmann_json::nlohmann_json)

if(STATESTREAM_BUILD_TESTS)
  ss_add_test(engine_weights_test
              SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/weight_file_test.cc
                      ${CMAKE_CURRENT_SOURCE_DIR}/weight_file_bad_input_test.cc
              LIBS ss_weights)
endif()

# libFuzzer target (clang only): the readers are compiled into it directly so
# that they carry the fuzzer's coverage instrumentation. See
# docs/model-files.md for how to run it.
if(STATESTREAM_BUILD_FUZZ)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    add_executable(weight_file_fuzz
                   ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/weight_file_fuzz.cc
                   ${SS_WEIGHTS_SOURCES})
    target_include_directories(weight_file_fuzz PRIVATE ${PROJECT_SOURCE_DIR})
    target_link_libraries(weight_file_fuzz PRIVATE ${SS_WEIGHTS_DEPS})
    target_compile_options(weight_file_fuzz PRIVATE
                           -fsanitize=fuzzer,address,undefined
                           -fno-sanitize-recover=all)
    target_link_options(weight_file_fuzz PRIVATE
                        -fsanitize=fuzzer,address,undefined)
  else()
    message(WARNING "STATESTREAM_BUILD_FUZZ needs clang; weight_file_fuzz "
                    "is not built with ${CMAKE_CXX_COMPILER_ID}")
  endif()
endif()
