# LibTorch comes from the PyTorch wheel in the repo's .venv (scripts/setup.sh), from the `torch` of
# any Python given as -DDEDPO_PYTHON=..., or from a LibTorch of the user's own given through
# Torch_DIR / CMAKE_PREFIX_PATH. Everything else comes from Debian packages.
if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  set(DEDPO_PYTHON "" CACHE FILEPATH "Python whose torch package provides LibTorch (default: .venv/bin/python).")
  set(python ${DEDPO_PYTHON})
  if(NOT python AND EXISTS ${PROJECT_SOURCE_DIR}/.venv/bin/python)
    set(python ${PROJECT_SOURCE_DIR}/.venv/bin/python)
  endif()
  if(python)
    execute_process(COMMAND ${python} -c "import torch.utils; print(torch.utils.cmake_prefix_path, end='')"
                    OUTPUT_VARIABLE torch_prefix RESULT_VARIABLE torch_found ERROR_QUIET)
    if(NOT torch_found EQUAL 0)
      message(FATAL_ERROR "${python} cannot import torch: run scripts/setup.sh, or give -DDEDPO_PYTHON= a Python with torch, or -DTorch_DIR= a LibTorch.")
    endif()
    list(PREPEND CMAKE_PREFIX_PATH ${torch_prefix})
    # The wheel links kineto into libtorch_cpu; naming that library spares TorchConfig's warning
    # that a separate libkineto is missing.
    set(kineto_LIBRARY ${torch_prefix}/../../lib/libtorch_cpu.so CACHE FILEPATH "kineto is inside libtorch_cpu.")
  endif()
endif()

# A CUDA build of LibTorch needs the toolkit's headers and libraries to configure, GPU or not.
# CMP0104 OLD: enable_language(CUDA) in Caffe2's config then leaves CMAKE_CUDA_ARCHITECTURES unset,
# which Caffe2 would otherwise warn that it ignores.
cmake_policy(SET CMP0104 OLD)
find_package(CUDAToolkit QUIET)
# dedpo compiles no CUDA sources of its own: name an architecture so that Caffe2's config skips
# probing for installed GPUs (a try_run that fails on machines without one).
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "9.0")
endif()
# TorchConfig looks for Caffe2 in the system's prefixes before its own folder: beside a system
# LibTorch (Debian's libtorch-dev), a Torch_DIR given alone would get that one's libraries.
if(Torch_DIR AND NOT Caffe2_DIR AND EXISTS "${Torch_DIR}/../Caffe2")
  get_filename_component(Caffe2_DIR "${Torch_DIR}/../Caffe2" ABSOLUTE)
endif()
find_package(Torch QUIET)
if(NOT Torch_FOUND)
  if(NOT CUDAToolkit_FOUND)
    message(FATAL_ERROR "LibTorch was not found and neither was a CUDA toolkit (nvcc on the PATH or in /usr/local/cuda): install the CUDA 13.0 toolkit that the PyTorch wheel needs, then run scripts/setup.sh.")
  endif()
  message(FATAL_ERROR "LibTorch was not found: run scripts/setup.sh (it installs the pinned torch wheel into .venv), or set Torch_DIR to a LibTorch's share/cmake/Torch folder.")
endif()
if(Torch_VERSION VERSION_LESS 2.4)
  message(FATAL_ERROR "dedpo needs LibTorch 2.4 or newer; found ${Torch_VERSION} at ${Torch_DIR}.")
endif()
# TorchConfig finds libc10 with find_library(... PATHS <its lib>), which searches the system's
# folders first: a system LibTorch (Debian's libtorch-dev) would slip its libc10 in beside the
# configured one and crash at start. LibTorch's own is taken instead.
get_filename_component(torch_own_lib_dir "${TORCH_INSTALL_PREFIX}/lib" ABSOLUTE)
foreach(var c10_LIBRARY TORCH_LIBRARY)
  get_filename_component(found_dir "${${var}}" DIRECTORY)
  get_filename_component(found_name "${${var}}" NAME)
  if(NOT found_dir STREQUAL torch_own_lib_dir AND EXISTS "${torch_own_lib_dir}/${found_name}")
    set(wrong "${${var}}")
    set(libraries)
    foreach(library IN LISTS TORCH_LIBRARIES)
      if(library STREQUAL wrong)
        set(library "${torch_own_lib_dir}/${found_name}")
      endif()
      list(APPEND libraries "${library}")
    endforeach()
    set(TORCH_LIBRARIES ${libraries})
    set(${var} "${torch_own_lib_dir}/${found_name}" CACHE FILEPATH "LibTorch's own library" FORCE)
  endif()
endforeach()

set(DEDPO_TORCH_CUDA OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  set(DEDPO_TORCH_CUDA ON)
endif()
message(STATUS "dedpo: LibTorch ${Torch_VERSION} from ${Torch_DIR} (CUDA build: ${DEDPO_TORCH_CUDA})")

find_package(Boost 1.74 REQUIRED COMPONENTS program_options)
find_package(tomlplusplus REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(Threads REQUIRED)
# The CLIP tokenizer's Unicode: NFC, general categories, White_Space, lower-case mappings.
find_package(ICU 60 REQUIRED COMPONENTS uc)
# The vlm annotator's HTTP(S) client; 7.85: thread-safe global init and CURLOPT_PROTOCOLS_STR.
find_package(CURL 7.85 REQUIRED)
# TensorBoard event files (core/proto): Debian's protoc and protobuf lite runtime. The wheel's
# libtorch_cpu links its own protobuf in with hidden symbols, so the two never meet.
find_package(Protobuf 3 REQUIRED)
# cairo draws the report's charts (core/src/chart.cpp) to SVG and PNG.
find_package(PkgConfig REQUIRED)
pkg_check_modules(CAIRO REQUIRED IMPORTED_TARGET cairo-svg cairo-png)

# Torch's imported targets carry its include dirs and ABI flag; wrap them once. The wheel's own
# NVIDIA libraries (nvidia/*/lib beside torch/) come first in the run path, before the toolkit's,
# so that the CUDA runtime LibTorch was built with is the one loaded.
if(NOT TARGET dedpo_torch)
  add_library(dedpo_torch INTERFACE)
  # The wheel's libtorch.so and libtorch_cpu.so export copies of std::filesystem (linked in from
  # their build's static libstdc++ parts). Loaded before libstdc++, they would interpose on every
  # std::filesystem call of ours (and crash: remove_all jumps to a null address). libstdc++ is
  # therefore named first, so that the dynamic linker finds its definitions first.
  target_link_libraries(dedpo_torch INTERFACE "-Wl,--push-state,--no-as-needed" stdc++ "-Wl,--pop-state"
                                              ${TORCH_LIBRARIES})
  target_compile_options(dedpo_torch INTERFACE ${TORCH_CXX_FLAGS})
  # at::parallel_for is inline: in a LibTorch built on OpenMP it runs on one thread in any
  # translation unit compiled without OpenMP. Ours are compiled with it. GCC's code calls libgomp,
  # linked from LibTorch's own folder where it ships one (the wheel does), the file the loader
  # picks anyway: one OpenMP runtime, one thread pool, sized by at::set_num_threads. Clang's (the
  # sanitizer build) calls its own libomp, which also serves LibTorch's libgomp calls.
  file(STRINGS "${TORCH_INSTALL_PREFIX}/include/ATen/Config.h" aten_parallel_openmp REGEX "^#define AT_PARALLEL_OPENMP 1")
  if(aten_parallel_openmp)
    find_package(OpenMP REQUIRED COMPONENTS CXX)
    set(openmp_runtime ${OpenMP_CXX_LIBRARIES})
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      find_library(DEDPO_TORCH_LIBGOMP NAMES libgomp.so.1 PATHS "${torch_own_lib_dir}" NO_DEFAULT_PATH)
      if(DEDPO_TORCH_LIBGOMP)
        set(openmp_runtime ${DEDPO_TORCH_LIBGOMP})
      endif()
    endif()
    target_compile_options(dedpo_torch INTERFACE "$<$<COMPILE_LANGUAGE:CXX>:${OpenMP_CXX_FLAGS}>")
    target_link_libraries(dedpo_torch INTERFACE ${openmp_runtime})
  endif()
  get_filename_component(torch_lib_dir "${TORCH_INSTALL_PREFIX}/lib" ABSOLUTE)
  file(GLOB wheel_nvidia_lib_dirs LIST_DIRECTORIES true "${TORCH_INSTALL_PREFIX}/../nvidia/*/lib" "${TORCH_INSTALL_PREFIX}/../nvidia/cu13/lib")
  set(DEDPO_TORCH_RUNTIME_DIRS ${torch_lib_dir} ${wheel_nvidia_lib_dirs})
  list(REMOVE_DUPLICATES DEDPO_TORCH_RUNTIME_DIRS)
  string(REPLACE ";" ":" DEDPO_TORCH_RUNTIME_PATH "${DEDPO_TORCH_RUNTIME_DIRS}")  # LibTorch's lib first
endif()

# LibTorch 2.x puts its own fmt headers (fmt 12 in torch 2.11) on the include path, ahead of
# /usr/include, so Debian's libfmt headers cannot be used beside it; and libtorch keeps its fmt
# symbols hidden. dedpo therefore uses LibTorch's fmt headers, header-only.
if(NOT TARGET fmt::fmt)
  add_library(dedpo_fmt INTERFACE)
  target_link_libraries(dedpo_fmt INTERFACE dedpo_torch)
  target_compile_definitions(dedpo_fmt INTERFACE FMT_HEADER_ONLY)
  add_library(fmt::fmt ALIAS dedpo_fmt)
endif()
