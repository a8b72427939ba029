// Argument-check helpers shared by every op: messages name the argument, what was
// expected and what was given.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace dll_ext {

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == dim, name, " must be a ", dim, "-D tensor ", layout, ", but got a ",
              t.dim(), "-D tensor of shape ", t.sizes());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type(), "; they must match");
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; they must be on the same device");
}

// A list argument such as stride: exactly `n` entries, each at least `min_value`.
inline void check_int_list(at::IntArrayRef values, size_t n, int64_t min_value, const char* name) {
  TORCH_CHECK(values.size() == n, name, " must have ", n, " entries, but got ", values);
  for (int64_t v : values) {
    TORCH_CHECK(v >= min_value, name, " entries must be >= ", min_value, ", but got ", values);
  }
}

// Channels-last is kept only when the tensor is laid out that way and not also plain
// contiguous (as for 1x1 images); the Python fake kernels apply the same rule.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace dll_ext
