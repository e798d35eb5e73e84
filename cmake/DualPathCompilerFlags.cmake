# Warnings, sanitizers and fuzzing instrumentation, applied to our targets only
# through the dualpath_compile_options interface target.
add_library(dualpath_compile_options INTERFACE)
add_library(dualpath::compile_options ALIAS dualpath_compile_options)

target_compile_options(dualpath_compile_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align
  -Wmissing-declarations -Wimplicit-fallthrough)

if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  # Lock annotations in common/thread_annotations.h are checked here.
  target_compile_options(dualpath_compile_options INTERFACE
    -Wthread-safety -Wthread-safety-beta)
endif()

if(DUALPATH_WERROR)
  target_compile_options(dualpath_compile_options INTERFACE -Werror)
endif()

if(DUALPATH_SANITIZER)
  if(NOT DUALPATH_SANITIZER MATCHES "^(address,undefined|address|undefined|thread)$")
    message(FATAL_ERROR "DUALPATH_SANITIZER='${DUALPATH_SANITIZER}': "
            "expected 'address,undefined', 'address', 'undefined' or 'thread'")
  endif()
  # UBSan findings must fail tests, not scroll by.
  add_compile_options(-fsanitize=${DUALPATH_SANITIZER} -fno-omit-frame-pointer
                      -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${DUALPATH_SANITIZER})
endif()

if(DUALPATH_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "DUALPATH_FUZZ=ON needs clang (CXX=clang++): libFuzzer ships with clang")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
endif()
