// Masked scaled-dot-product attention, flash-style: out = softmax(scale * q k^T + mask) v,
// computed tile by tile over the keys with an online softmax, never holding the full L x S
// scores; the backward recomputes each tile's probabilities from the saved row log-sum-exp.
// Layouts: q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev), out (B, H, L, Ev),
// lse (B, H, L) in the accumulation type (float32 for float16/bfloat16 inputs).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

#include "ops/attention/attention_dropout.h"

namespace dll_ext::attention {

// One call's sizes and masks, checked. `attn` is the attn_mask expanded to (B, H, L, S) (a
// view: zero strides where it broadcasts), bool (True = may attend) or additive float;
// `key_padding` is (B, S) bool (True = padded), contiguous. Either may be undefined.
struct Problem {
  int64_t batch, heads, queries, keys, head_dim, value_dim;
  double scale;
  bool causal;
  at::Tensor attn, key_padding;
  Dropout dropout;
};

// `supported`: the dtypes the calling device's kernels take, e.g. "float32, float64".
Problem check_and_resolve(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& attn_mask,
                          const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
                          std::optional<double> scale, double dropout_p,
                          const std::optional<at::Tensor>& dropout_seed,
                          std::initializer_list<at::ScalarType> supported);

// A (B, H, rows, features) tensor whose rows the kernels (and BLAS) can address by a row
// stride: unit stride along the features and a row stride of at least a row, as the head
// views of a projection (MultiheadAttention's permuted q, k, v) have. Other layouts are
// copied once.
inline at::Tensor rows_addressable(const at::Tensor& t) {
  const bool ok = t.stride(3) == 1 && t.stride(2) >= std::max<int64_t>(1, t.size(3));
  return ok ? t : t.contiguous();
}

// The dtype of the row log-sum-exp: the accumulation type of the query's dtype.
at::ScalarType lse_dtype(at::ScalarType query_dtype);

// The checks of attention_backward's extra inputs (grad_out, out, lse, mask_grad).
void check_backward_inputs(const Problem& p, const at::Tensor& q, const at::Tensor& grad_out, const at::Tensor& out,
                           const at::Tensor& lse, bool mask_grad);

}  // namespace dll_ext::attention
