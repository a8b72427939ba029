// CPU kernels of the attention ops (float32 and float64; bfloat16 and float16 through
// float32). Work is cut into tiles of kQueryBlock queries by kKeyBlock
// keys; the GEMMs of a tile call BLAS directly (common/blas.h), without the dispatcher's
// per-call cost. Tiles whose every score is masked (above the causal diagonal, all keys
// padded, an all-False block of a boolean mask) are skipped before their GEMM. Forward is
// parallel over (batch, head, query block); backward over (batch, head), so that each task
// owns the key and value gradients it accumulates.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/blas.h"
#include "common/fast_math.h"
#include "common/host_device.h"
#include "ops/attention/attention.h"

namespace dll_ext::attention {
namespace {

using blas::gemm;
constexpr bool kNoTranspose = false, kTranspose = true;

constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 128;
constexpr std::initializer_list<at::ScalarType> kSupported{at::kFloat, at::kDouble, at::kBFloat16, at::kHalf};

// bfloat16 and float16 run the float32 kernels on float32 copies of the inputs (extra memory
// linear in the sequence length): results are rounded back, lse stays float32.
bool reduced_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

std::optional<at::Tensor> as_float(const std::optional<at::Tensor>& t) {
  if (!t || !reduced_precision(*t)) return t;
  return t->to(at::kFloat);
}

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

template <typename T>
DLL_HOST_DEVICE T exp_of(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_vectorisable(x);
  return std::exp(x);
}

// value where keep, else -inf, without a branch (a bit blend on the float's bits): with a
// select on a bool the compiler emitted a scalar branchy loop.
template <typename T>
DLL_HOST_DEVICE T keep_or_neg_inf(T value, bool keep) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits v, inf;
  const T neg_inf = kNegInf<T>;
  __builtin_memcpy(&v, &value, sizeof(T));
  __builtin_memcpy(&inf, &neg_inf, sizeof(T));
  const Bits all = Bits(0) - static_cast<Bits>(keep);
  const Bits blended = (v & all) | (inf & ~all);
  T out;
  __builtin_memcpy(&out, &blended, sizeof(T));
  return out;
}

// The masks of one row of scores, in place: an additive mask is added, disallowed (bool
// False), padded and causally excluded scores become -inf. Mask pointers are at the row's
// first key; `stride` steps along the keys of an expanded attn_mask (0 where it broadcasts).
template <typename T>
DLL_CPU_CLONES void mask_row(T* row, int64_t cols, const bool* allowed, const T* added, int64_t stride,
                             const bool* padded, int64_t causal_from) {
  // Unit stride (a mask that does not broadcast along the keys) gets its own loops, which
  // vectorise; a broadcast one is a constant along the row.
  if (added && stride == 1) {
    for (int64_t c = 0; c < cols; ++c) row[c] += added[c];
  } else if (added) {
    for (int64_t c = 0; c < cols; ++c) row[c] += added[c * stride];
  }
  if (allowed && stride == 1) {
    for (int64_t c = 0; c < cols; ++c) row[c] = keep_or_neg_inf(row[c], allowed[c]);
  } else if (allowed) {
    for (int64_t c = 0; c < cols; ++c) row[c] = keep_or_neg_inf(row[c], allowed[c * stride]);
  }
  if (padded) {
    for (int64_t c = 0; c < cols; ++c) row[c] = keep_or_neg_inf(row[c], !padded[c]);
  }
  for (int64_t c = causal_from; c < cols; ++c) row[c] = kNegInf<T>;
}

// Raw views of one call: the inputs' rows of head (b, h) and the masks.
template <typename T>
struct Call {
  const Problem& p;
  at::Tensor q, k, v;
  at::Tensor own_allowed, own_added;  // the (L, S) masks made for a broadcast boolean mask
  const bool* allowed = nullptr;      // boolean attn_mask, for skipping tiles
  const bool* bool_mask = nullptr;    // boolean attn_mask applied to rows, unless turned additive
  const T* add_mask = nullptr;
  std::array<int64_t, 4> mask_strides{};
  const bool* padding = nullptr;

  Call(const Problem& problem, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_)
      : p(problem), q(rows_addressable(q_)), k(rows_addressable(k_)), v(rows_addressable(v_)) {
    if (p.attn.defined()) {
      for (int d = 0; d < 4; ++d) mask_strides[d] = p.attn.stride(d);
      if (p.attn.scalar_type() != at::kBool) {
        add_mask = p.attn.const_data_ptr<T>();
      } else if (mask_strides[0] == 0 && mask_strides[1] == 0 && p.batch > 0 && p.heads > 0) {
        // One (L, S) boolean mask for every (batch, head): applied as an additive 0/-inf mask
        // made once (L * S values), since adding a row is cheaper than blending one by its
        // bytes, and every (batch, head) applies it again.
        own_allowed = p.attn[0][0].contiguous();
        own_added = at::zeros({p.queries, p.keys}, q_.options()).masked_fill_(own_allowed.logical_not(), kNegInf<T>);
        allowed = own_allowed.const_data_ptr<bool>();
        add_mask = own_added.const_data_ptr<T>();
        mask_strides = {0, 0, p.keys, 1};
      } else {
        allowed = bool_mask = p.attn.const_data_ptr<bool>();
      }
    }
    if (p.key_padding.defined()) padding = p.key_padding.const_data_ptr<bool>();
  }

  const T* head_rows(const at::Tensor& t, int64_t b, int64_t h, int64_t first) const {
    return t.const_data_ptr<T>() + b * t.stride(0) + h * t.stride(1) + first * t.stride(2);
  }

  int64_t mask_offset(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3];
  }

  // Whether every score of the tile is masked, decided without computing it.
  bool tile_masked(int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols) const {
    if (p.causal && j0 > i0 + rows - 1) return true;
    if (padding) {
      const bool* pad = padding + b * p.keys + j0;
      bool all = true;
      for (int64_t c = 0; c < cols && all; ++c) all = pad[c];
      if (all) return true;
    }
    if (allowed) {
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          if (allowed[mask_offset(b, h, i0 + r, j0 + c)]) return false;
        }
      }
      return true;
    }
    return false;
  }

  // scores (rows x cols, leading dimension kKeyBlock) = scale * q k^T, without the masks.
  void scores(int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols, T* s) const {
    // Row-major S = Q K^T is column-major S^T = K Q^T.
    gemm(kTranspose, kNoTranspose, cols, rows, p.head_dim, static_cast<T>(p.scale),
         head_rows(k, b, h, j0), k.stride(2), head_rows(q, b, h, i0), q.stride(2), T(0), s, kKeyBlock);
  }

  // The masks of query i's scores of keys [j0, j0 + cols), in place: masked scores become -inf,
  // an additive mask is added. Applied row by row, just before the row's softmax pass, so that
  // the row is still in L1 for it (a whole tile is not).
  void mask(int64_t b, int64_t h, int64_t i, int64_t j0, int64_t cols, T* row) const {
    const int64_t at = mask_offset(b, h, i, j0);
    // Keys after the query's position are masked under is_causal (top-left aligned).
    const int64_t causal_from = p.causal ? std::clamp<int64_t>(i + 1 - j0, 0, cols) : cols;
    mask_row(row, cols, bool_mask ? bool_mask + at : nullptr, add_mask ? add_mask + at : nullptr, mask_strides[3],
             padding ? padding + b * p.keys + j0 : nullptr, causal_from);
  }
};

// The maximum and the sum of a row, each over kLanes independent partial results: one running
// value is a serial dependency that keeps the compiler from using vector instructions.
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

template <typename T>
DLL_HOST_DEVICE T row_max(const T* s, int64_t cols) {
  T lanes[kLanes<T>];
  for (T& lane : lanes) lane = kNegInf<T>;
  int64_t c = 0;
  for (; c + kLanes<T> <= cols; c += kLanes<T>) {
    for (int l = 0; l < kLanes<T>; ++l) lanes[l] = s[c + l] > lanes[l] ? s[c + l] : lanes[l];
  }
  for (; c < cols; ++c) lanes[0] = s[c] > lanes[0] ? s[c] : lanes[0];
  T result = kNegInf<T>;
  for (const T lane : lanes) result = lane > result ? lane : result;
  return result;
}

template <typename T>
DLL_HOST_DEVICE T row_sum(const T* s, int64_t cols) {
  T lanes[kLanes<T>] = {};
  int64_t c = 0;
  for (; c + kLanes<T> <= cols; c += kLanes<T>) {
    for (int l = 0; l < kLanes<T>; ++l) lanes[l] += s[c + l];
  }
  for (; c < cols; ++c) lanes[0] += s[c];
  T result = 0;
  for (const T lane : lanes) result += lane;
  return result;
}

// The online-softmax update of one tile's row: s becomes the row's probabilities relative
// to the new running max; returns the factor by which earlier sums and outputs shrink.
template <typename T>
DLL_CPU_CLONES T softmax_update(T* s, int64_t cols, T& max, T& sum) {
  const T tile_max = row_max(s, cols);
  const T new_max = tile_max > max ? tile_max : max;
  if (new_max == kNegInf<T>) {  // nothing unmasked in this row yet
    for (int64_t c = 0; c < cols; ++c) s[c] = T(0);
    return T(1);
  }
  const T shrink = max == kNegInf<T> ? T(0) : exp_of(max - new_max);
  for (int64_t c = 0; c < cols; ++c) s[c] = s[c] == kNegInf<T> ? T(0) : exp_of(s[c] - new_max);
  sum = sum * shrink + row_sum(s, cols);
  max = new_max;
  return shrink;
}

// Backward: a row of scores becomes its probabilities exp(score - lse) (0 where masked, and
// in rows whose every key is masked, which have lse = +inf).
template <typename T>
DLL_CPU_CLONES void probabilities_row(T* row, int64_t cols, T lse) {
  if (lse == -kNegInf<T>) {
    for (int64_t c = 0; c < cols; ++c) row[c] = T(0);
    return;
  }
  for (int64_t c = 0; c < cols; ++c) row[c] = row[c] == kNegInf<T> ? T(0) : exp_of(row[c] - lse);
}

// Dropout on a row: dst = src * keep_scale where the element is kept, else 0 (dst may be src).
// The multiply by the kept flag, not a select, keeps the loop vector code.
template <typename T>
DLL_CPU_CLONES void dropout_row_apply(T* dst, const T* src, int64_t cols, DropoutRow row, int64_t first_key,
                                      uint32_t threshold, T keep_scale) {
  for (int64_t c = 0; c < cols; ++c) {
    dst[c] = src[c] * (static_cast<T>(dropout_keeps(row, first_key + c, threshold)) * keep_scale);
  }
}

// dS = P (dP - delta), in place of dP.
template <typename T>
DLL_CPU_CLONES void score_gradient_row(T* __restrict__ dp, const T* __restrict__ prob, int64_t cols, T delta) {
  for (int64_t c = 0; c < cols; ++c) dp[c] = prob[c] * (dp[c] - delta);
}

template <typename T>
void forward_kernel(const Call<T>& call, at::Tensor& out, at::Tensor& lse) {
  const Problem& p = call.p;
  const int64_t query_blocks = (p.queries + kQueryBlock - 1) / kQueryBlock;
  T* out_data = out.data_ptr<T>();
  T* lse_data = lse.data_ptr<T>();
  const Dropout& drop = p.dropout;
  const T keep_scale = static_cast<T>(drop.keep_scale);
  at::parallel_for(0, p.batch * p.heads * query_blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<T> s(kQueryBlock * kKeyBlock), max(kQueryBlock), sum(kQueryBlock);
    for (int64_t task = first; task < last; ++task) {
      const int64_t bh = task / query_blocks, b = bh / p.heads, h = bh % p.heads;
      const int64_t i0 = (task % query_blocks) * kQueryBlock, rows = std::min(kQueryBlock, p.queries - i0);
      // The output rows accumulate the unnormalised sum of probabilities times values.
      T* acc = out_data + (bh * p.queries + i0) * p.value_dim;
      std::fill(acc, acc + rows * p.value_dim, T(0));
      std::fill(max.begin(), max.end(), kNegInf<T>);
      std::fill(sum.begin(), sum.end(), T(0));
      for (int64_t j0 = 0; j0 < p.keys; j0 += kKeyBlock) {
        const int64_t cols = std::min(kKeyBlock, p.keys - j0);
        if (call.tile_masked(b, h, i0, rows, j0, cols)) continue;
        call.scores(b, h, i0, rows, j0, cols, s.data());
        for (int64_t r = 0; r < rows; ++r) {
          T* row = s.data() + r * kKeyBlock;
          call.mask(b, h, i0 + r, j0, cols, row);
          const T shrink = softmax_update(row, cols, max[r], sum[r]);
          // Dropout acts on the probabilities after their sum is taken: the softmax's
          // normaliser is that of the undropped row.
          if (drop.active) {
            dropout_row_apply(row, row, cols, dropout_row(drop.seed, bh * p.queries + i0 + r), j0, drop.threshold,
                              keep_scale);
          }
          if (shrink != T(1)) {
            for (int64_t e = 0; e < p.value_dim; ++e) acc[r * p.value_dim + e] *= shrink;
          }
        }
        // Row-major acc += P V is column-major acc^T += V^T P^T.
        gemm(kNoTranspose, kNoTranspose, p.value_dim, rows, cols, T(1),
             call.head_rows(call.v, b, h, j0), call.v.stride(2), s.data(), kKeyBlock, T(1), acc, p.value_dim);
      }
      for (int64_t r = 0; r < rows; ++r) {
        // A row whose every key is masked: output 0 and an infinite log-sum-exp, so that the
        // backward's probabilities exp(score - lse) are 0 there too.
        const T inverse = sum[r] > T(0) ? T(1) / sum[r] : T(0);
        for (int64_t e = 0; e < p.value_dim; ++e) acc[r * p.value_dim + e] *= inverse;
        lse_data[bh * p.queries + i0 + r] =
            sum[r] > T(0) ? max[r] + std::log(sum[r]) : std::numeric_limits<T>::infinity();
      }
    }
  });
}

template <typename T>
void backward_kernel(const Call<T>& call, const at::Tensor& grad_out, const at::Tensor& out,
                     const at::Tensor& lse, at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v,
                     at::Tensor& grad_mask) {
  const Problem& p = call.p;
  const T* dout = grad_out.const_data_ptr<T>();
  const T* o = out.const_data_ptr<T>();
  const T* lse_data = lse.const_data_ptr<T>();
  T* dq = grad_q.data_ptr<T>();
  T* dk = grad_k.data_ptr<T>();
  T* dv = grad_v.data_ptr<T>();
  T* dmask = grad_mask.defined() ? grad_mask.data_ptr<T>() : nullptr;
  const T scale = static_cast<T>(p.scale);
  const Dropout& drop = p.dropout;
  const T keep_scale = static_cast<T>(drop.keep_scale);
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t first, int64_t last) {
    // With dropout, O = (P * Z) V for the kept-and-scaled mask Z: dV takes P * Z (in
    // `dropped`), dP is Z * (dO V^T), and dS = P (dP - delta) with delta = rowsum(dO * O) as
    // without dropout.
    std::vector<T> s(kQueryBlock * kKeyBlock), dp(kQueryBlock * kKeyBlock), delta(kQueryBlock);
    std::vector<T> dropped(drop.active ? kQueryBlock * kKeyBlock : 0);
    for (int64_t bh = first; bh < last; ++bh) {
      const int64_t b = bh / p.heads, h = bh % p.heads;
      for (int64_t i0 = 0; i0 < p.queries; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, p.queries - i0);
        const int64_t q_row = (bh * p.queries + i0);
        const T* dout_i = dout + q_row * p.value_dim;
        // delta_i = sum_e dO_ie O_ie, the row's term of the softmax's backward.
        for (int64_t r = 0; r < rows; ++r) {
          T acc = 0;
          for (int64_t e = 0; e < p.value_dim; ++e) acc += dout_i[r * p.value_dim + e] * o[(q_row + r) * p.value_dim + e];
          delta[r] = acc;
        }
        for (int64_t j0 = 0; j0 < p.keys; j0 += kKeyBlock) {
          const int64_t cols = std::min(kKeyBlock, p.keys - j0);
          if (call.tile_masked(b, h, i0, rows, j0, cols)) continue;
          call.scores(b, h, i0, rows, j0, cols, s.data());
          for (int64_t r = 0; r < rows; ++r) {
            call.mask(b, h, i0 + r, j0, cols, s.data() + r * kKeyBlock);
            probabilities_row(s.data() + r * kKeyBlock, cols, lse_data[q_row + r]);
            if (drop.active) {
              dropout_row_apply(dropped.data() + r * kKeyBlock, s.data() + r * kKeyBlock, cols,
                                dropout_row(drop.seed, q_row + r), j0, drop.threshold, keep_scale);
            }
          }
          const T* kept = drop.active ? dropped.data() : s.data();
          const int64_t k_row = bh * p.keys + j0;
          // dV_j += P^T dO_i (column-major: dV^T += dO^T P).
          gemm(kNoTranspose, kTranspose, p.value_dim, cols, rows, T(1), dout_i,
               p.value_dim, kept, kKeyBlock, T(1), dv + k_row * p.value_dim, p.value_dim);
          // dP = dO_i V_j^T (column-major: dP^T = V dO^T).
          gemm(kTranspose, kNoTranspose, cols, rows, p.value_dim, T(1),
               call.head_rows(call.v, b, h, j0), call.v.stride(2), dout_i, p.value_dim, T(0), dp.data(), kKeyBlock);
          // dS = P (dP - delta), in place of dP.
          for (int64_t r = 0; r < rows; ++r) {
            T* d = dp.data() + r * kKeyBlock;
            if (drop.active) {
              dropout_row_apply(d, d, cols, dropout_row(drop.seed, q_row + r), j0, drop.threshold, keep_scale);
            }
            score_gradient_row(d, s.data() + r * kKeyBlock, cols, delta[r]);
            if (dmask) std::copy(d, d + cols, dmask + ((bh * p.queries + i0 + r) * p.keys + j0));
          }
          // dQ_i += scale dS K_j (column-major: dQ^T += K^T dS^T).
          gemm(kNoTranspose, kNoTranspose, p.head_dim, rows, cols, scale,
               call.head_rows(call.k, b, h, j0), call.k.stride(2), dp.data(), kKeyBlock, T(1),
               dq + q_row * p.head_dim, p.head_dim);
          // dK_j += scale dS^T Q_i (column-major: dK^T += Q^T dS).
          gemm(kNoTranspose, kTranspose, p.head_dim, cols, rows, scale,
               call.head_rows(call.q, b, h, i0), call.q.stride(2), dp.data(), kKeyBlock, T(1),
               dk + k_row * p.head_dim, p.head_dim);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const std::optional<at::Tensor>& attn_mask,
                                                         const std::optional<at::Tensor>& key_padding_mask,
                                                         bool is_causal, std::optional<double> scale,
                                                         double dropout_p,
                                                         const std::optional<at::Tensor>& dropout_seed) {
  const Problem p = check_and_resolve("attention", q, k, v, attn_mask, key_padding_mask, is_causal, scale,
                                      dropout_p, dropout_seed, kSupported);
  if (reduced_precision(q)) {
    auto [out, lse] = attention_forward_cpu(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), as_float(attn_mask),
                                            key_padding_mask, is_causal, scale, dropout_p, dropout_seed);
    return {out.to(q.scalar_type()), lse};
  }
  at::Tensor out = at::empty({p.batch, p.heads, p.queries, p.value_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.heads, p.queries}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_forward_cpu", [&] {
    forward_kernel<scalar_t>(Call<scalar_t>(p, q, k, v), out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& key_padding_mask, bool is_causal, std::optional<double> scale,
    double dropout_p, const std::optional<at::Tensor>& dropout_seed, bool mask_grad) {
  const Problem p = check_and_resolve("attention_backward", q, k, v, attn_mask, key_padding_mask, is_causal, scale,
                                      dropout_p, dropout_seed, kSupported);
  check_backward_inputs(p, q, grad_out, out, lse, mask_grad);
  if (reduced_precision(q)) {
    const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
    auto [dq, dk, dv, dmask] =
        attention_backward_cpu(f(grad_out), f(q), f(k), f(v), f(out), lse, as_float(attn_mask), key_padding_mask,
                               is_causal, scale, dropout_p, dropout_seed, mask_grad);
    const auto dtype = q.scalar_type();
    if (dmask) dmask = dmask->to(dtype);
    return {dq.to(dtype), dk.to(dtype), dv.to(dtype), dmask};
  }
  at::Tensor grad_q = at::zeros({p.batch, p.heads, p.queries, p.head_dim}, q.options());
  at::Tensor grad_k = at::zeros({p.batch, p.heads, p.keys, p.head_dim}, q.options());
  at::Tensor grad_v = at::zeros({p.batch, p.heads, p.keys, p.value_dim}, q.options());
  at::Tensor grad_mask = mask_grad ? at::zeros({p.batch, p.heads, p.queries, p.keys}, q.options()) : at::Tensor();
  const at::Tensor dout = grad_out.contiguous(), o = out.contiguous(), l = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(Call<scalar_t>(p, q, k, v), dout, o, l, grad_q, grad_k, grad_v, grad_mask);
  });
  std::optional<at::Tensor> mask_gradient;
  if (mask_grad) mask_gradient = at::sum_to(grad_mask, attn_mask->sizes());
  return {grad_q, grad_k, grad_v, mask_gradient};
}

}  // namespace
}  // namespace dll_ext::attention

TORCH_LIBRARY_IMPL(dll_ext, CPU, m) {
  m.impl("_attention_forward", &dll_ext::attention::attention_forward_cpu);
  m.impl("attention_backward", &dll_ext::attention::attention_backward_cpu);
}
