// Registration of an op's kernels for one backend. Every op has the same shape: its
// backend-independent compositions take the backend's kernels (a struct of function
// pointers) as their first argument, and a backend registers each composition bound to its
// own kernels under its dispatch key, with a guard that holds what it needs while the op
// runs (CUDA: the device of the arguments).
#pragma once

#include <torch/library.h>

namespace dll_ext {

// The guard of a backend that needs none (the CPU).
struct NoGuard {
  template <typename... Args>
  explicit NoGuard(const Args&...) {}
};

// `composition` (Ret(const Backend&, Args...)) bound to `backend`, as the plain function
// the dispatcher calls: BoundKernel<Guard, kCpu, forward>::call.
template <typename Guard, const auto& backend, auto composition>
struct BoundKernel;

template <typename Guard, const auto& backend, typename Backend, typename Ret, typename... Args,
          Ret (*composition)(const Backend&, Args...)>
struct BoundKernel<Guard, backend, composition> {
  static Ret call(Args... args) {
    const Guard guard(args...);
    return composition(backend, args...);
  }
};

template <typename Guard, const auto& backend, auto composition>
void impl(torch::Library& m, const char* op) {
  m.impl(op, &BoundKernel<Guard, backend, composition>::call);
}

}  // namespace dll_ext
