// Shared by the native CPU extensions (kernels/csrc/*.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

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

// One past the last index i < len with w_i > 0 (the extent of a padded problem's mass).
template <typename T>
INLINE int64_t extent(const T* w, int64_t len) {
  while (len > 0 && !(w[len - 1] > 0)) --len;
  return len;
}

// The block of a problem (n, m) with weights a, b that holds its mass: its extents rounded up
// to whole half blocks of weighted_row_sum (32 bytes) within (n, m) (a mat-vec's ragged tail
// costs more than the padding it saves, benchmarks/NOTES.md O25), or the whole problem when a
// side has no mass.
template <typename T>
INLINE void mass_block(const T* a, const T* b, int64_t n, int64_t m, int64_t* rows,
                       int64_t* cols) {
  constexpr int64_t block = 32 / sizeof(T);
  const int64_t r = extent(a, n), c = extent(b, m);
  if (r == 0 || c == 0) {
    *rows = n, *cols = m;
    return;
  }
  *rows = std::min(n, (r + block - 1) / block * block);
  *cols = std::min(m, (c + block - 1) / block * block);
}

// dst (rows, cols), row-major = the top-left rows x cols block of src (row stride ld).
template <typename T>
INLINE void copy_block(const T* src, int64_t ld, int64_t rows, int64_t cols, T* dst) {
  for (int64_t i = 0; i < rows; ++i) std::copy(src + i * ld, src + i * ld + cols, dst + i * cols);
}

// Columns [j0, j0 + W) of weighted_row_sum: four independent partial sums over rows i = 4k..4k+3
// in W lanes, then acc.
template <bool kAccumulate, int64_t W, typename T>
INLINE void weighted_row_block(T* __restrict acc, const T* __restrict coef,
                               const T* __restrict M, int64_t rows, int64_t len, int64_t j0) {
  T p0[W] = {}, p1[W] = {}, p2[W] = {}, p3[W] = {};
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T* r = M + i * len + j0;
    const T c0 = coef[i], c1 = coef[i + 1], c2 = coef[i + 2], c3 = coef[i + 3];
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) {
      p0[l] += c0 * r[l];
      p1[l] += c1 * r[len + l];
      p2[l] += c2 * r[2 * len + l];
      p3[l] += c3 * r[3 * len + l];
    }
  }
  for (; i < rows; ++i) {
    const T* r = M + i * len + j0;
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) p0[l] += coef[i] * r[l];
  }
#pragma omp simd
  for (int64_t l = 0; l < W; ++l) {
    const T total = (p0[l] + p1[l]) + (p2[l] + p3[l]);
    acc[j0 + l] = kAccumulate ? acc[j0 + l] + total : total;
  }
}

// acc[0:len] = sum_{i < rows} coef_i M[i, 0:len] (M row-major, row stride len), or with
// kAccumulate acc[0:len] += that sum; rows with coef 0 add 0. Register blocked: per block of
// kLanes columns (then one of half as many), four independent partial sums over rows, so the
// accumulator is loaded and stored once per block instead of once per row (a chain of
// store-to-load latencies that otherwise bounds short rows, and still bounds the last
// len mod kLanes/2 columns). The one mat-vec of the scaling and stabilised loops.
template <bool kAccumulate, typename T>
INLINE void weighted_row_sum(T* __restrict acc, const T* __restrict coef,
                             const T* __restrict M, int64_t rows, int64_t len) {
  constexpr int64_t kLanes = 64 / sizeof(T);  // one AVX-512 register
  int64_t j0 = 0;
  for (; j0 + kLanes <= len; j0 += kLanes)
    weighted_row_block<kAccumulate, kLanes>(acc, coef, M, rows, len, j0);
  if (j0 + kLanes / 2 <= len) {
    weighted_row_block<kAccumulate, kLanes / 2>(acc, coef, M, rows, len, j0);
    j0 += kLanes / 2;
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

// 32 bytes of T (8 floats, 4 doubles) as one of GCC's vector types: unlike a lane array, the
// compiler keeps it in a register where the ISA has enough of them (benchmarks/NOTES.md, O15,
// O17).
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t kLanes = 32 / sizeof(T);
};

// <x, y> over len entries as four vector chains (one chain is latency-bound), their lanes
// added at the end, then the len mod 4 kLanes last products.
template <typename T>
INLINE T dot(const T* __restrict x, const T* __restrict y, int64_t len) {
  using V = typename Vec<T>::type;
  constexpr int64_t kLanes = Vec<T>::kLanes;
  V acc[4] = {};
  int64_t k = 0;
  for (; k + 4 * kLanes <= len; k += 4 * kLanes)
    for (int c = 0; c < 4; ++c) {
      V xv, yv;
      __builtin_memcpy(&xv, x + k + c * kLanes, sizeof(V));
      __builtin_memcpy(&yv, y + k + c * kLanes, sizeof(V));
      acc[c] += xv * yv;
    }
  const V sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  T total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += sum[l];
  for (; k < len; ++k) total += x[k] * y[k];
  return total;
}

// Below this many entries a pass over the rows of a batch runs on one thread: the fork and join
// would cost more than the second thread saves.
constexpr int64_t kRowPassParallelMinEntries = int64_t(1) << 18;

// out[p] = the sum, over the rows of problem p (rows p n to p n + n - 1 of `batch` problems of
// n rows), of what rows(r0, r1, acc) adds to acc[p] for the rows [r0, r1): the rows split
// evenly over the threads, each adding into its own acc, the sums in double. `entries`: the
// size of the pass, which decides whether a second thread pays. `rows` calls a PER_ISA worker.
template <typename T, typename Rows>
void sum_rows_by_problem(int64_t batch, int64_t n, int64_t entries, int threads, Rows rows,
                         T* out) {
  const int64_t total = batch * n;
  const int parts = threads > 1 && entries >= kRowPassParallelMinEntries ? threads : 1;
  std::vector<double> partial(static_cast<size_t>(parts) * batch, 0.0);
#pragma omp parallel for num_threads(parts)
  for (int part = 0; part < parts; ++part)
    rows(total * part / parts, total * (part + 1) / parts, partial.data() + part * batch);
  for (int64_t p = 0; p < batch; ++p) {
    double sum = 0;
    for (int part = 0; part < parts; ++part) sum += partial[part * batch + p];
    out[p] = T(sum);
  }
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

// exp(x) for x already clamped to the finite range the callers use (fp32 [-87, 50], fp64
// [-700, 350]: kernels/_native.py's EXP_RANGE): x = k ln2 + r, |r| <= ln2/2, e^r by a Taylor
// polynomial (degree 7 for float, 13 for double: truncation below half an ulp), 2^k built in
// the exponent field. Rounding k by
// the add-and-subtract of 1.5 * 2^mantissa keeps every step vectorisable (no floor, no
// float-to-int64 conversion).
template <typename T>
struct ExpConst;
template <>
struct ExpConst<float> {
  using Int = int32_t;
  static constexpr float kMagic = 12582912.0f, kInvLn2 = 1.44269504088896341f;
  static constexpr float kLn2A = 0.693359375f, kLn2B = -2.12194440e-4f;
  static constexpr int kTerms = 7, kShift = 23, kBias = 127;
};
template <>
struct ExpConst<double> {
  using Int = int64_t;
  static constexpr double kMagic = 6755399441055744.0, kInvLn2 = 1.44269504088896340736;
  static constexpr double kLn2A = 6.93147180369123816490e-01;
  static constexpr double kLn2B = 1.90821492927058770002e-10;
  static constexpr int kTerms = 13, kShift = 52, kBias = 1023;
};

// The Taylor coefficients 1/i!, i = 0..N, as a table built at compile time (a constexpr
// function called in the loop is not reliably folded, and a call stops vectorisation).
template <typename T, int N>
struct InverseFactorials {
  T c[N + 1];
  constexpr InverseFactorials() : c() {
    c[0] = 1;
    for (int i = 1; i <= N; ++i) c[i] = c[i - 1] / T(i);
  }
};

template <typename T>
INLINE T exp_in_range(T x) {
  using E = ExpConst<T>;
  const T rounded = std::fma(x, E::kInvLn2, E::kMagic);
  const T k = rounded - E::kMagic;
  const T r = std::fma(-k, E::kLn2B, std::fma(-k, E::kLn2A, x));
  // Horner over the Taylor coefficients 1/i!, highest first.
  static constexpr InverseFactorials<T, E::kTerms> kCoef{};
  T poly = kCoef.c[E::kTerms];
#pragma GCC unroll 16
  for (int i = E::kTerms - 1; i >= 0; --i) poly = std::fma(poly, r, kCoef.c[i]);
  const auto k_int = __builtin_bit_cast(typename E::Int, rounded) -
                     __builtin_bit_cast(typename E::Int, E::kMagic);
  const auto scale = __builtin_bit_cast(T, (k_int + E::kBias) << E::kShift);
  return poly * scale;
}

// Denormal results flushed to zero (MXCSR.FTZ) for the lifetime of the object, on this thread.
struct FlushDenormals {
#if defined(__SSE2__)
  const unsigned csr = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(csr | 0x8000); }
  ~FlushDenormals() { _mm_setcsr(csr); }
#else
  FlushDenormals() {}
#endif
};
