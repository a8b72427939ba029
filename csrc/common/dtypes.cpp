// The registry of the ops' dtype tables and the op that lists them.
#include "common/dtypes.h"

#include <torch/library.h>

#include <algorithm>
#include <map>

namespace dll_ext {
namespace {

std::map<std::string, const DtypeTable*>& registry() {
  static std::map<std::string, const DtypeTable*> tables;
  return tables;
}

bool contains(const std::initializer_list<at::ScalarType>& list, at::ScalarType t) {
  return std::find(list.begin(), list.end(), t) != list.end();
}

std::string names(const std::initializer_list<at::ScalarType>& list) {
  std::string joined;
  for (const auto t : list) joined += std::string(joined.empty() ? "" : ", ") + torch_name(t);
  return joined;
}

std::vector<std::string> supported_dtypes(const std::string& op, const std::string& device) {
  const auto found = registry().find(op);
  TORCH_CHECK_VALUE(found != registry().end(), "_supported_dtypes: unknown op '", op, "'");
  TORCH_CHECK_VALUE(device == "cpu" || device == "cuda", "_supported_dtypes: device must be 'cpu' or 'cuda', but got '",
                    device, "'");
  std::vector<std::string> result;
  for (const auto t : found->second->on(device == "cuda" ? c10::DeviceType::CUDA : c10::DeviceType::CPU)) {
    result.emplace_back(torch_name(t));
  }
  return result;
}

}  // namespace

const char* torch_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(t);
  }
}

void check_dtype_supported(const char* op, const at::Tensor& t, const DtypeTable& table, const char* name) {
  const bool cuda = t.is_cuda();
  const auto& here = table.on(t.device().type());
  if (contains(here, t.scalar_type())) return;
  std::string elsewhere;
  for (const auto other : cuda ? table.cpu : table.cuda) {
    if (!contains(here, other)) elsewhere += std::string(elsewhere.empty() ? "" : ", ") + torch_name(other);
  }
  // RuntimeError, as ATen's kernels raise for a dtype they are not built for.
  TORCH_CHECK(false, op, ": ", name, " dtype ", t.scalar_type(), " is not supported on ", t.device().type(),
              "; supported: ", names(here),
              elsewhere.empty() ? "" : " (" + elsewhere + (cuda ? " on CPU only)" : " on CUDA only)"));
}

RegisterDtypes::RegisterDtypes(std::initializer_list<const char*> ops, const DtypeTable& table) {
  for (const char* op : ops) registry()[op] = &table;
}

}  // namespace dll_ext

TORCH_LIBRARY_FRAGMENT(dll_ext, m) {
  // The dtypes an op's kernels take on a device ('cpu' or 'cuda'), as torch names them.
  m.def("_supported_dtypes(str op, str device) -> str[]", &dll_ext::supported_dtypes);
}
