// Column-major GEMM on raw pointers for the CPU kernels' tiles: the Fortran BLAS that torch's
// CPU library exports (MKL or OpenBLAS: sgemm_, dgemm_), called without the dispatcher's
// per-call cost. ATen's typed cpublas::gemm is not exported, hence the BLAS symbols, declared
// weak: on a torch build that does not export them the tiles fall back to a plain loop.
// MKL's packed single-precision GEMM (cblas_sgemm_pack / _compute) is declared the same way,
// for loops that multiply by one matrix many times: callers ask has_packed_gemm() first.
#pragma once

#include <cstdint>
#include <type_traits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// The CBLAS enums are passed as their int values (layout 102: column-major; transposes 111:
// none, 112: transposed, 151: packed; identifier 161: the A operand).
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int trans_a, int trans_b, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace dll_ext::blas {

// C (m x n, leading dimension ldc) = alpha * op(A) op(B) + beta * C, column-major; op(X) is X
// or its transpose. Sizes must fit an int (tiles do).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if (m == 0 || n == 0) return;
  const auto blas = [] {
    if constexpr (std::is_same_v<T, float>) return sgemm_;
    else return dgemm_;
  }();
  if (blas != nullptr && k > 0) {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int mi = int(m), ni = int(n), ki = int(k), la = int(lda), lb = int(ldb), lc = int(ldc);
    blas(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      T acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        acc += (trans_a ? a[p + i * lda] : a[i + p * lda]) * (trans_b ? b[j + p * ldb] : b[p + j * ldb]);
      }
      c[i + j * ldc] = alpha * acc + (beta == T(0) ? T(0) : beta * c[i + j * ldc]);
    }
  }
}

inline bool has_packed_gemm() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

// Bytes that hold op(A) (m x k) packed for products with n columns.
inline int64_t packed_a_bytes(int64_t m, int64_t n, int64_t k) {
  return static_cast<int64_t>(cblas_sgemm_pack_get_size(161, int(m), int(n), int(k)));
}

// Packs op(A) (m x k; A is m x k, or k x m when trans_a, column-major, leading dimension lda)
// into dest, which must stay where it is: MKL's packed format holds addresses.
inline void pack_a(bool trans_a, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, void* dest) {
  cblas_sgemm_pack(102, 161, trans_a ? 112 : 111, int(m), int(n), int(k), 1.0f, a, int(lda),
                   static_cast<float*>(dest));
}

// C (m x n, column-major, ldc) = packed op(A) * B + beta * C, B (k x n) column-major; any n up
// to the one packed for.
inline void gemm_packed_a(int64_t m, int64_t n, int64_t k, const void* packed, const float* b, int64_t ldb, float beta,
                          float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm_compute(102, 151, 111, int(m), int(n), int(k), static_cast<const float*>(packed), int(m), b, int(ldb),
                      beta, c, int(ldc));
}

}  // namespace dll_ext::blas
