// Autograd for attention in C++ (TorchScript and C++ programs get gradients too). Forward
// runs _attention_forward, which also returns the row log-sum-exp; backward runs
// attention_backward, which recomputes the probabilities tile by tile. A floating-point
// attn_mask that requires grad gets its gradient, summed over the dimensions it broadcasts.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "common/autograd.h"

namespace dll_ext::attention {
namespace {

using OptTensor = std::optional<at::Tensor>;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, OptTensor>;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const OptTensor& attn_mask, const OptTensor& key_padding_mask,
                                                bool is_causal, std::optional<double> scale, double dropout_p,
                                                const OptTensor& dropout_seed) {
  static auto op = find_op<decltype(call_forward)>("dll_ext::_attention_forward");
  return op.call(q, k, v, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed);
}

Grads call_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& out, const at::Tensor& lse, const OptTensor& attn_mask,
                    const OptTensor& key_padding_mask, bool is_causal, std::optional<double> scale,
                    double dropout_p, const OptTensor& dropout_seed, bool mask_grad) {
  static auto op = find_op<decltype(call_backward)>("dll_ext::attention_backward");
  return op.call(grad_out, q, k, v, out, lse, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed,
                 mask_grad);
}

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v,
                                                const OptTensor& attn_mask, const OptTensor& key_padding_mask,
                                                bool is_causal, std::optional<double> scale, double dropout_p,
                                                const OptTensor& dropout_seed) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = call_forward(q, k, v, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed);
    // The seed, not a mask, is what the backward needs to see the forward's dropout again.
    ctx->save_for_backward({q, k, v, out, lse, attn_mask.value_or(at::Tensor()),
                            key_padding_mask.value_or(at::Tensor()), dropout_seed.value_or(at::Tensor())});
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["scale"] = scale ? c10::IValue(*scale) : c10::IValue();
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const c10::IValue scale = ctx->saved_data["scale"];
    // Absent optional inputs have no gradient slot: attn_mask's is 3 only when it was given.
    const bool mask_grad = s[5].defined() && s[5].is_floating_point() && ctx->needs_input_grad(3);
    const at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(s[3]);
    auto [grad_q, grad_k, grad_v, grad_mask] =
        call_backward(grad_out, s[0], s[1], s[2], s[3], s[4], optional(s[5]), optional(s[6]),
                      ctx->saved_data["is_causal"].toBool(),
                      scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()),
                      ctx->saved_data["dropout_p"].toDouble(), optional(s[7]), mask_grad);
    return {grad_q,       grad_k,       grad_v,       grad_mask.value_or(at::Tensor()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Below autograd (no grad, or in a traced graph) attention is _attention_forward's output, on
// every device.
at::Tensor attention_forward_only(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const OptTensor& attn_mask, const OptTensor& key_padding_mask, bool is_causal,
                                  std::optional<double> scale, double dropout_p, const OptTensor& dropout_seed) {
  return std::get<0>(call_forward(q, k, v, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed));
}

at::Tensor attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const OptTensor& attn_mask, const OptTensor& key_padding_mask, bool is_causal,
                              std::optional<double> scale, double dropout_p, const OptTensor& dropout_seed) {
  return AttentionFunction::apply(q, k, v, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed)[0];
}

Grads attention_backward_autograd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                  const OptTensor& attn_mask, const OptTensor& key_padding_mask, bool is_causal,
                                  std::optional<double> scale, double dropout_p, const OptTensor& dropout_seed,
                                  bool mask_grad) {
  refuse_double_backward("attention", grad_out, q, k, v, out, attn_mask);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_backward(grad_out, q, k, v, out, lse, attn_mask, key_padding_mask, is_causal, scale, dropout_p,
                       dropout_seed, mask_grad);
}

}  // namespace
}  // namespace dll_ext::attention

TORCH_LIBRARY_IMPL(dll_ext, CompositeExplicitAutograd, m) {
  m.impl("attention", &dll_ext::attention::attention_forward_only);
}

TORCH_LIBRARY_IMPL(dll_ext, Autograd, m) {
  m.impl("attention", &dll_ext::attention::attention_autograd);
  m.impl("attention_backward", &dll_ext::attention::attention_backward_autograd);
  // Internal (attention's autograd runs it below autograd): differentiating it directly errors.
  m.impl("_attention_forward", torch::autograd::autogradNotImplementedFallback());
}
