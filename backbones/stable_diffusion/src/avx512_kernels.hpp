#pragma once
// What the callers of dedpo_sd's AVX-512 kernels (src/*_avx512.cpp: attention, GEGLU, transpose, matmul, im2col;
// src/*_avx512bf16.cpp: the bf16 matmul)
// share: whether the kernels run here, and the OpenMP build their at::parallel_for needs.
#include <ATen/Parallel.h>

// at::parallel_for is inline: without OpenMP in its caller it would run every task on the calling
// thread (cmake/DedpoDependencies.cmake compiles dedpo with LibTorch's OpenMP).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "LibTorch runs on OpenMP: compile this file with -fopenmp, or at::parallel_for runs on one thread"
#endif

namespace dedpo::sd {

// Whether this build holds the kernels (CMakeLists.txt defines DEDPO_AVX512_KERNELS where it
// compiles them with -mavx512f) and this CPU has AVX-512F; the CPU is asked once.
bool avx512_kernels_run_here();

// The same for the AVX512-BF16 kernels (src/*_avx512bf16.cpp, DEDPO_AVX512_BF16_KERNELS).
bool avx512_bf16_kernels_run_here();

}  // namespace dedpo::sd
