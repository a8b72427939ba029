// Masked scaled-dot-product attention, flash-style: out = softmax(scale * q k^T + mask) v,
// computed tile by tile over the keys with an online softmax, never holding the full L x S
// scores; the backward recomputes each tile's probabilities from the saved row log-sum-exp.
// Layouts: q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev), out (B, H, L, Ev),
// lse (B, H, L) in the accumulation type (float32 for float16/bfloat16 inputs). Grouped-query
// attention: H is a multiple of Hkv, and query head h reads key/value head h / (H / Hkv); the
// kernels index k and v so, and sum a group's key/value gradients themselves.
//
// attention.cpp checks the arguments and composes the ops from a backend's two kernels
// (attention_cpu.cpp, attention_cuda.cu); their element math is attention_math.h.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/registration.h"
#include "ops/attention/attention_dropout.h"

namespace dll_ext::attention {

// One call's sizes and masks, checked. `attn` is the attn_mask expanded to (B, H, L, S) (a
// view: zero strides where it broadcasts), bool (True = may attend) or additive float;
// `key_padding` is (B, S) bool (True = padded), contiguous. Either may be undefined.
struct Problem {
  int64_t batch, heads, queries, keys, head_dim, value_dim;
  int64_t kv_heads;
  // Query heads per key/value head (1 without grouping).
  int64_t group() const { return kv_heads > 0 ? heads / kv_heads : 1; }
  double scale;
  bool causal;
  at::Tensor attn, key_padding;
  Dropout dropout;
};

struct Backend {
  // Whether float16/bfloat16 inputs run the float32 kernels on float32 copies (the CPU's).
  bool computes_reduced_in_float;
  // Refuses a problem beyond this backend's kernels (sizes, memory), naming the limit.
  void (*check_limits)(const char* op, const Problem& p, bool backward);
  // Writes out and lse. q, k and v have addressable rows (rows_addressable).
  void (*forward)(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  at::Tensor& out, at::Tensor& lse);
  // The (batch, heads) sizes of the float mask's gradient buffer the backward fills: (B, H),
  // or 1 along a dimension the mask broadcasts over and the kernel sums over itself.
  std::array<int64_t, 2> (*mask_grad_extent)(const Problem& p);
  // Writes grad_q, grad_k, grad_v and, when defined, adds to grad_mask (zeros of
  // (mask_grad_extent, L, S)) in the accumulation type; grad_out, out and lse are contiguous.
  void (*backward)(const Problem& p, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_q,
                   at::Tensor& grad_k, at::Tensor& grad_v, at::Tensor& grad_mask);
};

using OptTensor = std::optional<at::Tensor>;

// The CPU kernels' tile: `queries` query rows by at most `keys` keys, for a problem with
// `keys` keys of element_size bytes on this CPU (attention_cpu.cpp).
struct CpuTiles {
  int64_t queries, keys;
};
CpuTiles cpu_tiles(int64_t keys, int64_t element_size);

// The ops _attention_forward (out, lse) and attention_backward (grad_q, grad_k, grad_v,
// grad_mask summed to attn_mask's shape) on a backend.
std::tuple<at::Tensor, at::Tensor> forward(const Backend& backend, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const OptTensor& attn_mask,
                                           const OptTensor& key_padding_mask, bool is_causal,
                                           std::optional<double> scale, double dropout_p,
                                           const OptTensor& dropout_seed);

std::tuple<at::Tensor, at::Tensor, at::Tensor, OptTensor> backward(
    const Backend& backend, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const OptTensor& attn_mask,
    const OptTensor& key_padding_mask, bool is_causal, std::optional<double> scale, double dropout_p,
    const OptTensor& dropout_seed, bool mask_grad);

template <const Backend& backend, typename Guard>
void register_kernels(torch::Library& m) {
  impl<Guard, backend, forward>(m, "_attention_forward");
  impl<Guard, backend, backward>(m, "attention_backward");
}

}  // namespace dll_ext::attention
