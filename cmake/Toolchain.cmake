# SPDX-License-Identifier: Apache-2.0
# Compiler settings shared by every target: warnings, ccache, sanitizers.

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_C_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
  set(CMAKE_CXX_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
  set(CMAKE_CUDA_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
endif()

add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra>")

if(STATESTREAM_SANITIZE)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${STATESTREAM_SANITIZE};-fno-omit-frame-pointer;-fno-sanitize-recover=all>")
  add_link_options("-fsanitize=${STATESTREAM_SANITIZE}")
endif()

# ss_add_test(NAME SOURCES a.cc b.cc LIBS x y [LABELS e2e] [PREFIX p.]): one
# gtest binary, registered with ctest. Tests are labelled "unit" unless LABELS
# says otherwise; PREFIX goes before each test's ctest name (two binaries
# built from one source).
function(ss_add_test name)
  cmake_parse_arguments(T "" "PREFIX" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gmock GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
    STATESTREAM_SHARED_DIR="${STATESTREAM_SHARED_DIR}"
    STATESTREAM_BINARY_DIR="${CMAKE_BINARY_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 TEST_PREFIX "${T_PREFIX}"
                       PROPERTIES LABELS "${T_LABELS}")
endfunction()
