// The dense factorised cost on the CPU, for the pairs that carry mass, with its range; the row
// norms it is factorised with; and its chain rule: the plan's products and the row update.
//
// Problem p has embeddings x (n, d) and y (m, d) (rows contiguous, problems batch-strided),
// factors r, sigma (n) and c, tau (m), and weights a (n), b (m) (optical_ops/costs.py):
//
//   C_ij = r_i + c_j - s sigma_i tau_j <x_i, y_j>     (clamped at 0 for the squared Euclidean)
//
// is computed for i < n_p and j < m_p, one past the last row and column with mass, so a padded
// batch pays for its real tokens only; lo and hi are the minimum and maximum over the pairs with
// a_i > 0 and b_j > 0 (NaN when one of them is NaN), and every other pair is set to lo, which
// is the contract of optical_ops/softmin_dense.py's sanitised_cost_range. The products run in
// blocks of four rows of x against four rows of y (block_dots).
//
// Parallelism: one problem per thread when the batch's work is large enough; else one thread.
// Built without any PyTorch header: the Python side passes data pointers of CPU tensors it has
// checked (kernels/cpu_dense_cost.py).

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
struct Factors {
  const T *row_offset, *col_offset, *row_scale, *col_scale, *a, *b;
  T neg_scale;  // -s
  bool clamp;   // at 0 (squared Euclidean)
};

// out[r][c] = <x_r, y_c> for MR rows of x and NR rows of y (row stride d): MR NR independent
// chains of vector FMAs with MR + NR loads per MR NR FMAs (4 x 4: eight loads for sixteen, and
// sixteen chains to cover two FMA pipes' latency; NOTES O17). The 4 x 4 block's 16
// accumulators and 8 operands fit AVX-512's 32 vector registers; the AVX2 and SSE2 clones
// spill some of them. Each dot is the sum of its lanes' partial sums, then of the d mod kLanes
// last products.
template <int MR, int NR, typename T>
INLINE void block_dots(const T* __restrict x, const T* __restrict y, int64_t d, T (*out)[4]) {
  using V = typename Vec<T>::type;
  constexpr int64_t kLanes = Vec<T>::kLanes;
  V acc[MR][NR] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    V xv[MR], yv[NR];
    for (int r = 0; r < MR; ++r) __builtin_memcpy(&xv[r], x + r * d + k, sizeof(V));
    for (int c = 0; c < NR; ++c) __builtin_memcpy(&yv[c], y + c * d + k, sizeof(V));
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NR; ++c) acc[r][c] += xv[r] * yv[c];
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) {
      T sum = 0;
      for (int64_t l = 0; l < kLanes; ++l) sum += acc[r][c][l];
      for (int64_t t = k; t < d; ++t) sum += x[r * d + t] * y[c * d + t];
      out[r][c] = sum;
    }
}

// block_dots for a block of rows x cols, rows in 1..4 and cols 4 or 1.
template <typename T>
INLINE void dots(const T* x, const T* y, int64_t d, int64_t rows, int64_t cols, T (*out)[4]) {
  const bool four = cols == 4;
  switch (rows) {
    case 4: return four ? block_dots<4, 4>(x, y, d, out) : block_dots<4, 1>(x, y, d, out);
    case 3: return four ? block_dots<3, 4>(x, y, d, out) : block_dots<3, 1>(x, y, d, out);
    case 2: return four ? block_dots<2, 4>(x, y, d, out) : block_dots<2, 1>(x, y, d, out);
    default: return four ? block_dots<1, 4>(x, y, d, out) : block_dots<1, 1>(x, y, d, out);
  }
}

// One problem: out (n, m) row-major, x (n, d), y (m, d) row-major; f's pointers at its rows
// and columns; writes its (lo, hi).
template <typename T>
PER_ISA void cost_one(const T* x, const T* y, const Factors<T>& f, int64_t n, int64_t m,
                      int64_t d, T* out, T* lo_out, T* hi_out) {
  const int64_t rows = extent(f.a, n), cols = extent(f.b, m);
  T lo = std::numeric_limits<T>::infinity(), hi = -lo;
  bool nan = false;
  for (int64_t i = 0; i < rows; i += 4) {
    const int64_t block_rows = std::min<int64_t>(4, rows - i);
    for (int64_t j = 0; j < cols;) {
      const int64_t block_cols = cols - j >= 4 ? 4 : 1;
      T products[4][4];
      dots(x + i * d, y + j * d, d, block_rows, block_cols, products);
      for (int64_t r = 0; r < block_rows; ++r) {
        const int64_t row = i + r;
        const T row_factor = f.row_scale[row] * f.neg_scale;
        const bool mass_i = f.a[row] > 0;
        for (int64_t c = 0; c < block_cols; ++c) {
          const int64_t col = j + c;
          T v = products[r][c] * row_factor * f.col_scale[col] + f.row_offset[row] +
                f.col_offset[col];
          if (f.clamp) v = std::max(v, T(0));
          out[row * m + col] = v;
          if (mass_i && f.b[col] > 0) {
            nan = nan || v != v;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
          }
        }
      }
      j += block_cols;
    }
  }
  if (nan) lo = hi = std::numeric_limits<T>::quiet_NaN();
  for (int64_t i = 0; i < n; ++i) {
    T* row = out + i * m;
    if (i >= rows || !(f.a[i] > 0)) {
      std::fill(row, row + m, lo);
      continue;
    }
    for (int64_t j = 0; j < cols; ++j)
      if (!(f.b[j] > 0)) row[j] = lo;
    std::fill(row + cols, row + m, lo);
  }
  *lo_out = lo;
  *hi_out = hi;
}

// Below this many multiply-adds (B n m d) a batch runs on one thread: a parallel region's
// fork/join would cost more than it saves.
constexpr int64_t kParallelMinWork = int64_t(1) << 22;

template <typename T>
void cost_batch(const T* x, const T* y, int64_t x_stride, int64_t y_stride, Factors<T> f,
                int64_t batch, int64_t n, int64_t m, int64_t d, T* out, T* lo, T* hi,
                int threads) {
  const bool parallel = threads > 1 && batch > 1 && batch * n * m * d >= kParallelMinWork;
#pragma omp parallel for schedule(dynamic, 1) num_threads(parallel ? threads : 1)
  for (int64_t p = 0; p < batch; ++p) {
    Factors<T> fp = f;
    fp.row_offset += p * n;
    fp.row_scale += p * n;
    fp.a += p * n;
    fp.col_offset += p * m;
    fp.col_scale += p * m;
    fp.b += p * m;
    cost_one(x + p * x_stride, y + p * y_stride, fp, n, m, d, out + p * n * m, lo + p, hi + p);
  }
}

// g <- alpha (g + beta <z, g> z) + gamma z for one row of d entries (beta null: no dot). The
// order keeps the intermediates finite: for the cosine cost (alpha = -s w sigma, beta =
// -sigma^2) alpha (beta <z, g>) stays near s w sigma^2 |g|, where the product alpha beta, formed
// first, would reach s w sigma^3 and overflow for rows near the norm floor.
template <typename T>
INLINE void update_row(const T* __restrict z, T* __restrict g, int64_t d, T alpha, const T* beta,
                       T gamma) {
  const T along = (beta ? alpha * (*beta * dot(z, g, d)) : T(0)) + gamma;
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) g[k] = alpha * g[k] + along * z[k];
}

// Rows [begin, end) of a batch of n-row problems: g_i <- alpha_i (g_i + beta_i <z_i, g_i> z_i)
// + gamma_i z_i, beta or gamma null for 0; with mass, rows whose plan marginal mass_i is 0 are
// left as they are (their plan row is 0, so g_i is, and so is the update of a finite z_i: the
// padding of a ragged batch is never read).
// Problems are z_stride and g_stride entries apart, rows contiguous; each row stays in L1
// between its dot and its update.
template <typename T>
PER_ISA void update_rows(const T* z, int64_t z_stride, T* g, int64_t g_stride, const T* alpha,
                         const T* beta, const T* gamma, const T* mass, int64_t n, int64_t d,
                         int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    if (mass && mass[row] == T(0)) continue;
    update_row(z + (row / n) * z_stride + (row % n) * d, g + (row / n) * g_stride + (row % n) * d,
               d, alpha[row], beta ? beta + row : nullptr, gamma ? gamma[row] : T(0));
  }
}

template <typename T>
void row_gradients(unsigned long long z, long long z_stride, unsigned long long g,
                   long long g_stride, const unsigned long long* coefficients, long long batch,
                   long long n, long long d, int threads) {
  const int64_t rows = batch * n;
  const int parts = rows * d >= kRowPassParallelMinEntries ? std::max(1, threads) : 1;
  const T *alpha = as_ptr<const T>(coefficients[0]), *beta = as_ptr<const T>(coefficients[1]),
          *gamma = as_ptr<const T>(coefficients[2]), *mass = as_ptr<const T>(coefficients[3]);
#pragma omp parallel for num_threads(parts)
  for (int part = 0; part < parts; ++part)
    update_rows(as_ptr<const T>(z), z_stride, as_ptr<T>(g), g_stride, alpha, beta, gamma, mass,
                n, d, rows * part / parts, rows * (part + 1) / parts);
}

// The plan's products for the gradient (optical_ops/costs.py: input_grads). Problem p has a plan
// P_ij = r_i M_ij c_j (M (n, m) row-major; r or c null: 1) or, in the log form, P_ij =
// exp(r_i + c_j + k M_ij) (exponents below lo give 0, above hi are capped, NaN stays NaN: the
// range of exp_in_range), which is 0 past n_p and m_p, one past
// the last row and column with positive weight a_i, b_j (every primitive's plan is 0 where a
// weight is), so only the n_p x m_p block is read:
//
//   rows_i = sum_j P_ij,   cols_j = sum_i P_ij,
//   p_y_i = sum_j P_ij ys_j y_j   (n, d),   p_x_j = sum_i P_ij xs_i x_i   (m, d),
//
// (xs, ys null: 1; p_y or p_x null: not formed), every row past the extents 0. With the chain
// rule's coefficients for a side (RowUpdate), its product becomes that side's gradient while the
// problem is in L2: p_y_i <- alpha_i (p_y_i + beta_i <x_i, p_y_i> x_i) + gamma_i rows_i x_i for
// the rows with mass, and the same for p_x with y and cols (benchmarks/NOTES.md, O31).

// out[r] = sum_k A[r][k] B[k] for rows r < R of A (row stride lda) and rows k < inner of B
// (n x d, row stride d): per chunk of three vectors of the d columns, R x 3 accumulators that
// stay in registers while k runs (R = 4: twelve, with three loads of B per twelve FMAs).
template <int R, typename T>
INLINE void rows_times(const T* __restrict A, int64_t lda, const T* __restrict B, int64_t inner,
                       int64_t d, T* __restrict out) {
  using V = typename Vec<T>::type;
  constexpr int64_t kLanes = Vec<T>::kLanes;
  int64_t k0 = 0;
  for (; k0 + 3 * kLanes <= d; k0 += 3 * kLanes) {
    V acc[R][3] = {};
    for (int64_t k = 0; k < inner; ++k) {
      V bv[3];
      for (int c = 0; c < 3; ++c) __builtin_memcpy(&bv[c], B + k * d + k0 + c * kLanes, sizeof(V));
      for (int r = 0; r < R; ++r) {
        const T coef = A[r * lda + k];
        for (int c = 0; c < 3; ++c) acc[r][c] += coef * bv[c];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 3; ++c) __builtin_memcpy(out + r * d + k0 + c * kLanes, &acc[r][c], sizeof(V));
  }
  for (; k0 + kLanes <= d; k0 += kLanes) {
    V acc[R] = {};
    for (int64_t k = 0; k < inner; ++k) {
      V bv;
      __builtin_memcpy(&bv, B + k * d + k0, sizeof(V));
      for (int r = 0; r < R; ++r) acc[r] += A[r * lda + k] * bv;
    }
    for (int r = 0; r < R; ++r) __builtin_memcpy(out + r * d + k0, &acc[r], sizeof(V));
  }
  for (int r = 0; r < R; ++r)
    for (int64_t t = k0; t < d; ++t) {
      T sum = 0;
      for (int64_t k = 0; k < inner; ++k) sum += A[r * lda + k] * B[k * d + t];
      out[r * d + t] = sum;
    }
}

// out (rows, d) = A (rows, inner) B (inner, d), four rows of A at a time.
template <typename T>
INLINE void matrix_product(const T* A, int64_t rows, int64_t inner, const T* B, int64_t d,
                           T* out) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) rows_times<4>(A + i * inner, inner, B, inner, d, out + i * d);
  for (; i < rows; ++i) rows_times<1>(A + i * inner, inner, B, inner, d, out + i * d);
}

// The coefficients (one per row) of update_row for one side, gamma per unit of plan mass; alpha
// null: no update; beta or gamma null: 0.
template <typename T>
struct RowUpdate {
  const T *alpha, *beta, *gamma;
};

// g_i <- update_row for the rows i < len with mass_i > 0 of a problem (z, g (len, d)), when
// the update is given.
template <typename T>
INLINE void update_problem_rows(const RowUpdate<T>& u, const T* z, T* g, const T* mass,
                                int64_t len, int64_t d) {
  if (!u.alpha) return;
  for (int64_t i = 0; i < len; ++i)
    if (mass[i] != T(0))
      update_row(z + i * d, g + i * d, d, u.alpha[i], u.beta ? u.beta + i : nullptr,
                 u.gamma ? u.gamma[i] * mass[i] : T(0));
}

template <typename T>
struct PlanOperands {
  const T *M, *r, *c, *x, *xs, *y, *ys, *a, *b;
  T *p_y, *p_x, *rows, *cols;
  RowUpdate<T> x_update, y_update;  // of p_y (with x) and of p_x (with y)
  int64_t x_stride, y_stride;       // batch strides of x and y (rows contiguous)
  bool log_form;                    // P_ij = exp(r_i + c_j + k M_ij), with exp_lo, exp_hi
  T k, exp_lo, exp_hi;
};

// One problem (pointers at its start, r, c, xs, ys never null); work buffers py_coef (n m) for
// the scaled plan P_ij ys_j and px_coef (m n) for its transpose scaled by xs_i.
template <typename T>
PER_ISA void products_one(const PlanOperands<T>& o, int64_t n, int64_t m, int64_t d,
                          T* py_coef, T* px_coef) {
  const int64_t np = extent(o.a, n), mp = extent(o.b, m);
  std::fill(o.cols, o.cols + m, T(0));
  for (int64_t i = 0; i < np; ++i) {
    const T *__restrict mi = o.M + i * m, *__restrict c = o.c;
    const T ri = o.r[i];
    T *__restrict coef = py_coef + i * mp, *__restrict cols = o.cols;
    T sum = 0;
    if (o.log_form) {
      const T k = o.k, lo = o.exp_lo, hi = o.exp_hi;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < mp; ++j) {
        const T z = ri + c[j] + k * mi[j];
        const T p = z < lo ? T(0) : exp_in_range(z > hi ? hi : z);
        sum += p;
        cols[j] += p;
        coef[j] = p;
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < mp; ++j) {
        const T p = ri * mi[j] * c[j];
        sum += p;
        cols[j] += p;
        coef[j] = p;
      }
    }
    o.rows[i] = sum;
    if (o.p_x) {
      const T xsi = o.xs[i];
      for (int64_t j = 0; j < mp; ++j) px_coef[j * np + i] = coef[j] * xsi;
    }
#pragma omp simd
    for (int64_t j = 0; j < mp; ++j) coef[j] *= o.ys[j];
  }
  std::fill(o.rows + np, o.rows + n, T(0));
  if (o.p_y) {
    matrix_product(py_coef, np, mp, o.y, d, o.p_y);
    update_problem_rows(o.x_update, o.x, o.p_y, o.rows, np, d);
    std::fill(o.p_y + np * d, o.p_y + n * d, T(0));
  }
  if (o.p_x) {
    matrix_product(px_coef, mp, np, o.x, d, o.p_x);
    update_problem_rows(o.y_update, o.y, o.p_x, o.cols, mp, d);
    std::fill(o.p_x + mp * d, o.p_x + m * d, T(0));
  }
}

template <typename T>
void products_batch(PlanOperands<T> o, int64_t batch, int64_t n, int64_t m, int64_t d,
                    int threads) {
  const bool parallel = threads > 1 && batch > 1 && batch * n * m * d >= kParallelMinWork;
  const std::vector<T> ones(std::max(n, m), T(1));  // for the absent r, c, xs, ys
#pragma omp parallel num_threads(parallel ? threads : 1)
  {
    std::vector<T> py_coef(n * m), px_coef(o.p_x ? n * m : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < batch; ++p) {
      PlanOperands<T> q = o;
      q.M += p * n * m;
      q.r = o.r ? o.r + p * n : ones.data();
      q.c = o.c ? o.c + p * m : ones.data();
      q.xs = o.xs ? o.xs + p * n : ones.data();
      q.ys = o.ys ? o.ys + p * m : ones.data();
      q.a += p * n;
      q.b += p * m;
      if (q.x) q.x += p * o.x_stride;
      if (q.y) q.y += p * o.y_stride;
      if (q.p_y) q.p_y += p * n * d;
      if (q.p_x) q.p_x += p * m * d;
      for (RowUpdate<T>* u : {&q.x_update, &q.y_update}) {
        const int64_t len = u == &q.x_update ? n : m;
        if (u->alpha) u->alpha += p * len;
        if (u->beta) u->beta += p * len;
        if (u->gamma) u->gamma += p * len;
      }
      q.rows += p * n;
      q.cols += p * m;
      products_one(q, n, m, d, py_coef.data(), px_coef.data());
    }
  }
}

// products_batch on the buffers at these addresses, typed T.
template <typename T>
void run_products(unsigned long long M, unsigned long long r, unsigned long long c,
                  unsigned long long x, unsigned long long xs, unsigned long long y,
                  unsigned long long ys, unsigned long long a, unsigned long long b,
                  long long x_stride, long long y_stride, unsigned long long p_y,
                  unsigned long long p_x, unsigned long long rows, unsigned long long cols,
                  const unsigned long long* updates, long long batch, long long n, long long m,
                  long long d, int log_form, double k, double exp_lo, double exp_hi,
                  int threads) {
  const PlanOperands<T> o{as_ptr<const T>(M), as_ptr<const T>(r), as_ptr<const T>(c),
                          as_ptr<const T>(x), as_ptr<const T>(xs), as_ptr<const T>(y),
                          as_ptr<const T>(ys), as_ptr<const T>(a), as_ptr<const T>(b),
                          as_ptr<T>(p_y), as_ptr<T>(p_x), as_ptr<T>(rows), as_ptr<T>(cols),
                          {as_ptr<const T>(updates[0]), as_ptr<const T>(updates[1]),
                           as_ptr<const T>(updates[2])},
                          {as_ptr<const T>(updates[3]), as_ptr<const T>(updates[4]),
                           as_ptr<const T>(updates[5])},
                          x_stride, y_stride, log_form != 0, T(k), T(exp_lo), T(exp_hi)};
  products_batch(o, batch, n, m, d, threads);
}

// Rows [begin, end) of a batch of n-row problems z (rows contiguous, problems z_stride apart):
// out_i = |z_i| = sqrt(<z_i, z_i>); bad_padding set when a row outside `valid` (null: none is)
// has a non-finite norm, bad_valid when a row inside it has a norm whose square is not finite
// (the squared Euclidean cost's offset; then the caller looks closer).
template <typename T>
PER_ISA void norm_rows(const T* z, int64_t z_stride, const bool* valid, int64_t n, int64_t d,
                       int64_t begin, int64_t end, T* out, bool& bad_padding, bool& bad_valid) {
  for (int64_t row = begin; row < end; ++row) {
    const T* zr = z + (row / n) * z_stride + (row % n) * d;
    const T norm = std::sqrt(dot(zr, zr, d));
    out[row] = norm;
    const bool in = valid == nullptr || valid[row];
    bad_padding = bad_padding || (!in && !std::isfinite(norm));
    bad_valid = bad_valid || (in && !std::isfinite(norm * norm));
  }
}

template <typename T>
void norms(unsigned long long z, long long z_stride, unsigned long long valid,
           unsigned long long out, long long batch, long long n, long long d, int threads,
           bool* flags) {
  const int64_t rows = batch * n;
  const int parts = rows * d >= kRowPassParallelMinEntries ? std::max(1, threads) : 1;
  bool bad_padding = false, bad_valid = false;
#pragma omp parallel for num_threads(parts) reduction(|| : bad_padding, bad_valid)
  for (int part = 0; part < parts; ++part)
    norm_rows(as_ptr<const T>(z), z_stride, as_ptr<const bool>(valid), n, d,
              rows * part / parts, rows * (part + 1) / parts, as_ptr<T>(out), bad_padding,
              bad_valid);
  flags[0] = bad_padding;
  flags[1] = bad_valid;
}

template <typename T>
void run(unsigned long long x, unsigned long long y, long long x_stride, long long y_stride,
         const unsigned long long* factors, double scale, int clamp, long long batch, long long n,
         long long m, long long d, unsigned long long out, unsigned long long lo,
         unsigned long long hi, int threads) {
  Factors<T> f{as_ptr<const T>(factors[0]), as_ptr<const T>(factors[1]),
               as_ptr<const T>(factors[2]), as_ptr<const T>(factors[3]),
               as_ptr<const T>(factors[4]), as_ptr<const T>(factors[5]),
               static_cast<T>(-scale), clamp != 0};
  cost_batch(as_ptr<const T>(x), as_ptr<const T>(y), x_stride, y_stride, f, batch, n, m, d,
             as_ptr<T>(out), as_ptr<T>(lo), as_ptr<T>(hi), threads);
}

// dense_cost(x, y, x_stride, y_stride, row_offset, col_offset, row_scale, col_scale, a, b,
//            scale, clamp, batch, n, m, d, out, lo, hi, is_double, threads): addresses of CPU
// buffers of one float dtype; x, y with contiguous rows and batch strides x_stride, y_stride
// (entries); the others contiguous; out (batch, n, m), lo and hi (batch,) are written.
PyObject* dense_cost(PyObject*, PyObject* args) {
  unsigned long long x, y, out, lo, hi, factors[6];
  long long x_stride, y_stride, batch, n, m, d;
  double scale;
  int clamp, is_double, threads;
  if (!PyArg_ParseTuple(args, "KKLLKKKKKKdpLLLLKKKpi", &x, &y, &x_stride, &y_stride,
                        &factors[0], &factors[1], &factors[2], &factors[3], &factors[4],
                        &factors[5], &scale, &clamp, &batch, &n, &m, &d, &out, &lo, &hi,
                        &is_double, &threads))
    return nullptr;
  if (batch < 1 || n < 1 || m < 1 || d < 1 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "dense_cost: sizes and threads must be >= 1");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    run<double>(x, y, x_stride, y_stride, factors, scale, clamp, batch, n, m, d, out, lo, hi,
                threads);
  else
    run<float>(x, y, x_stride, y_stride, factors, scale, clamp, batch, n, m, d, out, lo, hi,
               threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// cost_row_gradients(z, z_stride, g, g_stride, alpha, beta, gamma, mass, batch, n, d,
// is_double, threads): addresses of CPU buffers of one float dtype; z and g (batch, n, d) with
// contiguous rows and batch strides z_stride, g_stride (g updated in place); alpha, beta, gamma,
// mass (batch, n) contiguous, beta, gamma and mass 0 when absent.
PyObject* cost_row_gradients(PyObject*, PyObject* args) {
  unsigned long long z, g, coefficients[4];
  long long z_stride, g_stride, batch, n, d;
  int is_double, threads;
  if (!PyArg_ParseTuple(args, "KLKLKKKKLLLpi", &z, &z_stride, &g, &g_stride, &coefficients[0],
                        &coefficients[1], &coefficients[2], &coefficients[3], &batch, &n, &d,
                        &is_double, &threads))
    return nullptr;
  if (batch < 0 || n < 0 || d < 1 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "cost_row_gradients: bad sizes or threads");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    row_gradients<double>(z, z_stride, g, g_stride, coefficients, batch, n, d, threads);
  else
    row_gradients<float>(z, z_stride, g, g_stride, coefficients, batch, n, d, threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// plan_products(M, r, c, x, xs, y, ys, a, b, x_stride, y_stride, p_y, p_x, rows, cols, x_alpha,
// x_beta, x_gamma, y_alpha, y_beta, y_gamma, batch, n, m, d, log_form, k, exp_lo, exp_hi,
// is_double, threads): addresses of CPU buffers of one float dtype (0: absent for r, c, xs, ys,
// p_y, p_x and the update coefficients; x when neither p_x nor x's update is asked for, y when
// neither p_y nor y's; r and c present in the log form); x and y with contiguous rows and batch
// strides x_stride, y_stride (entries); the others contiguous. Writes p_y (batch, n, d), p_x
// (batch, m, d), rows (batch, n), cols (batch, m); p_y updated with x_alpha.. when x_alpha is
// given, p_x with y_alpha.. likewise.
PyObject* plan_products(PyObject*, PyObject* args) {
  unsigned long long M, r, c, x, xs, y, ys, a, b, p_y, p_x, rows, cols, updates[6];
  long long x_stride, y_stride, batch, n, m, d;
  int log_form, is_double, threads;
  double k, exp_lo, exp_hi;
  if (!PyArg_ParseTuple(args, "KKKKKKKKKLLKKKKKKKKKKLLLLpdddpi", &M, &r, &c, &x, &xs, &y, &ys,
                        &a, &b, &x_stride, &y_stride, &p_y, &p_x, &rows, &cols, &updates[0],
                        &updates[1], &updates[2], &updates[3], &updates[4], &updates[5], &batch,
                        &n, &m, &d, &log_form, &k, &exp_lo, &exp_hi, &is_double, &threads))
    return nullptr;
  if (batch < 1 || n < 1 || m < 1 || d < 1 || threads < 1 || (log_form && (!r || !c)) ||
      (updates[0] && (!p_y || !x)) || (updates[3] && (!p_x || !y))) {
    PyErr_SetString(PyExc_ValueError,
                    "plan_products: sizes and threads must be >= 1, r and c given in log form, "
                    "an update with its product and embeddings");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    run_products<double>(M, r, c, x, xs, y, ys, a, b, x_stride, y_stride, p_y, p_x, rows, cols,
                         updates, batch, n, m, d, log_form, k, exp_lo, exp_hi, threads);
  else
    run_products<float>(M, r, c, x, xs, y, ys, a, b, x_stride, y_stride, p_y, p_x, rows, cols,
                        updates, batch, n, m, d, log_form, k, exp_lo, exp_hi, threads);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// row_norms(z, z_stride, valid, out, batch, n, d, is_double, threads) -> (padding_not_finite,
// valid_not_safe): addresses of CPU buffers; z (batch, n, d) of one float dtype with contiguous
// rows and batch stride z_stride (entries); valid (batch, n) bool or 0 (every row); writes out
// (batch, n) in z's dtype.
PyObject* row_norms(PyObject*, PyObject* args) {
  unsigned long long z, valid, out;
  long long z_stride, batch, n, d;
  int is_double, threads;
  if (!PyArg_ParseTuple(args, "KLKKLLLpi", &z, &z_stride, &valid, &out, &batch, &n, &d,
                        &is_double, &threads))
    return nullptr;
  if (batch < 0 || n < 0 || d < 1 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "row_norms: bad sizes or threads");
    return nullptr;
  }
  bool flags[2];
  Py_BEGIN_ALLOW_THREADS
  if (is_double)
    norms<double>(z, z_stride, valid, out, batch, n, d, threads, flags);
  else
    norms<float>(z, z_stride, valid, out, batch, n, d, threads, flags);
  Py_END_ALLOW_THREADS
  return Py_BuildValue("(OO)", flags[0] ? Py_True : Py_False, flags[1] ? Py_True : Py_False);
}

// extents(w, batch, n, is_double) -> list: one past the last index with w > 0 in each row of w
// (batch, n), a contiguous CPU buffer of one float dtype (what every pass above trims to).
template <typename T>
PyObject* row_extents(const T* w, long long batch, long long n) {
  PyObject* out = PyList_New(batch);
  if (out == nullptr) return nullptr;
  for (long long p = 0; p < batch; ++p) {
    PyObject* item = PyLong_FromLongLong(extent(w + p * n, n));
    if (item == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, p, item);
  }
  return out;
}

PyObject* extents(PyObject*, PyObject* args) {
  unsigned long long w;
  long long batch, n;
  int is_double;
  if (!PyArg_ParseTuple(args, "KLLp", &w, &batch, &n, &is_double)) return nullptr;
  if (batch < 0 || n < 0) {
    PyErr_SetString(PyExc_ValueError, "extents: bad sizes");
    return nullptr;
  }
  return is_double ? row_extents(as_ptr<const double>(w), batch, n)
                   : row_extents(as_ptr<const float>(w), batch, n);
}

PyMethodDef methods[] = {
    {"dense_cost", dense_cost, METH_VARARGS,
     "Write the dense factorised cost and its masked range (see kernels/cpu_dense_cost.py)."},
    {"cost_row_gradients", cost_row_gradients, METH_VARARGS,
     "The cost's chain rule row by row, in place (see kernels/cpu_dense_cost.py)."},
    {"extents", extents, METH_VARARGS,
     "One past the last positive weight of each row (see kernels/cpu_dense_cost.py)."},
    {"row_norms", row_norms, METH_VARARGS,
     "Row norms and where they are not finite (see kernels/cpu_dense_cost.py)."},
    {"plan_products", plan_products, METH_VARARGS,
     "The plan's products for the gradient (see kernels/cpu_dense_cost.py)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dense_cost_cpu",
                      "Native CPU dense cost for optical-ot.", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__dense_cost_cpu(void) { return PyModule_Create(&module); }
