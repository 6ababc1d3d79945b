# Instrumented builds, each in a build folder of its own:
#   DEDPO_SANITIZE: AddressSanitizer + UndefinedBehaviorSanitizer on everything dedpo compiles
#     (scripts/test.sh --sanitize);
#   DEDPO_FUZZ: the same plus libFuzzer's coverage instrumentation, and the fuzz targets of fuzz/
#     (clang only; scripts/fuzz.sh).
# LibTorch and the system libraries stay uninstrumented: ASan still sees their heap, not their bugs.
option(DEDPO_SANITIZE "Build everything with -fsanitize=address,undefined." OFF)
option(DEDPO_FUZZ "Build the libFuzzer targets of fuzz/ (clang), instrumented with ASan + UBSan." OFF)

if(DEDPO_SANITIZE OR DEDPO_FUZZ)
  # An undefined-behaviour report stops the program, so a test or a fuzz run cannot pass over it.
  set(dedpo_sanitizer_flags -fsanitize=address,undefined -fno-sanitize-recover=undefined
                            -fno-omit-frame-pointer)
  add_compile_options(${dedpo_sanitizer_flags})
  add_link_options(${dedpo_sanitizer_flags})
  # Boost's internal assertions are compiled out of the Release build that ships (NDEBUG); here
  # too, so the sanitizers report what users run (memory errors, undefined behaviour). (Beast 1.74
  # asserted on a chunk header ended by a bare LF when the vlm annotator parsed HTTP with it.)
  add_compile_definitions(BOOST_DISABLE_ASSERTS)
  # For the few tests that observe glibc's malloc, which AddressSanitizer replaces.
  add_compile_definitions(DEDPO_ADDRESS_SANITIZER)
endif()
if(DEDPO_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "DEDPO_FUZZ needs clang (libFuzzer): configure with -DCMAKE_CXX_COMPILER=clang++, as scripts/fuzz.sh does.")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
