// What the LSTM ops (lstm_cell, lstm_layer, lstm_layer_packed and their backward ops) share:
// the dtype table, the argument checks (each message starts with the op's name and names the
// argument) and the bias row.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <string>

#include "common/checks.h"
#include "common/dtypes.h"
#include "ops/lstm/lstm.h"

namespace dll_ext::lstm {
namespace {

constexpr DtypeTable kDtypes{{at::kFloat, at::kDouble, at::kBFloat16},
                             {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}};
const RegisterDtypes kRegistered({"lstm_cell", "lstm_layer", "lstm_layer_packed"}, kDtypes);

}  // namespace

void check_shape(const char* op, const at::Tensor& t, at::IntArrayRef expected, const char* name,
                 const char* layout) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, " ", layout,
              ", but got ", t.sizes());
}

void check_like_input(const char* op, const at::Tensor& t, const at::Tensor& input, const char* name) {
  const std::string label = std::string(op) + ": " + name;
  check_same_device(t, input, label.c_str(), "input");
  check_same_dtype(t, input, label.c_str(), "input");
}

void check_parameters(const char* op, const at::Tensor& input, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                      const std::optional<at::Tensor>& b_hh) {
  const std::string prefix = std::string(op) + ": ";
  check_dim(w_hh, 2, (prefix + "weight_hh").c_str(), "(4 * hidden_size, hidden_size)");
  check_dim(w_ih, 2, (prefix + "weight_ih").c_str(), "(4 * hidden_size, input_size)");
  const int64_t hidden = w_hh.size(1);
  check_shape(op, w_hh, {4 * hidden, hidden}, "weight_hh", "(4 * hidden_size, hidden_size)");
  TORCH_CHECK(w_ih.size(0) == 4 * hidden, op, ": weight_ih must have 4 * hidden_size = ",
              4 * hidden, " rows (hidden_size from weight_hh), but got shape ", w_ih.sizes());
  TORCH_CHECK(input.size(-1) == w_ih.size(1), op, ": input has feature size ", input.size(-1),
              " but weight_ih expects input_size = ", w_ih.size(1));
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op,
              ": bias_ih and bias_hh must be given together or both be None");
  check_like_input(op, w_ih, input, "weight_ih");
  check_like_input(op, w_hh, input, "weight_hh");
  if (b_ih) {
    check_like_input(op, *b_ih, input, "bias_ih");
    check_like_input(op, *b_hh, input, "bias_hh");
    check_shape(op, *b_ih, {4 * hidden}, "bias_ih", "(4 * hidden_size,)");
    check_shape(op, *b_hh, {4 * hidden}, "bias_hh", "(4 * hidden_size,)");
  }
  check_dtype_supported(op, input, kDtypes);
}

void check_state(const char* op, const at::Tensor& t, const at::Tensor& input, int64_t batch,
                 int64_t hidden, const char* name) {
  check_shape(op, t, {batch, hidden}, name, "(batch, hidden_size)");
  check_like_input(op, t, input, name);
}

at::Tensor bias_row(const at::Tensor& like, const std::optional<at::Tensor>& b_ih,
                    const std::optional<at::Tensor>& b_hh, int64_t hidden) {
  const auto acc = like.options().dtype(at::toOpMathType(like.scalar_type()));
  return b_ih ? (b_ih->to(acc) + b_hh->to(acc)) : at::zeros({4 * hidden}, acc);
}

}  // namespace dll_ext::lstm

TORCH_LIBRARY_FRAGMENT(dll_ext, m) {
  // The CPU steps' blocks of hidden units for `rows` rows of `hidden` units on this machine's
  // thread count: what `dll-ext info` shows and the tests cover.
  m.def("_lstm_cpu_unit_blocks(int rows, int hidden) -> int[]", [](int64_t rows, int64_t hidden) {
    TORCH_CHECK(rows >= 0 && hidden >= 0, "_lstm_cpu_unit_blocks: rows and hidden must be >= 0");
    return dll_ext::lstm::cpu_unit_blocks(rows, hidden);
  });
}
