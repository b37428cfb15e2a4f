# SPDX-License-Identifier: Apache-2.0
# ss_text: tokenizers (RWKV World, byte-level, NeoX) and the sampler (UTF-8
# helpers: common/utf8.h).
# Pure computation over bytes and floats: no I/O beyond reading a vocab file.
add_library(ss_text
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/world_tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/byte_tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/neox_tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/sampler.cc)
target_include_directories(ss_text PUBLIC ${PROJECT_SOURCE_DIR})
# The sampler's arithmetic must be the same bits on every machine (a session
# resumes anywhere): no compiler-chosen fused multiply-adds. No trapping
# math, as in ss_engine: loops of Exp vectorise, values unchanged.
target_compile_options(ss_text PRIVATE -ffp-contract=off -fno-trapping-math)
# ICU for the NeoX tokenizer's NFC and Unicode categories (Debian libicu-dev).
pkg_check_modules(ICU_UC REQUIRED IMPORTED_TARGET icu-uc)
target_link_libraries(ss_text PUBLIC ss_common absl::status absl::statusor
                      absl::strings absl::span
                      PRIVATE PkgConfig::ICU_UC absl::flat_hash_map
                      nlohmann_json::nlohmann_json)

if(STATESTREAM_BUILD_TESTS)
  # OpenSSL only for the test's sha256 check of the parsed vocabulary.
  find_package(OpenSSL REQUIRED COMPONENTS Crypto)
  ss_add_test(engine_text_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/tokenizer_test.cc
            ${CMAKE_CURRENT_LIST_DIR}/sampler_test.cc
    LIBS ss_text OpenSSL::Crypto nlohmann_json::nlohmann_json)
  # ICU's regex engine (icu-i18n) runs the pre-token pattern in the
  # test's reference tokenizer.
  pkg_check_modules(ICU_I18N REQUIRED IMPORTED_TARGET icu-i18n)
  ss_add_test(engine_neox_tokenizer_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/neox_tokenizer_test.cc
            ${CMAKE_CURRENT_LIST_DIR}/neox_reference_test.cc
    LIBS ss_text OpenSSL::Crypto nlohmann_json::nlohmann_json
         PkgConfig::ICU_I18N PkgConfig::ICU_UC)
endif()
