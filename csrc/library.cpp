// The dll_ext operator library. Each op defines its schemas in its own
// TORCH_LIBRARY_FRAGMENT (csrc/ops/<op>/<op>.cpp); this block only names the Python module
// whose import registers the fake (meta) kernels, so torch can import it on demand.
#include <torch/library.h>

TORCH_LIBRARY(dll_ext, m) { m.set_python_module("dll_ext.ops"); }
