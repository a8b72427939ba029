// Helpers of the ops' C++ autograd functions.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace dll_ext {

// An op of this library by name, typed for calls through the dispatcher.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A saved or incoming tensor that may be undefined, as an op's optional argument.
inline std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

inline bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->requires_grad(); }
inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

// The fused backward ops are not themselves differentiable: refuse to build a graph through
// them rather than return second derivatives that miss terms.
template <typename... Tensors>
void refuse_double_backward(const char* op, const Tensors&... tensors) {
  const bool differentiable = (... || requires_grad(tensors));
  TORCH_CHECK(!(at::GradMode::is_enabled() && differentiable), op, ": double backward (create_graph=True through ",
              op, ") is not supported");
}

}  // namespace dll_ext
