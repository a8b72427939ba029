// The dtypes each op's kernels take, per device: one table an op, read by its argument
// checks and, through dll_ext::_supported_dtypes, by `dll-ext info` and the tests.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace dll_ext {

struct DtypeTable {
  std::initializer_list<at::ScalarType> cpu, cuda;

  const std::initializer_list<at::ScalarType>& on(c10::DeviceType device) const {
    return device == c10::DeviceType::CUDA ? cuda : cpu;
  }
};

// A floating dtype as Python spells it (torch.float32 and so on).
const char* torch_name(at::ScalarType t);

// Refuses `t` (an op's main input, named `name`) unless its dtype is in the table for its
// device; the message lists what that device takes and what only the other one does.
void check_dtype_supported(const char* op, const at::Tensor& t, const DtypeTable& table, const char* name = "input");

// Makes `table` the one of each named public op, for dll_ext::_supported_dtypes; an op's
// source holds one of these at namespace scope.
struct RegisterDtypes {
  RegisterDtypes(std::initializer_list<const char*> ops, const DtypeTable& table);
};

}  // namespace dll_ext
