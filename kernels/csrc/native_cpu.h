// Shared by the native CPU extensions (kernels/csrc/*.cpp).
#pragma once

#include <cstdint>

// Work functions are cloned per x86-64 level (AVX-512 / AVX2 / SSE2, chosen at load time) so
// the small helpers they call inline into each clone and vectorise at its width. An OpenMP
// region's outlined body is not cloned: parallel regions call PER_ISA workers, never the reverse.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PER_ISA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PER_ISA
#endif
#define INLINE inline __attribute__((always_inline))

// A buffer address passed from Python (Tensor.data_ptr()) as a typed pointer.
template <typename T>
T* as_ptr(unsigned long long address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

// acc[0:len] = sum_{i < rows} coef_i M[i, 0:len] (M row-major, row stride len), or with
// kAccumulate acc[0:len] += that sum; rows with coef 0 add 0. Register blocked: per block of
// kLanes columns, four independent partial sums over rows i = 4k..4k+3, so the accumulator is
// loaded and stored once per block instead of once per row (a chain of store-to-load latencies
// that otherwise bounds short rows). The one mat-vec of the scaling and stabilised loops.
template <bool kAccumulate, typename T>
INLINE void weighted_row_sum(T* __restrict acc, const T* __restrict coef,
                             const T* __restrict M, int64_t rows, int64_t len) {
  constexpr int64_t kLanes = 64 / sizeof(T);  // one AVX-512 register
  int64_t j0 = 0;
  for (; j0 + kLanes <= len; j0 += kLanes) {
    T p0[kLanes] = {}, p1[kLanes] = {}, p2[kLanes] = {}, p3[kLanes] = {};
    int64_t i = 0;
    for (; i + 4 <= rows; i += 4) {
      const T* r = M + i * len + j0;
      const T c0 = coef[i], c1 = coef[i + 1], c2 = coef[i + 2], c3 = coef[i + 3];
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        p0[l] += c0 * r[l];
        p1[l] += c1 * r[len + l];
        p2[l] += c2 * r[2 * len + l];
        p3[l] += c3 * r[3 * len + l];
      }
    }
    for (; i < rows; ++i) {
      const T* r = M + i * len + j0;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) p0[l] += coef[i] * r[l];
    }
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      const T total = (p0[l] + p1[l]) + (p2[l] + p3[l]);
      acc[j0 + l] = kAccumulate ? acc[j0 + l] + total : total;
    }
  }
  if (j0 == len) return;
  if (!kAccumulate) {
    for (int64_t l = j0; l < len; ++l) acc[l] = 0;
  }
  for (int64_t i = 0; i < rows; ++i) {
    const T* r = M + i * len;
#pragma omp simd
    for (int64_t l = j0; l < len; ++l) acc[l] += coef[i] * r[l];
  }
}

// <x, y> over len entries.
template <typename T>
INLINE T dot(const T* x, const T* y, int64_t len) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < len; ++j) acc += x[j] * y[j];
  return acc;
}

// out[r] = <M_r, x> for the four rows M_0..M_3 (row stride len): four independent chains of
// vector FMAs sharing each load of x (one row's single chain is latency-bound, NOTES O14). The
// chains are reductions, not lane arrays, so the compiler keeps them in registers (O15).
template <typename T>
INLINE void four_dots(const T* __restrict M, const T* __restrict x, int64_t len, T* out) {
  T d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
  for (int64_t j = 0; j < len; ++j) {
    const T xj = x[j];
    d0 += M[j] * xj;
    d1 += M[len + j] * xj;
    d2 += M[2 * len + j] * xj;
    d3 += M[3 * len + j] * xj;
  }
  out[0] = d0;
  out[1] = d1;
  out[2] = d2;
  out[3] = d3;
}
