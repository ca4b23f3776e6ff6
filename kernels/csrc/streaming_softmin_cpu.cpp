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

#include <omp.h>

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

PyMethodDef methods[] = {
    {"strip_softmin", strip_softmin, METH_VARARGS,
     "Row soft-min of one strip, optionally folded into the next column update "
     "(see kernels/cpu_streaming.py)."},
    {"strip_plan", strip_plan, METH_VARARGS,
     "The plan of one strip with its row sums, column sums and <P, Z> (see "
     "kernels/cpu_streaming.py)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_streaming_cpu",
                      "Native CPU log-sum-exp passes of the streaming soft-min for optical-ot.", -1,
                      methods};

}  // namespace

PyMODINIT_FUNC PyInit__streaming_cpu(void) { return PyModule_Create(&module); }
