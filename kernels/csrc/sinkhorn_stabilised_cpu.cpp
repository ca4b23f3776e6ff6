// Stabilised scaling-domain Sinkhorn iterations on the CPU (optical_ops/softmin_stabilised.py).
//
// Problem p: cost C (n, m) row-major (sanitised: massless entries hold one value per problem; 0
// and massful entries >= 0 when balanced, where the cost is shifted by its minimum),
// weights a (n), b (m), potentials f (n) in, f and g (m) out. The absorption cache (kernel K~
// (n, m) and its transpose, fbar, gbar, valid) persists between calls:
//
//   K~_ij = exp(clamp((fbar_i + gbar_j - C_ij) / eps, lo, hi)),   u = e^((f - fbar)/eps),
//   v = e^((g - gbar)/eps),
//   column update  T = K~^T (a u),  v = T^-1 (balanced) or e^(-(1 - lam) gbar/eps) T^-lam,
//   row update     T = K~ (b v),    u likewise.
//
// A half-iteration whose massful sums leave [e^-accurate, e^accurate] is redone by log-sum-exp
// from C and absorbed (fbar, gbar <- f, g; K~ rebuilt; u = v = 1); when only the new scalings
// leave [e^-absorb, e^absorb] the current potentials are absorbed. An absorption whose massful
// exponents exceed hi puts the problem in the log domain for good (valid = 2). Rows and columns
// with zero weight get coefficient exactly 0 and are never range-checked; after the last
// iteration their potentials are recomputed by log-sum-exp (exact_massless). So the iterations
// run on the block up to the last row and column with mass only: a padded batch pays for its
// real tokens.
//
// Both mat-vecs are sums of rows (of K~ for the columns, of a transposed copy for the rows),
// register blocked and vectorised along the rows, with no horizontal reduction. Column
// log-sum-exps also sweep rows (a running max and then a sum per column), so C is only ever
// read row by row. exp: exp_in_range (native_cpu.h). Results that would be denormal are
// flushed to zero (MXCSR.FTZ, set per worker and restored): K~ entries are >= e^lo (normal),
// and any product that small is below the accuracy bound anyway.
//
// Parallelism: one problem per thread at a time (dynamic schedule), when the call has enough
// work to pay for the fork; otherwise one thread. No PyTorch header: the Python side
// (kernels/cpu_stabilised.py) passes data pointers of contiguous CPU tensors it has checked.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <omp.h>

#include "native_cpu.h"

namespace {

template <typename T>
INLINE T clamp(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);  // NaN stays NaN: never produced here
}

struct Limits {
  double eps, lam, absorb, accurate, exp_lo, exp_hi;
};

// Work buffers and the view of one problem.
template <typename T>
struct Problem {
  const T *C, *a, *b;
  T *K, *fbar, *gbar;
  int32_t* valid;
  int64_t n, m;
  // per-thread scratch
  T *KT, *u, *v, *coef, *sum, *f, *g, *top;
  int64_t absorptions = 0, log_updates = 0;
  // e^-accurate, e^accurate, e^-absorb, e^absorb (bounds on the sums T)
  double accurate_lo, accurate_hi, absorb_lo, absorb_hi;
};

// Column soft-min from potentials f: g_j = -lam eps LSE_i(log a_i + (f_i - C_ij)/eps), rows
// without mass skipped. Two sweeps over the rows of C: running max, then the sum of exps.
// Columns [c0, c1) only (default: all).
template <typename T>
INLINE void log_cols(Problem<T>& P, const Limits& L, const T* f, T* g, int64_t c0 = 0,
                     int64_t c1 = -1) {
  if (c1 < 0) c1 = P.m;
  const T inv = T(1) / T(L.eps), floor = T(L.exp_lo);
  T* top = P.top;
  T* sum = P.sum;
  T* h = P.coef;  // log a_i + f_i / eps of the massful rows
  for (int64_t i = 0; i < P.n; ++i) h[i] = P.a[i] > 0 ? std::log(P.a[i]) + f[i] * inv : T(0);
  std::fill(top + c0, top + c1, -std::numeric_limits<T>::infinity());
  std::fill(sum + c0, sum + c1, T(0));
  for (int64_t i = 0; i < P.n; ++i) {
    if (!(P.a[i] > 0)) continue;
    const T hi = h[i];
    const T* c = P.C + i * P.m;
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) top[j] = std::max(top[j], hi - c[j] * inv);
  }
  for (int64_t i = 0; i < P.n; ++i) {
    if (!(P.a[i] > 0)) continue;
    const T hi = h[i];
    const T* c = P.C + i * P.m;
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) {
      const T z = hi - c[j] * inv - top[j];
      sum[j] += exp_in_range(z < floor ? floor : z);
    }
  }
  const T scale = -T(L.lam) * T(L.eps);
  for (int64_t j = c0; j < c1; ++j) g[j] = scale * (top[j] + std::log(sum[j]));
  P.log_updates++;
}

// Row soft-min from potentials g: f_i = -lam eps LSE_j(log b_j + (g_j - C_ij)/eps), columns
// without mass contributing exactly 0. All rows (massless ones too).
template <typename T>
INLINE void log_rows(Problem<T>& P, const Limits& L, const T* g, T* f,
                     bool massless_only = false) {
  const T inv = T(1) / T(L.eps), floor = T(L.exp_lo);
  const T ninf = -std::numeric_limits<T>::infinity();
  T* h = P.top;  // log b_j + g_j / eps, -inf without mass
  for (int64_t j = 0; j < P.m; ++j) h[j] = P.b[j] > 0 ? std::log(P.b[j]) + g[j] * inv : ninf;
  const T scale = -T(L.lam) * T(L.eps);
  for (int64_t i = 0; i < P.n; ++i) {
    if (massless_only && P.a[i] > 0) continue;
    const T* c = P.C + i * P.m;
    T mx = ninf;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < P.m; ++j) mx = std::max(mx, h[j] - c[j] * inv);
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < P.m; ++j) {
      const T z = h[j] - c[j] * inv - mx;
      const T e = exp_in_range(z < floor ? floor : z);
      s += P.b[j] > 0 ? e : T(0);
    }
    f[i] = scale * (mx + std::log(s));
  }
  P.log_updates++;
}

// Absorb the potentials (f, g) (massless ones set to 0): rebuild K~ and its transpose; u = v = 1.
// Returns false when a massful exponent exceeds the ceiling (the problem goes to the log domain).
template <typename T>
INLINE bool absorb(Problem<T>& P, const Limits& L, const T* f, const T* g) {
  const T inv = T(1) / T(L.eps), lo = T(L.exp_lo), hi = T(L.exp_hi);
  for (int64_t i = 0; i < P.n; ++i) P.fbar[i] = P.a[i] > 0 ? f[i] : T(0);
  for (int64_t j = 0; j < P.m; ++j) P.gbar[j] = P.b[j] > 0 ? g[j] : T(0);
  bool fits = true;
  for (int64_t i = 0; i < P.n; ++i) {
    const T* c = P.C + i * P.m;
    T* k = P.K + i * P.m;
    const T fi = P.fbar[i];
    T over = lo;  // largest massful exponent of the row
#pragma omp simd reduction(max : over)
    for (int64_t j = 0; j < P.m; ++j) {
      const T z = (fi + P.gbar[j] - c[j]) * inv;
      over = std::max(over, P.b[j] > 0 ? z : lo);
      k[j] = exp_in_range(clamp(z, lo, hi));
    }
    if (P.a[i] > 0 && over > hi) fits = false;
  }
  for (int64_t i = 0; i < P.n; ++i)
    for (int64_t j = 0; j < P.m; ++j) P.KT[j * P.n + i] = P.K[i * P.m + j];
  std::fill(P.u, P.u + P.n, T(1));
  std::fill(P.v, P.v + P.m, T(1));
  *P.valid = fits ? 1 : 2;
  P.absorptions++;
  return fits;
}

// Potentials from the scalings: out = bar + eps log s.
template <typename T>
INLINE void potentials(const T* bar, const T* s, int64_t len, T eps, T* out) {
  for (int64_t i = 0; i < len; ++i) out[i] = bar[i] + eps * std::log(s[i]);
}

// One scaling half-iteration for the side with scalings `s` (len entries, weights w, bar the
// side's absorption potentials) from the other side's scalings `o` (olen, weights ow), over
// `M` (olen rows of len). Returns 0: fine, 1: absorb (scalings out of range), 2: sums out of
// the accurate range (redo in the log domain).
template <typename T>
INLINE int scaling_half(Problem<T>& P, const Limits& L, const T* M, const T* ow, const T* o,
                        int64_t olen, const T* w, const T* bar, T* s, int64_t len) {
  T* __restrict coef = P.coef;
#pragma omp simd
  for (int64_t i = 0; i < olen; ++i) {
    const T c = ow[i] * o[i];
    coef[i] = ow[i] > 0 ? c : T(0);
  }
  weighted_row_sum<false>(P.sum, coef, M, olen, len);
  const T* t = P.sum;
  T lo = 1, hi = 1;  // range of the massful sums
#pragma omp simd reduction(min : lo) reduction(max : hi)
  for (int64_t j = 0; j < len; ++j) {
    lo = std::min(lo, w[j] > 0 ? t[j] : T(1));
    hi = std::max(hi, w[j] > 0 ? t[j] : T(1));
  }
  if (!(lo >= T(P.accurate_lo) && hi <= T(P.accurate_hi))) return 2;
  if (L.lam == 1.0) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) s[j] = T(1) / t[j];
    return (lo >= T(P.absorb_lo) && hi <= T(P.absorb_hi)) ? 0 : 1;
  }
  const T lam = T(L.lam), c = -(T(1) - lam) / T(L.eps), lim = T(L.absorb);
  bool within = true;
  for (int64_t j = 0; j < len; ++j) {
    const T log_s = c * bar[j] - lam * std::log(t[j]);
    s[j] = std::exp(log_s);
    within &= !(w[j] > 0) || std::fabs(log_s) <= lim;
  }
  return within ? 0 : 1;
}

// All iterations of one problem. f_io: potentials in, out; g_out: out; f_prev: f before the
// last row update (massful rows).
template <typename T>
INLINE void run_iterations(Problem<T>& P, const Limits& L, T* f_io, T* g_out, T* f_prev,
                           int iters) {
  const T eps = T(L.eps);
  const int64_t n = P.n, m = P.m;
  bool need_log = true;  // the next column update must run in the log domain
  if (*P.valid == 1) {
    need_log = false;
    for (int64_t i = 0; i < n; ++i) {
      const T lu = (f_io[i] - P.fbar[i]) / eps;
      P.u[i] = std::exp(std::min(lu, T(L.exp_hi)));
      if (P.a[i] > 0 && std::fabs(lu) > T(L.absorb)) need_log = true;
    }
  }
  std::copy(f_io, f_io + n, P.f);  // f in log form while need_log
  if (*P.valid == 2) {  // log domain throughout
    for (int it = 0; it < iters; ++it) {
      log_cols(P, L, P.f, P.g);
      if (it + 1 == iters) std::copy(P.f, P.f + n, f_prev);
      log_rows(P, L, P.g, P.f);
    }
    std::copy(P.f, P.f + n, f_io);
    std::copy(P.g, P.g + m, g_out);
    return;
  }
  bool log_mode = false;
  for (int it = 0; it < iters; ++it) {
    const bool last = it + 1 == iters;
    // Column update.
    if (log_mode) {
      log_cols(P, L, P.f, P.g);
    } else if (need_log) {
      log_cols(P, L, P.f, P.g);  // P.f holds the f passed in
      log_mode = !absorb(P, L, P.f, P.g);
      need_log = false;
    } else {
      const int state = scaling_half(P, L, P.K, P.a, P.u, n, P.b, P.gbar, P.v, m);
      if (state != 0) {
        potentials(P.fbar, P.u, n, eps, P.f);
        if (state == 2) log_cols(P, L, P.f, P.g);
        else potentials(P.gbar, P.v, m, eps, P.g);
        log_mode = !absorb(P, L, P.f, P.g);
      }
    }
    if (last) {
      if (log_mode) std::copy(P.f, P.f + n, f_prev);
      else potentials(P.fbar, P.u, n, eps, f_prev);
    }
    // Row update.
    if (log_mode) {
      log_rows(P, L, P.g, P.f);
      continue;
    }
    const int state = scaling_half(P, L, P.KT, P.b, P.v, m, P.a, P.fbar, P.u, n);
    if (state != 0) {
      potentials(P.gbar, P.v, m, eps, P.g);
      if (state == 2) log_rows(P, L, P.g, P.f);
      else potentials(P.fbar, P.u, n, eps, P.f);
      if (last) {  // keep the result exact; the next call absorbs what it needs
        std::copy(P.f, P.f + n, f_io);
        std::copy(P.g, P.g + m, g_out);
        return;
      }
      log_mode = !absorb(P, L, P.f, P.g);
    }
  }
  if (log_mode) {
    std::copy(P.f, P.f + n, f_io);
    std::copy(P.g, P.g + m, g_out);
  } else {
    potentials(P.fbar, P.u, n, eps, f_io);
    potentials(P.gbar, P.v, m, eps, g_out);
  }
}

// Potentials of the rows and columns without mass, by log-sum-exp as the log-domain loop has
// them: g from the f before the last row update, f from the final g. Every cost entry of a
// massless row or column holds the same value c0 (sanitised_cost_range: lo, then minus the
// shift), so all massless rows share one potential, -lam eps LSE_j(log b_j + g_j/eps) + lam c0,
// and so do all massless columns: one log-sum-exp per side.
template <typename T>
INLINE T massless_softmin(const T* w, const T* pot, int64_t len, const Limits& L) {
  const T inv = T(1) / T(L.eps);
  T top = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < len; ++k)
    if (w[k] > 0) top = std::max(top, std::log(w[k]) + pot[k] * inv);
  T sum = 0;
  for (int64_t k = 0; k < len; ++k)
    if (w[k] > 0) sum += std::exp(std::log(w[k]) + pot[k] * inv - top);
  return -T(L.lam) * T(L.eps) * (top + std::log(sum));
}

// Rows [0, n) and columns [0, m) of the full problem, whose cost is C (n, m): the loop ran on
// its block up to the last row and column with mass, P, and every row and column past it is
// massless too.
template <typename T>
INLINE void exact_massless(Problem<T>& P, const Limits& L, const T* f_prev, T* f, T* g,
                           const T* C, int64_t n, int64_t m) {
  int64_t row = -1, col = -1;  // a massless row and column, if any
  for (int64_t i = 0; i < n && row < 0; ++i)
    if (!(P.a[i] > 0)) row = i;
  for (int64_t j = 0; j < m && col < 0; ++j)
    if (!(P.b[j] > 0)) col = j;
  const T lam = T(L.lam);
  if (col >= 0) {
    const T value = massless_softmin(P.a, f_prev, P.n, L) + lam * C[col];
    for (int64_t j = 0; j < m; ++j)
      if (!(P.b[j] > 0)) g[j] = value;
  }
  if (row >= 0) {
    const T value = massless_softmin(P.b, g, P.m, L) + lam * C[row * m];
    for (int64_t i = 0; i < n; ++i)
      if (!(P.a[i] > 0)) f[i] = value;
  }
}

// The column-marginal error of the plan (f, g), L1 or L2 over the massful columns, as
// run_sinkhorn measures it: with g' the next column update, (P^T 1)_j / b_j = e^((g_j - g'_j)/eps).
// g' by one mat-vec on the cached kernel when the scalings and sums are in range, else by
// log-sum-exp (not counted as an iteration).
template <typename T>
INLINE double column_error(Problem<T>& P, const Limits& L, const T* f, const T* g, int norm) {
  const T eps = T(L.eps), lam = T(L.lam);
  T* next = P.g;  // scratch here
  bool scaled = *P.valid == 1;
  for (int64_t i = 0; scaled && i < P.n; ++i) {
    const T lu = (f[i] - P.fbar[i]) / eps;
    P.u[i] = std::exp(std::min(lu, T(L.exp_hi)));
    if (P.a[i] > 0 && !(std::fabs(lu) <= T(L.absorb))) scaled = false;
  }
  if (scaled) {
    for (int64_t i = 0; i < P.n; ++i) P.coef[i] = P.a[i] > 0 ? P.a[i] * P.u[i] : T(0);
    weighted_row_sum<false>(P.sum, P.coef, P.K, P.n, P.m);
    for (int64_t j = 0; j < P.m; ++j) {
      const T t = P.sum[j];
      if (P.b[j] > 0 && !(t >= T(P.accurate_lo) && t <= T(P.accurate_hi))) scaled = false;
      next[j] = lam * (P.gbar[j] - eps * std::log(t));
    }
  }
  if (!scaled) {
    const int64_t counted = P.log_updates;
    log_cols(P, L, f, next);
    P.log_updates = counted;
  }
  double err = 0;
  for (int64_t j = 0; j < P.m; ++j) {
    if (!(P.b[j] > 0)) continue;
    const double term = double(P.b[j]) * std::fabs(std::expm1(double(g[j] - next[j]) / L.eps));
    err += norm == 1 ? term : term * term;
  }
  return norm == 1 ? err : std::sqrt(err);
}

// All iterations of one problem; with tol >= 0, in blocks of `every` iterations, stopping after
// the first block whose plan has column error <= tol (ran, converged: what it did). P is the
// block with mass of the full problem (cost C (n, m)), f_io and g_out the full potentials.
template <typename T>
PER_ISA void solve_problem(Problem<T>& P, const Limits& L, T* f_io, T* g_out, T* f_prev,
                           int iters, double tol, int norm, int every, int64_t* ran,
                           uint8_t* converged, const T* C, int64_t n, int64_t m) {
  const FlushDenormals flush;
  if (tol < 0) {
    run_iterations(P, L, f_io, g_out, f_prev, iters);
  } else {
    int done = 0;
    bool reached = false;
    while (done < iters && !reached) {
      const int block = std::min(every, iters - done);
      run_iterations(P, L, f_io, g_out, f_prev, block);
      done += block;
      reached = column_error(P, L, f_io, g_out, norm) <= tol;
    }
    *ran = done;
    *converged = reached;
  }
  exact_massless(P, L, f_prev, f_io, g_out, C, n, m);
}

// A call runs on several threads only when its total work pays for the fork and join
// (measured for the scaling loop: ~4M multiply-adds).
constexpr int64_t kParallelMinWork = int64_t(1) << 22;

template <typename T>
void iterate(const T* C, const T* a, const T* b, T* f, T* g, T* K, T* fbar, T* gbar,
             int32_t* valid, int64_t* counts, int64_t batch, int64_t n, int64_t m, int iters,
             const Limits& L, int threads, double tol, int norm, int every, int64_t* ran,
             uint8_t* converged) {
  const int64_t work = batch * n * m * iters;
  const int use = (threads > 1 && batch >= 2 && work >= kParallelMinWork) ? threads : 1;
  int64_t absorptions = 0, log_updates = 0;
#pragma omp parallel num_threads(use) reduction(+ : absorptions, log_updates)
  {
    const int64_t big = std::max(n, m);
    std::vector<T> u(n), v(m), coef(big), sum(big), fw(n), gw(m), top(big), f_prev(n), block;
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < batch; ++p) {
      const T *Cp = C + p * n * m, *ap = a + p * n, *bp = b + p * m;
      // The block with mass, copied out when its rows are shorter than the cost's; K~ and its
      // transpose are kept in that block's layout (the same on every call: the weights do not
      // change).
      int64_t rows, cols;
      mass_block(ap, bp, n, m, &rows, &cols);
      const T* Cb = Cp;
      if (cols < m) {
        block.resize(rows * cols);
        copy_block(Cp, m, rows, cols, block.data());
        Cb = block.data();
      }
      Problem<T> P{Cb, ap, bp, K + p * n * m, fbar + p * n, gbar + p * m, valid + p, rows, cols,
                   K + (batch + p) * n * m, u.data(), v.data(), coef.data(), sum.data(),
                   fw.data(), gw.data(), top.data()};
      P.accurate_lo = std::exp(-L.accurate);
      P.accurate_hi = std::exp(L.accurate);
      P.absorb_lo = std::exp(-L.absorb);
      P.absorb_hi = std::exp(L.absorb);
      solve_problem(P, L, f + p * n, g + p * m, f_prev.data(), iters, tol, norm, every,
                    ran + p, converged + p, Cp, n, m);
      absorptions += P.absorptions;
      log_updates += P.log_updates;
    }
  }
  counts[0] += absorptions;
  counts[1] += log_updates;
}

// The transport cost <P, C> with P_ij = exp(z_ij), z_ij = log a_i + f_i/eps + log b_j + g_j/eps
// - C_ij/eps, over the rows [r0, r1) of the batch (acc_p += each row's sum): P is 0 where z_ij <
// exp_lo (so columns and rows without mass, z = -inf, and +inf costs add nothing) and exp_hi
// caps z; a NaN potential makes the sum NaN. Each row is summed in T's vector lanes, the rows in
// double, with denormal results flushed to zero as in the loop.
template <typename T>
PER_ISA void cost_rows(const T* C, const T* a, const T* b, const T* f, const T* g, int64_t n,
                       int64_t m, T eps, T exp_lo, T exp_hi, int64_t r0, int64_t r1,
                       double* acc) {
  const FlushDenormals flush;
  const T inv = T(1) / eps, inf = std::numeric_limits<T>::infinity();
  std::vector<T> col(m);
  for (int64_t row = r0, problem = -1; row < r1; ++row) {
    const int64_t p = row / n;
    if (p != problem) {
      problem = p;
      for (int64_t j = 0; j < m; ++j)
        col[j] = b[p * m + j] > 0 ? std::log(b[p * m + j]) + g[p * m + j] * inv : -inf;
    }
    if (!(a[row] > 0)) continue;
    const T start = std::log(a[row]) + f[row] * inv;
    const T *c = C + row * m, *cols = col.data();
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < m; ++j) {
      const T z = start + cols[j] - c[j] * inv;
      sum += z < exp_lo ? T(0) : exp_in_range(z > exp_hi ? exp_hi : z) * c[j];  // NaN stays
    }
    acc[p] += double(sum);
  }
}

template <typename T>
void transport_cost(const T* C, const T* a, const T* b, const T* f, const T* g, T* out,
                    int64_t batch, int64_t n, int64_t m, T eps, T exp_lo, T exp_hi,
                    int threads) {
  sum_rows_by_problem(
      batch, n, batch * n * m, threads,
      [&](int64_t r0, int64_t r1, double* acc) {
        cost_rows(C, a, b, f, g, n, m, eps, exp_lo, exp_hi, r0, r1, acc);
      },
      out);
}

// transport_cost(C, a, b, f, g, out, batch, n, m, eps, exp_lo, exp_hi, is_double, threads):
// addresses of contiguous CPU buffers of one float dtype (see kernels/cpu_stabilised.py);
// entries with an exponent below exp_lo count 0, exponents are capped at exp_hi (the loop's
// range); writes out (B,).
PyObject* transport_cost_py(PyObject*, PyObject* args) {
  unsigned long long c, a, b, f, g, out;
  long long batch, n, m;
  double eps, exp_lo, exp_hi;
  int is_double, threads;
  if (!PyArg_ParseTuple(args, "KKKKKKLLLdddpi", &c, &a, &b, &f, &g, &out, &batch, &n, &m, &eps,
                        &exp_lo, &exp_hi, &is_double, &threads))
    return nullptr;
  if (batch < 1 || n < 1 || m < 1 || threads < 1 || !(eps > 0)) {
    PyErr_SetString(PyExc_ValueError, "transport_cost: sizes and threads >= 1, eps > 0");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    transport_cost(as_ptr<const double>(c), as_ptr<const double>(a), as_ptr<const double>(b),
                   as_ptr<const double>(f), as_ptr<const double>(g), as_ptr<double>(out), batch,
                   n, m, eps, exp_lo, exp_hi, threads);
  else
    transport_cost(as_ptr<const float>(c), as_ptr<const float>(a), as_ptr<const float>(b),
                   as_ptr<const float>(f), as_ptr<const float>(g), as_ptr<float>(out), batch, n,
                   m, float(eps), float(exp_lo), float(exp_hi), threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// stabilised_iterate(C, a, b, f, g, K, fbar, gbar, valid, counts, ran, converged, batch, n, m,
// iters, eps, damping, absorb, accurate, exp_lo, exp_hi, tol, norm, every, is_double, threads):
// addresses of contiguous CPU buffers (see kernels/cpu_stabilised.py); tol < 0: no early stop
// (ran and converged unused).
PyObject* stabilised_iterate(PyObject*, PyObject* args) {
  unsigned long long c, a, b, f, g, k, fb, gb, valid, counts, ran, converged;
  long long batch, n, m;
  int iters, norm, every, is_double, threads;
  double tol;
  Limits L;
  if (!PyArg_ParseTuple(args, "KKKKKKKKKKKKLLLidddddddiipi", &c, &a, &b, &f, &g, &k, &fb, &gb,
                        &valid, &counts, &ran, &converged, &batch, &n, &m, &iters, &L.eps,
                        &L.lam, &L.absorb, &L.accurate, &L.exp_lo, &L.exp_hi, &tol, &norm,
                        &every, &is_double, &threads))
    return nullptr;
  if (batch < 1 || n < 1 || m < 1 || iters < 1 || threads < 1 || every < 1 || !(L.eps > 0) ||
      (norm != 1 && norm != 2)) {
    PyErr_SetString(PyExc_ValueError,
                    "stabilised_iterate: sizes, iters, threads, every must be >= 1, eps > 0, "
                    "norm 1 or 2");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    iterate(as_ptr<const double>(c), as_ptr<const double>(a), as_ptr<const double>(b),
            as_ptr<double>(f), as_ptr<double>(g), as_ptr<double>(k), as_ptr<double>(fb),
            as_ptr<double>(gb), as_ptr<int32_t>(valid), as_ptr<int64_t>(counts), batch, n, m,
            iters, L, threads, tol, norm, every, as_ptr<int64_t>(ran),
            as_ptr<uint8_t>(converged));
  else
    iterate(as_ptr<const float>(c), as_ptr<const float>(a), as_ptr<const float>(b),
            as_ptr<float>(f), as_ptr<float>(g), as_ptr<float>(k), as_ptr<float>(fb),
            as_ptr<float>(gb), as_ptr<int32_t>(valid), as_ptr<int64_t>(counts), batch, n, m,
            iters, L, threads, tol, norm, every, as_ptr<int64_t>(ran),
            as_ptr<uint8_t>(converged));
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"stabilised_iterate", stabilised_iterate, METH_VARARGS,
     "Run stabilised scaling-domain Sinkhorn iterations (see kernels/cpu_stabilised.py)."},
    {"transport_cost", transport_cost_py, METH_VARARGS,
     "The transport cost <P, C> of the potentials (see kernels/cpu_stabilised.py)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stabilised_cpu",
                      "Native CPU stabilised Sinkhorn iterations for optical-ot.", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__stabilised_cpu(void) { return PyModule_Create(&module); }
