# Third-party libraries, all from Debian packages installed by
# scripts/install-deps.sh. A missing package stops configuration with the
# package name to install.
include(FindPkgConfig)

macro(dualpath_require_package name debian_package)
  find_package(${name} ${ARGN} QUIET)
  if(NOT ${name}_FOUND)
    message(FATAL_ERROR "${name} not found: install Debian package '${debian_package}' "
                        "(scripts/install-deps.sh does it)")
  endif()
endmacro()

dualpath_require_package(fmt libfmt-dev CONFIG)
dualpath_require_package(spdlog libspdlog-dev CONFIG)
dualpath_require_package(CLI11 libcli11-dev CONFIG)
dualpath_require_package(nlohmann_json nlohmann-json3-dev CONFIG)
dualpath_require_package(tomlplusplus libtomlplusplus-dev CONFIG)
dualpath_require_package(ucx libucx-dev CONFIG)

# toml++ is used header-only and without exceptions, so the parser is compiled
# with our sanitizer and fuzzer instrumentation and never throws. Debian's
# imported target forces the prebuilt shared library, so we take only its
# include directory.
get_target_property(_toml_includes tomlplusplus::tomlplusplus INTERFACE_INCLUDE_DIRECTORIES)
add_library(dualpath_tomlplusplus INTERFACE)
target_include_directories(dualpath_tomlplusplus SYSTEM INTERFACE ${_toml_includes})
target_compile_definitions(dualpath_tomlplusplus INTERFACE
  TOML_HEADER_ONLY=1 TOML_EXCEPTIONS=0 TOML_ENABLE_FORMATTERS=0)

if(DUALPATH_BUILD_TESTS)
  dualpath_require_package(GTest libgtest-dev CONFIG)
endif()
if(DUALPATH_BUILD_BENCH)
  dualpath_require_package(benchmark libbenchmark-dev CONFIG)
endif()

# hwloc ships only a pkg-config file.
pkg_check_modules(HWLOC QUIET IMPORTED_TARGET hwloc>=2.5)
if(NOT HWLOC_FOUND)
  message(FATAL_ERROR "hwloc >= 2.5 not found: install Debian package 'libhwloc-dev' "
                      "(scripts/install-deps.sh does it)")
endif()

# The loader's io_uring reads and block checksums; both ship only pkg-config files.
pkg_check_modules(LIBURING QUIET IMPORTED_TARGET liburing>=2.3)
if(NOT LIBURING_FOUND)
  message(FATAL_ERROR "liburing >= 2.3 not found: install Debian package 'liburing-dev' "
                      "(scripts/install-deps.sh does it)")
endif()
pkg_check_modules(XXHASH QUIET IMPORTED_TARGET libxxhash>=0.8)
if(NOT XXHASH_FOUND)
  message(FATAL_ERROR "libxxhash >= 0.8 not found: install Debian package 'libxxhash-dev' "
                      "(scripts/install-deps.sh does it)")
endif()

find_package(Threads REQUIRED)

# CUDA and NCCL are optional: used for compile and link when present, never
# required. Later areas (plugin, loader) consult these variables.
find_path(DUALPATH_NCCL_INCLUDE_DIR nccl.h
          HINTS /usr/local/cuda/include ENV CUDA_HOME PATH_SUFFIXES include)
if(DUALPATH_NCCL_INCLUDE_DIR)
  message(STATUS "NCCL headers: ${DUALPATH_NCCL_INCLUDE_DIR}")
else()
  message(STATUS "NCCL headers: not found (optional)")
endif()
find_library(DUALPATH_NCCL_LIBRARY nccl
             HINTS /usr/local/cuda ENV NCCL_ROOT ENV CUDA_HOME PATH_SUFFIXES lib64 lib
             DOC "libnccl.so")
find_package(CUDAToolkit QUIET)
# Programs that call NCCL and the CUDA runtime from C++ (no nvcc needed):
# `dualpath-bench interference --nccl`. Not in sanitizer or fuzz builds, whose
# runtimes CUDA's libraries do not expect.
if(DUALPATH_NCCL_INCLUDE_DIR AND DUALPATH_NCCL_LIBRARY AND CUDAToolkit_FOUND
   AND NOT DUALPATH_SANITIZER AND NOT DUALPATH_FUZZ)
  set(DUALPATH_HAVE_NCCL ON)
  message(STATUS "NCCL and the CUDA runtime: ${DUALPATH_NCCL_LIBRARY}, CUDA ${CUDAToolkit_VERSION}")
else()
  set(DUALPATH_HAVE_NCCL OFF)
  message(STATUS "NCCL and the CUDA runtime: not used (optional)")
endif()
