// Scaling-domain Sinkhorn iterations on the CPU, on a stored kernel K = exp(-(C - min C) / eps).
//
// Problem b has K_b (n, m) row-major at K + b*n*m, weights a_b (n), b_b (m) and the states
//   s = K v  (n),  t = K^T u  (m),   u = a / s,  v = b / t,
// i.e. f = -eps log s and g = min C - eps log t (optical_ops/softmin_dense.py). One iteration is
// the column update t <- K^T (a / s) followed by the row update s <- K (b / t).
//
// Memory traffic: the row update of iteration k and the column update of iteration k+1 both
// walk K row by row, so one pass does both (rows i..i+3: s_i = <K_i, v>, u_i = a_i / s_i, then
// t' += sum u_i K_i while the rows are in L1/L2). n_iters iterations read K n_iters + 1 times
// (4*n*m bytes each in fp32) instead of 2 * n_iters times for two separate mat-vecs.
//
// Small problems (K and a copy of K^T fit in L2 together) are cache-resident, so traffic does not
// matter but the horizontal sum that ends each short row dot does: they copy K^T once and run
// both updates as register-blocked sums of rows (s = sum_j v_j K^T_j, t = sum_i u_i K_i),
// vectorised along rows with no horizontal reduction, on the block of the problem that holds
// its mass (a padded batch pays for its real tokens).
//
// Parallelism: many problems -> one problem per thread at a time, no synchronisation; few large
// problems -> the rows of each problem are split among threads, each keeps a partial t', and
// the partials are summed between passes (two barriers per iteration); little work -> one thread.
// The loss <P, C> is one more pass over K and C (transport_cost).
//
// Built without any PyTorch header: the Python side passes data pointers of contiguous CPU
// tensors it has checked (kernels/cpu_scaling.py). OpenMP resolves to the libgomp that torch
// already loaded, so both share one thread pool.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "native_cpu.h"

namespace {

// acc += sum_{r0 <= i < r1} (a_i / s_i) K_i (rows of length m), loading and storing acc once
// per four rows.
template <typename T>
INLINE void add_scaled_rows(T* acc, const T* a, const T* s, const T* K, int64_t m, int64_t r0,
                            int64_t r1) {
  for (int64_t i = r0; i < r1; i += 4) {
    const int64_t rows = std::min<int64_t>(4, r1 - i);
    T u[4];
    for (int64_t r = 0; r < rows; ++r) u[r] = a[i + r] / s[i + r];
    if (rows == 4)  // a constant row count keeps the partial sums in registers
      weighted_row_sum<true>(acc, u, K + i * m, 4, m);
    else
      weighted_row_sum<true>(acc, u, K + i * m, rows, m);
  }
}

// Rows [r0, r1) of one fused pass: s_i = <K_i, v>; with next_t, also next_t += (a_i / s_i) K_i.
// Four rows at a time: their dots, then one update of next_t while they are in L1/L2.
template <typename T>
INLINE void row_pass(const T* K, int64_t m, const T* a, const T* v, T* s, T* next_t, int64_t r0,
              int64_t r1) {
  for (int64_t i = r0; i < r1; i += 4) {
    const int64_t end = std::min(i + 4, r1);
    if (end - i == 4)
      four_dots(K + i * m, v, m, s + i);
    else
      for (int64_t r = i; r < end; ++r) s[r] = dot(K + r * m, v, m);
    if (next_t != nullptr) add_scaled_rows(next_t, a, s, K, m, i, end);
  }
}

// Largest K (bytes) solved by solve_small: K and K^T then take at most half of a 1 MiB L2.
constexpr int64_t kSmallBytes = 256 * 1024;

// All iterations of one small problem on one thread, on its block up to the last row and
// column with mass rounded up to whole 32-byte blocks of the mat-vec (rows past it have
// u_i = a_i / s_i = 0, columns past it v_j = 0: they add nothing to the states inside), then
// the states past the block as the whole loop has them: s_i = <K_i, v> from the final v and
// t_j = sum_i u_i K_ij from the last u. Work buffers kb and kt (n * m each), u (n), v (m).
template <typename T>
PER_ISA void solve_small(const T* K, const T* a, const T* b, T* s, T* t, int64_t n, int64_t m,
                         int iters, T* kb, T* kt, T* u, T* v) {
  int64_t rows, cols;
  mass_block(a, b, n, m, &rows, &cols);
  const T* block = K;
  if (cols < m) {
    copy_block(K, m, rows, cols, kb);
    block = kb;
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) kt[j * rows + i] = block[i * cols + j];
  for (int it = 0; it < iters; ++it) {
    for (int64_t i = 0; i < rows; ++i) u[i] = a[i] / s[i];
    weighted_row_sum<false>(t, u, block, rows, cols);
    for (int64_t j = 0; j < cols; ++j) v[j] = b[j] / t[j];
    weighted_row_sum<false>(s, v, kt, cols, rows);
  }
  for (int64_t i = rows; i < n; ++i) s[i] = dot(K + i * m, v, cols);
  for (int64_t j = cols; j < m; ++j) {
    T sum = 0;
    for (int64_t i = 0; i < rows; ++i) sum += u[i] * K[i * m + j];
    t[j] = sum;
  }
}

// All iterations of one problem on one thread, one fused pass per iteration; work buffers
// v, t2 of length m.
template <typename T>
PER_ISA void solve_one(const T* K, const T* a, const T* b, T* s, T* t, int64_t n, int64_t m, int iters,
               T* v, T* t2) {
  std::fill(t, t + m, T(0));
  add_scaled_rows(t, a, s, K, m, 0, n);
  for (int it = 0; it < iters; ++it) {
    for (int64_t j = 0; j < m; ++j) v[j] = b[j] / t[j];
    const bool last = it + 1 == iters;
    if (!last) std::fill(t2, t2 + m, T(0));
    row_pass(K, m, a, v, s, last ? nullptr : t2, 0, n);
    if (!last) std::copy(t2, t2 + m, t);
  }
}

// All iterations of one problem, rows split over the threads of the enclosing parallel region.
// partial: threads * m scratch. Must be called by every thread of the team.
template <typename T>
PER_ISA void solve_shared(const T* K, const T* a, const T* b, T* s, T* t, int64_t n, int64_t m, int iters,
                  T* v, T* partial) {
  const int threads = omp_get_num_threads(), me = omp_get_thread_num();
  const int64_t r0 = n * me / threads, r1 = n * (me + 1) / threads;
  const int64_t c0 = m * me / threads, c1 = m * (me + 1) / threads;
  T* mine = partial + static_cast<int64_t>(me) * m;
  auto reduce_partials = [&]() {  // t = sum of the partials, then v = b / t, on my columns
    for (int64_t j = c0; j < c1; ++j) {
      T sum = 0;
      for (int th = 0; th < threads; ++th) sum += partial[static_cast<int64_t>(th) * m + j];
      t[j] = sum;
      v[j] = b[j] / sum;
    }
  };
  std::fill(mine, mine + m, T(0));
  add_scaled_rows(mine, a, s, K, m, r0, r1);
#pragma omp barrier
  reduce_partials();
#pragma omp barrier
  for (int it = 0; it < iters; ++it) {
    const bool last = it + 1 == iters;
    if (!last) std::fill(mine, mine + m, T(0));
    row_pass(K, m, a, v, s, last ? nullptr : mine, r0, r1);
#pragma omp barrier
    if (!last) reduce_partials();
#pragma omp barrier
  }
}

// Thread counts: a parallel region costs a fork/join, and sharing one problem's rows costs two
// barriers per iteration; on a busy machine each can wait a scheduler slice for a descheduled
// partner. So problems are shared only when an iteration is long (kSharedMinEntries entries of
// K), and a batch runs on several threads only when its total work is (kParallelMinWork).
constexpr int64_t kSharedMinEntries = int64_t(1) << 18;
constexpr int64_t kParallelMinWork = int64_t(1) << 22;

template <typename T>
void solve_batch(const T* K, const T* a, const T* b, T* s, T* t, int64_t batch, int64_t n,
                 int64_t m, int iters, int threads) {
  const bool small = n * m * static_cast<int64_t>(sizeof(T)) <= kSmallBytes;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> v(m), t2(m), u(small ? n : 0), kb(small ? n * m : 0), kt(small ? n * m : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < batch; ++p) {
      const T* kp = K + p * n * m;
      if (small)
        solve_small(kp, a + p * n, b + p * m, s + p * n, t + p * m, n, m, iters, kb.data(),
                    kt.data(), u.data(), v.data());
      else
        solve_one(kp, a + p * n, b + p * m, s + p * n, t + p * m, n, m, iters, v.data(),
                  t2.data());
    }
  }
}

template <typename T>
void iterate(const T* K, const T* a, const T* b, T* s, T* t, int64_t batch, int64_t n, int64_t m,
             int iters, int threads) {
  const int64_t work = batch * n * m * iters;
  if (threads > 1 && batch < 2 * threads && n * m >= kSharedMinEntries) {
    std::vector<T> v(m), partial(static_cast<size_t>(threads) * m);
#pragma omp parallel num_threads(threads)
    for (int64_t p = 0; p < batch; ++p) {
      solve_shared(K + p * n * m, a + p * n, b + p * m, s + p * n, t + p * m, n, m, iters,
                   v.data(), partial.data());
#pragma omp barrier
    }
    return;
  }
  const bool parallel = threads > 1 && batch >= 2 && work >= kParallelMinWork;
  solve_batch(K, a, b, s, t, batch, n, m, iters, parallel ? threads : 1);
}

// The transport cost of P = diag(u) K diag(v): acc_p += sum_i u_i sum_j K_ij C_ij v_j over the
// rows [r0, r1) of the batch, where K_ij = 0 adds nothing (a forbidden pair: C = +inf). Each row
// is summed in T's vector lanes, the rows in double.
template <typename T>
PER_ISA void cost_rows(const T* K, const T* C, const T* u, const T* v, int64_t n, int64_t m,
                       int64_t r0, int64_t r1, double* acc) {
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t p = row / n;
    const T *k = K + row * m, *c = C + row * m, *vp = v + p * m;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < m; ++j) sum += k[j] > 0 ? k[j] * c[j] * vp[j] : T(0);
    acc[p] += double(u[row]) * double(sum);
  }
}

template <typename T>
void transport_cost(const T* K, const T* C, const T* u, const T* v, T* out, int64_t batch,
                    int64_t n, int64_t m, int threads) {
  sum_rows_by_problem(
      batch, n, batch * n * m, threads,
      [&](int64_t r0, int64_t r1, double* acc) { cost_rows(K, C, u, v, n, m, r0, r1, acc); },
      out);
}

// transport_cost(K, C, u, v, out, batch, n, m, is_double, threads): addresses of contiguous
// CPU buffers of one float dtype (see kernels/cpu_scaling.py); writes out (batch,).
PyObject* transport_cost_py(PyObject*, PyObject* args) {
  unsigned long long k, c, u, v, out;
  long long batch, n, m;
  int is_double, threads;
  if (!PyArg_ParseTuple(args, "KKKKKLLLpi", &k, &c, &u, &v, &out, &batch, &n, &m, &is_double,
                        &threads))
    return nullptr;
  if (batch < 1 || n < 1 || m < 1 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "transport_cost: sizes and threads must be >= 1");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    transport_cost(as_ptr<const double>(k), as_ptr<const double>(c), as_ptr<const double>(u),
                   as_ptr<const double>(v), as_ptr<double>(out), batch, n, m, threads);
  else
    transport_cost(as_ptr<const float>(k), as_ptr<const float>(c), as_ptr<const float>(u),
                   as_ptr<const float>(v), as_ptr<float>(out), batch, n, m, threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// scaling_iterate(K, a, b, s, t, batch, n, m, iters, is_double, threads): addresses of
// contiguous CPU buffers. s holds the initial f-state on entry; s and t hold the final states.
PyObject* scaling_iterate(PyObject*, PyObject* args) {
  unsigned long long k, a, b, s, t;
  long long batch, n, m;
  int iters, is_double, threads;
  if (!PyArg_ParseTuple(args, "KKKKKLLLipi", &k, &a, &b, &s, &t, &batch, &n, &m, &iters,
                        &is_double, &threads))
    return nullptr;
  if (batch < 1 || n < 1 || m < 1 || iters < 1 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "scaling_iterate: sizes, iters and threads must be >= 1");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    iterate(as_ptr<const double>(k), as_ptr<const double>(a), as_ptr<const double>(b),
            as_ptr<double>(s), as_ptr<double>(t), batch, n, m, iters, threads);
  else
    iterate(as_ptr<const float>(k), as_ptr<const float>(a), as_ptr<const float>(b),
            as_ptr<float>(s), as_ptr<float>(t), batch, n, m, iters, threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"scaling_iterate", scaling_iterate, METH_VARARGS,
     "Run scaling-domain Sinkhorn iterations in place (see kernels/cpu_scaling.py)."},
    {"transport_cost", transport_cost_py, METH_VARARGS,
     "The transport cost of P = diag(u) K diag(v) (see kernels/cpu_scaling.py)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sinkhorn_cpu",
                      "Native CPU Sinkhorn iterations for optical-ot.", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__sinkhorn_cpu(void) { return PyModule_Create(&module); }
