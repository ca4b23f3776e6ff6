// Log-sum-exp passes of the streaming soft-min on the CPU (optical_ops/softmin_streaming.py).
//
// The caller computes one row strip of Z_ij = (s / eps) <x'_i, y'_j> with a batched GEMM into
// tiles laid out (B, T, R, W): batch, column tile, strip row, column within the tile (the last
// tile may be partly padding: only columns j < m are read). This file turns the strip into
//
//   row update   f_i = damping * (r_i - eps * LSE_j(hc_j + Z_ij)),   hc_j = log b_j + (g_j - c_j) / eps
//
// and, optionally, folds the new rows into the next column update while the strip is in cache:
//
//   col state    (M_j, S_j) with LSE_i(hr_i + Z_ij) = M_j + log S_j,   hr_i = log a_i + (f_i - r_i) / eps
//
// kept as a running maximum and a sum rescaled to it, so a column update costs no GEMM of its
// own (the scaling loop's fused pass, csrc/sinkhorn_scaling_cpu.cpp, in the log domain).
// fused_softmin does the same sweep (float32, x86-64-v4) forming the product itself, with one exp
// per entry for both updates (see "The fused sweep" below).
// After the loop, strip_plan overwrites a strip with the plan P_ij = exp(hr_i + hc_j + Z_ij)
// and accumulates P 1, P^T 1 and <P, Z> (the loss and the gradient's products need them).
// Long sums (a row over all column tiles, a column over all strips) add per-tile or per-strip
// partial sums in T into double (float64 buffers for the column sums): kept in float over
// 16384 terms they cost ~5e-5 relative in f on W5, 10x the PyTorch path's error.
// Each pass is vectorised along contiguous columns; exp is a polynomial (native_cpu.h's
// exp_in_range) that GCC vectorises, as glibc's vector exp needs -ffast-math, which would break
// the -inf handling.
//
// Plain C++ with OpenMP, no PyTorch header: the Python side (kernels/cpu_streaming.py) passes
// data pointers of contiguous CPU tensors it has checked.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>

#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <vector>

#include "native_cpu.h"

namespace {

// exp(x) for x <= 0 (or -inf), clamped below at ExpFloor (EXP_FLOOR in optical_ops/logsumexp.py:
// a smaller argument would give a slow denormal, ~1e-35 of the largest term), by the shared
// vectorisable exp of native_cpu.h.
template <typename T>
struct ExpFloor;
template <>
struct ExpFloor<float> {
  static constexpr float kValue = -80.0f;
};
template <>
struct ExpFloor<double> {
  static constexpr double kValue = -700.0;
};

template <typename T>
INLINE T exp_clamped(T x) {
  return exp_in_range(x < ExpFloor<T>::kValue ? ExpFloor<T>::kValue : x);  // -inf too
}

// Shapes of one strip: z is (batch, tiles, rows, width); columns j = t * width + w < m.
struct Strip {
  int64_t batch, tiles, rows, width, m;
  int64_t cols(int64_t t) const { return std::min(width, m - t * width); }
  int64_t offset(int64_t b, int64_t t, int64_t r) const {
    return ((b * tiles + t) * rows + r) * width;
  }
};

// f rows of strip rows [br0, br1) (flattened over problem b and strip row r); hc: (B, m);
// offset, f: (B, n) at row r0 + r.
template <typename T>
PER_ISA void strip_rows(const T* z, const Strip& s, const T* hc, const T* offset, T* f, int64_t n,
                        int64_t r0, T eps, T damping, int64_t br0, int64_t br1) {
  for (int64_t br = br0; br < br1; ++br) {
    const int64_t b = br / s.rows, r = br % s.rows, i = b * n + r0 + r;
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t t = 0; t < s.tiles; ++t) {
      const T* zr = z + s.offset(b, t, r);
      const T* h = hc + b * s.m + t * s.width;
#pragma omp simd reduction(max : top)
      for (int64_t w = 0; w < s.cols(t); ++w) top = std::max(top, zr[w] + h[w]);
    }
    if (!std::isfinite(top)) top = 0;  // no mass: the floor keeps the sum positive
    double sum = 0;  // of the tiles' sums, each over <= 1024 terms in T
    for (int64_t t = 0; t < s.tiles; ++t) {
      const T* zr = z + s.offset(b, t, r);
      const T* h = hc + b * s.m + t * s.width;
      T part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t w = 0; w < s.cols(t); ++w) part += exp_clamped(zr[w] + h[w] - top);
      sum += part;
    }
    f[i] = damping * (offset[i] - eps * (top + static_cast<T>(std::log(sum))));
  }
}

// Folds the strip's rows into the running column state of tile t of problem b:
// hr: the strip's R row terms; cmax, csum: (width) (M_j, S_j) of the tile's columns;
// top, part: width values of scratch. The strip's own sum (R terms) runs in T and is added to
// the double S_j once per strip, so the loop over rows stays in one precision (vectorised).
template <typename T>
PER_ISA void fold_columns(const T* z, const Strip& s, int64_t b, int64_t t, const T* hr, T* cmax,
                          double* csum, T* top, T* part) {
  const int64_t cols = s.cols(t);
  std::copy(cmax, cmax + cols, top);
  std::fill(part, part + cols, T(0));
  for (int64_t r = 0; r < s.rows; ++r) {
    const T* zr = z + s.offset(b, t, r);
    const T h = hr[r];
#pragma omp simd
    for (int64_t w = 0; w < cols; ++w) {
      const T v = zr[w] + h;
      top[w] = v > top[w] ? v : top[w];
    }
  }
  for (int64_t r = 0; r < s.rows; ++r) {
    const T* zr = z + s.offset(b, t, r);
    const T h = hr[r];
#pragma omp simd
    for (int64_t w = 0; w < cols; ++w) part[w] += exp_clamped(zr[w] + h - top[w]);
  }
  // A column whose terms are all -inf so far (M_j = -inf) has no mass: nothing is added, so
  // that floor-clamped exps of -inf never stand in for real terms of later strips.
#pragma omp simd
  for (int64_t w = 0; w < cols; ++w) {
    const bool live = top[w] > -std::numeric_limits<T>::infinity();
    const double scale = exp_clamped(cmax[w] - top[w]);
    csum[w] = live ? csum[w] * scale + part[w] : csum[w];
    cmax[w] = top[w];
  }
}

// colsum (width) += the strip's column sums of tile t of problem b (z holds the plan); part:
// width values of scratch, summed in T over the strip's rows, then added in double.
template <typename T>
PER_ISA void plan_columns(const T* z, const Strip& s, int64_t b, int64_t t, double* colsum,
                          T* part) {
  const int64_t cols = s.cols(t);
  std::fill(part, part + cols, T(0));
  for (int64_t r = 0; r < s.rows; ++r) {
    const T* zr = z + s.offset(b, t, r);
#pragma omp simd
    for (int64_t w = 0; w < cols; ++w) part[w] += zr[w];
  }
#pragma omp simd
  for (int64_t w = 0; w < cols; ++w) colsum[w] += part[w];
}

// Parallel regions cost a fork/join (and a scheduler slice when a partner thread is
// descheduled), so a strip with fewer entries runs on one thread.
constexpr int64_t kParallelMinEntries = int64_t(1) << 16;

// One strip (rows r0.. of every problem): f rows and, with cmax != nullptr, the column fold.
// hc: (B, m); log_w, offset, f: (B, n); cmax, csum: (B, tiles * width). The parallel region
// lives here and calls the per-ISA workers (an outlined OpenMP body is not cloned per ISA).
template <typename T>
void strip_pass(const T* z, const Strip s, const T* hc, const T* log_w, const T* offset, T* f,
                int64_t n, int64_t r0, T eps, T damping, T* cmax, double* csum, int threads) {
  const int64_t entries = s.batch * s.rows * s.m, stride = s.tiles * s.width;
  const int team = entries >= kParallelMinEntries ? threads : 1;
#pragma omp parallel num_threads(team)
  {
    const int me = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t total = s.batch * s.rows;
    strip_rows(z, s, hc, offset, f, n, r0, eps, damping, total * me / count,
               total * (me + 1) / count);
    if (cmax != nullptr) {
#pragma omp barrier
      T hr[256], top[1024], part[1024];  // rows <= 256, width <= 1024 (checked by the caller)
#pragma omp for schedule(static)
      for (int64_t bt = 0; bt < s.batch * s.tiles; ++bt) {
        const int64_t b = bt / s.tiles, t = bt % s.tiles;
        for (int64_t r = 0; r < s.rows; ++r) {
          const int64_t i = b * n + r0 + r;
          hr[r] = log_w[i] + (f[i] - offset[i]) / eps;
        }
        const int64_t at = b * stride + t * s.width;
        fold_columns(z, s, b, t, hr, cmax + at, csum + at, top, part);
      }
    }
  }
}

// The plan over strip rows [br0, br1): z <- P_ij = exp(hr_i + hc_j + Z_ij) (0 below the exp
// floor, so zero weights give exact zeros), rowsum_i = sum_j P_ij and pz_i = sum_j P_ij Z_ij.
// hr, rowsum, pz: (B, n) at row r0 + r; hc: (B, m). Padding columns (j >= m) are left alone.
template <typename T>
PER_ISA void plan_rows(T* z, const Strip& s, const T* hr, const T* hc, T* rowsum, T* pz,
                       int64_t n, int64_t r0, int64_t br0, int64_t br1) {
  for (int64_t br = br0; br < br1; ++br) {
    const int64_t b = br / s.rows, r = br % s.rows, i = b * n + r0 + r;
    const T row_term = hr[i];
    double mass = 0, weighted = 0;  // of the tiles' sums, each in T
    for (int64_t t = 0; t < s.tiles; ++t) {
      T* zr = z + s.offset(b, t, r);
      const T* h = hc + b * s.m + t * s.width;
      T tile_mass = 0, tile_weighted = 0;
#pragma omp simd reduction(+ : tile_mass, tile_weighted)
      for (int64_t w = 0; w < s.cols(t); ++w) {
        const T v = zr[w] + h[w] + row_term;
        const T p = v < ExpFloor<T>::kValue ? T(0) : exp_clamped(v);
        tile_mass += p;
        tile_weighted += p * zr[w];
        zr[w] = p;
      }
      mass += tile_mass;
      weighted += tile_weighted;
    }
    rowsum[i] = static_cast<T>(mass);
    pz[i] = static_cast<T>(weighted);
  }
}

template <typename T>
void plan_pass(T* z, const Strip s, const T* hr, const T* hc, T* rowsum, double* colsum, T* pz,
               int64_t n, int64_t r0, int threads) {
  const int64_t entries = s.batch * s.rows * s.m, stride = s.tiles * s.width;
  const int team = entries >= kParallelMinEntries ? threads : 1;
#pragma omp parallel num_threads(team)
  {
    const int me = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t total = s.batch * s.rows;
    plan_rows(z, s, hr, hc, rowsum, pz, n, r0, total * me / count, total * (me + 1) / count);
#pragma omp barrier
    T part[1024];  // width <= 1024 (checked by the caller)
#pragma omp for schedule(static)
    for (int64_t bt = 0; bt < s.batch * s.tiles; ++bt) {
      const int64_t b = bt / s.tiles, t = bt % s.tiles;
      plan_columns(z, s, b, t, colsum + b * stride + t * s.width, part);
    }
  }
}

// ---- The fused sweep: float32 on x86-64-v4 ----
//
// One sweep (the row update and the next column update's sums) with the product formed by a
// register-tiled kernel of our own instead of a GEMM into a strip, and one exp per entry for
// both updates instead of two. Per row i, with zmax_i = max_{j<m} Z_ij and H = max_j hc_j:
//
//   E_ij = exp(Z_ij - zmax_i) <= 1
//   row  LSE_j(hc_j + Z_ij) = H + zmax_i + log sum_j w_j E_ij,       w_j = exp(hc_j - H)
//   col  LSE_i(hr_i + Z_ij) = log sum_i exp(hr_i + zmax_i) E_ij,     hr_i from the new f_i
//
// A strip of R rows (a multiple of kMR) is formed tile by tile (kNR columns of y' packed
// (d, kNR)) into a per-thread buffer that stays in L2 with the row maxima; then each row's exps
// and sum (f_i), then the strip's column sums as a mat-vec with coefficients exp(hr_i + zmax_i
// - M), M the strip's largest, added in double to a per-thread column state kept at its running
// maximum. The price is range: a sum whose terms all fall below the exp floor would be wrong,
// which the strip path's max-shifted sums never are. So every row and column sum is checked
// against the floor's worst error (each term off by <= e^-80 of the sum's scale, kept e^17,
// float's precision, below the sum) and the sweep reports failure; the caller then runs
// the strip path. With cosine costs at eps >= ~0.01 the check passes (benchmarks/NOTES.md, O36).
//
// x86-64-v4 only: the 6 x 32 tile takes 24 of its 32 vector registers. Intrinsics need the
// target on every function that uses them, so V4 replaces PER_ISA here.

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_SWEEP 1
#define V4 __attribute__((target("arch=x86-64-v4")))

constexpr int kMR = 6, kNV = 4;          // a tile: kMR rows by kNV vectors of 8 columns
constexpr int64_t kNR = 8 * kNV;         // columns of a packed tile of y'
constexpr double kSumMargin = -63.0;     // ExpFloor<float> + 17: a sum's least, per term

// Z (kMR x kNR) = a (kMR rows of d) times the packed tile b (d x kNR), plus mask (kNR: 0, or
// -inf on padding columns), stored to out (row stride ldo); rowmax (kMR x 8): lane-wise maxima
// of each row, updated.
V4 INLINE void product_tile(const float* __restrict a, int64_t d, const float* __restrict b,
                            const float* __restrict mask, float* __restrict out, int64_t ldo,
                            float* __restrict rowmax) {
  __m256 acc[kMR][kNV];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kNV; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < d; ++k) {
    __m256 col[kNV];
#pragma GCC unroll 4
    for (int c = 0; c < kNV; ++c) col[c] = _mm256_loadu_ps(b + k * kNR + 8 * c);
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r) {
      const __m256 s = _mm256_broadcast_ss(a + r * d + k);
#pragma GCC unroll 4
      for (int c = 0; c < kNV; ++c) acc[r][c] = _mm256_fmadd_ps(s, col[c], acc[r][c]);
    }
  }
  __m256 top[kMR];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) top[r] = _mm256_loadu_ps(rowmax + 8 * r);
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kNV; ++c) {
      const __m256 z = _mm256_add_ps(acc[r][c], _mm256_loadu_ps(mask + 8 * c));
      _mm256_storeu_ps(out + r * ldo + 8 * c, z);
      top[r] = _mm256_max_ps(top[r], z);
    }
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) _mm256_storeu_ps(rowmax + 8 * r, top[r]);
}

// e[j] <- exp(e[j] - shift), returns sum_j w_j e[j] (float sums over 1024 terms, in double).
V4 INLINE double exp_and_weigh(float* __restrict e, const float* __restrict w, int64_t len,
                               float shift) {
  double total = 0;
  for (int64_t j0 = 0; j0 < len; j0 += 1024) {
    const int64_t j1 = std::min(len, j0 + 1024);
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t j = j0; j < j1; ++j) {
      const float v = exp_clamped(e[j] - shift);
      e[j] = v;
      part += w[j] * v;
    }
    total += part;
  }
  return total;
}

// One problem's column state in one part of the sweep: acc (padded width) at the running
// maximum ref.
struct ColumnState {
  double* acc;
  double ref;  // -inf until a strip with mass was added
};

struct Fused {
  int64_t batch, n, m, d, tiles, strip;  // tiles of kNR columns; strip: rows, a multiple of kMR
  int64_t width() const { return tiles * kNR; }
  int64_t strips_per_problem() const { return (n + strip - 1) / strip; }
};

// A part of the sweep, run by one thread: strips [s0, s1) of the flattened (problem, strip)
// list, which touch problems first..last, and its column states cols[b - first]; scratch:
// buf (strip x width floats), rows_in (strip x d), rowmax (strip x 8), tmp (width), coef (strip).
struct Part {
  int64_t s0, s1, first, last;
  ColumnState* cols;
  float *buf, *rows_in, *rowmax, *tmp, *coef;
};

// The part's strips: rows of f and the column states. Returns false (and stops) when a row sum
// fails the range check.
V4 __attribute__((noinline)) bool fused_strips(const Fused& p, const float* lhs,
                                               const float* ypack, const float* w,
                                               const float* hmax, const float* log_w,
                                               const float* offset, float* f, float eps,
                                               float damping, const Part& part) {
  FlushDenormals ftz;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t width = p.width(), per_problem = p.strips_per_problem();
  float* const buf = part.buf;
  float* const rowmax = part.rowmax;
  float* const coef = part.coef;
  alignas(32) float open[kNR], last[kNR];
  for (int64_t c = 0; c < kNR; ++c) {
    open[c] = 0;
    last[c] = (p.tiles - 1) * kNR + c < p.m ? 0.0f : -kInf;
  }
  const double row_floor = std::exp(kSumMargin) * 2 * width;
  for (int64_t s = part.s0; s < part.s1; ++s) {
    const int64_t b = s / per_problem, i0 = (s % per_problem) * p.strip;
    const int64_t rows = std::min(p.strip, p.n - i0);
    const float* a = lhs + (b * p.n + i0) * p.d;
    std::copy(a, a + rows * p.d, part.rows_in);
    std::fill(part.rows_in + rows * p.d, part.rows_in + p.strip * p.d, 0.0f);
    std::fill(rowmax, rowmax + p.strip * 8, -kInf);
    const int64_t blocks = (rows + kMR - 1) / kMR;
    for (int64_t t = 0; t < p.tiles; ++t) {
      const float* tile = ypack + (b * p.tiles + t) * p.d * kNR;
      const float* mask = t == p.tiles - 1 ? last : open;
      for (int64_t k = 0; k < blocks; ++k)
        product_tile(part.rows_in + k * kMR * p.d, p.d, tile, mask,
                     buf + k * kMR * width + t * kNR, width, rowmax + k * kMR * 8);
    }
    // Row sums, f, and the strip's column coefficients exp(hr_i + zmax_i - top).
    float top = -kInf;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b * p.n + i0 + r;
      const float zmax = *std::max_element(rowmax + 8 * r, rowmax + 8 * r + 8);
      const double sum = exp_and_weigh(buf + r * width, w + b * width, width, zmax);
      if (!(sum >= row_floor)) return false;
      f[i] = damping * (offset[i] - eps * (hmax[b] + zmax + static_cast<float>(std::log(sum))));
      coef[r] = log_w[i] + (f[i] - offset[i]) / eps + zmax;
      top = std::max(top, coef[r]);
    }
    if (!(top > -kInf)) continue;  // no row mass
    for (int64_t r = 0; r < rows; ++r) {
      const float v = coef[r] - top;
      coef[r] = v < ExpFloor<float>::kValue ? 0.0f : exp_clamped(v);
    }
    weighted_row_sum<false>(part.tmp, coef, buf, rows, width);
    ColumnState& col = part.cols[b - part.first];
    if (top > col.ref) {  // the state moves to the new maximum
      const double down = std::exp(col.ref - static_cast<double>(top));
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) col.acc[j] *= down;
      col.ref = top;
    }
    const double scale = std::exp(static_cast<double>(top) - col.ref);
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) col.acc[j] += scale * part.tmp[j];
  }
  return true;
}

bool fused_supported() { return __builtin_cpu_supports("x86-64-v4"); }

// The sweep over every strip: f (B, n); cmax (B, width) float and csum (B, width) double with
// LSE_i(hr_i + Z_ij) = cmax_j + log csum_j for j < m, as strip_pass's fold leaves them (here
// cmax is one shift per problem, and the padding columns hold junk). hc: (B, m). Returns false
// when a row or column sum fails the range check, or a problem has no row or no column mass
// (f and the state are then unusable). Allocates O(threads + B) x width doubles: may throw
// std::bad_alloc, never inside the parallel region.
bool fused_sweep(const Fused& p, const float* lhs, const float* ypack, const float* hc,
                 const float* log_w, const float* offset, float* f, float* cmax, double* csum,
                 float eps, float damping, int threads) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const int64_t width = p.width(), per_problem = p.strips_per_problem();
  std::vector<float> w(p.batch * width, 0.0f), hmax(p.batch);
  for (int64_t b = 0; b < p.batch; ++b) {
    const float* h = hc + b * p.m;
    hmax[b] = *std::max_element(h, h + p.m);
    if (!std::isfinite(hmax[b])) return false;  // no column mass
    for (int64_t j = 0; j < p.m; ++j) {
      const float v = h[j] - hmax[b];
      w[b * width + j] = v < ExpFloor<float>::kValue ? 0.0f : std::exp(v);
    }
  }
  // Contiguous parts, one per thread: each holds column states only for the problems it
  // touches (B + threads states in all, not B x threads).
  const int64_t strips = p.batch * per_problem;
  const int team = static_cast<int>(std::min<int64_t>(threads, strips));
  std::vector<Part> parts(team);
  int64_t states = 0;
  for (int t = 0; t < team; ++t) {
    Part& part = parts[t];
    part.s0 = strips * t / team, part.s1 = strips * (t + 1) / team;
    part.first = part.s0 / per_problem, part.last = (part.s1 - 1) / per_problem;
    states += part.last - part.first + 1;
  }
  const int64_t scratch = p.strip * (width + p.d + 8 + 1) + width;
  std::vector<double> acc(states * width, 0.0);
  std::vector<ColumnState> cols(states, ColumnState{nullptr, -kInf});
  std::vector<float> scratch_all(team * scratch);
  for (int t = 0, next = 0; t < team; ++t) {
    Part& part = parts[t];
    part.cols = cols.data() + next;
    for (int64_t b = part.first; b <= part.last; ++b, ++next)
      cols[next].acc = acc.data() + next * width;
    part.buf = scratch_all.data() + t * scratch;
    part.rows_in = part.buf + p.strip * width;
    part.rowmax = part.rows_in + p.strip * p.d;
    part.coef = part.rowmax + p.strip * 8;
    part.tmp = part.coef + p.strip;
  }
  bool ok = true;
#pragma omp parallel num_threads(team) reduction(&& : ok)
  for (int t = omp_get_thread_num(); t < team; t += omp_get_num_threads())
    ok = fused_strips(p, lhs, ypack, w.data(), hmax.data(), log_w, offset, f, eps, damping,
                      parts[t]) && ok;
  if (!ok) return false;
  const double col_floor = std::exp(kSumMargin) * 2 * p.n;
  for (int64_t b = 0; b < p.batch; ++b) {
    double ref = -kInf;
    for (const Part& part : parts)
      if (part.first <= b && b <= part.last) ref = std::max(ref, part.cols[b - part.first].ref);
    if (!std::isfinite(ref)) return false;  // no row mass
    const float stored = static_cast<float>(ref);
    double* out = csum + b * width;
    std::fill(out, out + width, 0.0);
    for (const Part& part : parts) {
      if (b < part.first || b > part.last) continue;
      const ColumnState& col = part.cols[b - part.first];
      const double scale = std::exp(col.ref - static_cast<double>(stored));
      for (int64_t j = 0; j < width; ++j) out[j] += scale * col.acc[j];
    }
    std::fill(cmax + b * width, cmax + (b + 1) * width, stored);
    for (int64_t j = 0; j < p.m; ++j) ok = ok && out[j] >= col_floor;
  }
  return ok;
}
#endif  // fused sweep

bool valid_strip(int64_t batch, int64_t tiles, int64_t rows, int64_t width, int64_t m, int64_t n,
                 int64_t r0, int threads) {
  if (batch < 1 || tiles < 1 || rows < 1 || rows > 256 || width < 1 || width > 1024 || m < 1 ||
      m > tiles * width || r0 < 0 || r0 + rows > n || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "inconsistent strip shape");
    return false;
  }
  return true;
}

// strip_softmin(z, hc, log_w, offset, f, cmax, csum, batch, tiles, rows, width, m, n, r0, eps,
// damping, fold, is_double, threads): addresses of contiguous CPU buffers (see strip_pass).
PyObject* strip_softmin(PyObject*, PyObject* args) {
  unsigned long long z, hc, log_w, offset, f, cmax, csum;
  long long batch, tiles, rows, width, m, n, r0;
  double eps, damping;
  int fold, is_double, threads;
  if (!PyArg_ParseTuple(args, "KKKKKKKLLLLLLLddppi", &z, &hc, &log_w, &offset, &f, &cmax, &csum,
                        &batch, &tiles, &rows, &width, &m, &n, &r0, &eps, &damping, &fold,
                        &is_double, &threads))
    return nullptr;
  if (!valid_strip(batch, tiles, rows, width, m, n, r0, threads)) return nullptr;
  const Strip s{batch, tiles, rows, width, m};
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    strip_pass(as_ptr<const double>(z), s, as_ptr<const double>(hc), as_ptr<const double>(log_w),
               as_ptr<const double>(offset), as_ptr<double>(f), n, r0, eps, damping,
               fold ? as_ptr<double>(cmax) : nullptr, as_ptr<double>(csum), threads);
  else
    strip_pass(as_ptr<const float>(z), s, as_ptr<const float>(hc), as_ptr<const float>(log_w),
               as_ptr<const float>(offset), as_ptr<float>(f), n, r0, static_cast<float>(eps),
               static_cast<float>(damping), fold ? as_ptr<float>(cmax) : nullptr,
               as_ptr<double>(csum), threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// strip_plan(z, hr, hc, rowsum, colsum, pz, batch, tiles, rows, width, m, n, r0, is_double,
// threads): addresses of contiguous CPU buffers (see plan_pass); z is overwritten by the plan.
PyObject* strip_plan(PyObject*, PyObject* args) {
  unsigned long long z, hr, hc, rowsum, colsum, pz;
  long long batch, tiles, rows, width, m, n, r0;
  int is_double, threads;
  if (!PyArg_ParseTuple(args, "KKKKKKLLLLLLLpi", &z, &hr, &hc, &rowsum, &colsum, &pz, &batch,
                        &tiles, &rows, &width, &m, &n, &r0, &is_double, &threads))
    return nullptr;
  if (!valid_strip(batch, tiles, rows, width, m, n, r0, threads)) return nullptr;
  const Strip s{batch, tiles, rows, width, m};
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    plan_pass(as_ptr<double>(z), s, as_ptr<const double>(hr), as_ptr<const double>(hc),
              as_ptr<double>(rowsum), as_ptr<double>(colsum), as_ptr<double>(pz), n, r0, threads);
  else
    plan_pass(as_ptr<float>(z), s, as_ptr<const float>(hr), as_ptr<const float>(hc),
              as_ptr<float>(rowsum), as_ptr<double>(colsum), as_ptr<float>(pz), n, r0, threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// fused_softmin(lhs, ypack, hc, log_w, offset, f, cmax, csum, batch, n, m, d, tiles, strip,
// eps, damping, threads) -> bool: float32 buffers (csum float64), see fused_sweep; False when a
// sum failed the range check or a problem has no row or column mass (the outputs are then to be
// discarded).
PyObject* fused_softmin(PyObject*, PyObject* args) {
  unsigned long long lhs, ypack, hc, log_w, offset, f, cmax, csum;
  long long batch, n, m, d, tiles, strip;
  double eps, damping;
  int threads;
  if (!PyArg_ParseTuple(args, "KKKKKKKKLLLLLLddi", &lhs, &ypack, &hc, &log_w, &offset, &f, &cmax,
                        &csum, &batch, &n, &m, &d, &tiles, &strip, &eps, &damping, &threads))
    return nullptr;
#if FUSED_SWEEP
  if (batch < 1 || n < 1 || m < 1 || d < 1 || tiles * kNR < m || (tiles - 1) * kNR >= m ||
      strip < kMR || strip % kMR != 0 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "inconsistent fused sweep shape");
    return nullptr;
  }
  if (!fused_supported()) {
    PyErr_SetString(PyExc_RuntimeError, "the fused sweep needs an x86-64-v4 CPU");
    return nullptr;
  }
  const Fused p{batch, n, m, d, tiles, strip};
  bool ok = false, out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    ok = fused_sweep(p, as_ptr<const float>(lhs), as_ptr<const float>(ypack),
                     as_ptr<const float>(hc), as_ptr<const float>(log_w),
                     as_ptr<const float>(offset), as_ptr<float>(f), as_ptr<float>(cmax),
                     as_ptr<double>(csum), static_cast<float>(eps), static_cast<float>(damping),
                     threads);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS
  if (out_of_memory) return PyErr_NoMemory();
  return PyBool_FromLong(ok);
#else
  PyErr_SetString(PyExc_RuntimeError, "the fused sweep was not built (x86-64 GCC only)");
  return nullptr;
#endif
}

// fused_info() -> (tile rows, tile columns) when this machine runs the fused sweep, else None.
PyObject* fused_info(PyObject*, PyObject*) {
#if FUSED_SWEEP
  if (fused_supported())
    return Py_BuildValue("(LL)", static_cast<long long>(kMR), static_cast<long long>(kNR));
#endif
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"strip_softmin", strip_softmin, METH_VARARGS,
     "Row soft-min of one strip, optionally folded into the next column update "
     "(see kernels/cpu_streaming.py)."},
    {"strip_plan", strip_plan, METH_VARARGS,
     "The plan of one strip with its row sums, column sums and <P, Z> (see "
     "kernels/cpu_streaming.py)."},
    {"fused_softmin", fused_softmin, METH_VARARGS,
     "Row soft-min and the next column update's sums in one fused float32 sweep (see "
     "kernels/cpu_streaming.py)."},
    {"fused_info", fused_info, METH_NOARGS,
     "(tile rows, tile columns) of the fused sweep on this machine, or None."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_streaming_cpu",
                      "Native CPU log-sum-exp passes of the streaming soft-min for optical-ot.", -1,
                      methods};

}  // namespace

PyMODINIT_FUNC PyInit__streaming_cpu(void) { return PyModule_Create(&module); }
