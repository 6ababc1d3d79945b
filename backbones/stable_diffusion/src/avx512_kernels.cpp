#include "avx512_kernels.hpp"

#include "dedpo/host/accelerator.hpp"

namespace dedpo::sd {

bool avx512_kernels_run_here() {
#if defined(DEDPO_AVX512_KERNELS)
  static const bool runs = cpu_features().avx512;
  return runs;
#else
  return false;
#endif
}

bool avx512_bf16_kernels_run_here() {
#if defined(DEDPO_AVX512_KERNELS) && defined(DEDPO_AVX512_BF16_KERNELS)
  static const bool runs = cpu_features().avx512 && cpu_features().avx512_bf16;
  return runs;
#else
  return false;
#endif
}

}  // namespace dedpo::sd
