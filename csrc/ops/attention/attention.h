// Masked scaled-dot-product attention, flash-style: out = softmax(scale * q k^T + mask) v,
// computed tile by tile over the keys with an online softmax, never holding the full L x S
// scores; the backward recomputes each tile's probabilities from the saved row log-sum-exp.
// Layouts: q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev), out (B, H, L, Ev),
// lse (B, H, L) in the accumulation type.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace dll_ext::attention {

// One call's sizes and masks, checked. `attn` is the attn_mask expanded to (B, H, L, S) (a
// view: zero strides where it broadcasts), bool (True = may attend) or additive float;
// `key_padding` is (B, S) bool (True = padded), contiguous. Either may be undefined.
struct Problem {
  int64_t batch, heads, queries, keys, head_dim, value_dim;
  double scale;
  bool causal;
  at::Tensor attn, key_padding;
};

Problem check_and_resolve(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& attn_mask,
                          const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
                          std::optional<double> scale);

}  // namespace dll_ext::attention
