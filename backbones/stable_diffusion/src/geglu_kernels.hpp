#pragma once
// The AVX-512 kernels behind geglu.hpp, over a range of rows. Like the attention kernels
// (small_head_attention_kernels.hpp), they live in a translation unit of their own compiled with
// -mavx512f and free of ATen and of the standard library's inline templates; geglu.cpp calls them
// only after checking the CPU.
#include <cstdint>

namespace dedpo::sd::avx512 {

// x: `rows` rows of 2·n floats, value then gate -> out: rows of n floats, value · gelu(gate), gelu
// the exact one, g·Φ(g).
void geglu_forward(const float* x, int64_t rows, int64_t n, float* out);

// The gradient of sum(dout · value · gelu(gate)) with respect to x, rows of 2·n floats:
// dvalue = dout · gelu(gate), dgate = dout · value · gelu'(gate), gelu'(g) = Φ(g) + g·φ(g).
void geglu_backward(const float* x, const float* dout, int64_t rows, int64_t n, float* dx);

}  // namespace dedpo::sd::avx512
