// Schemas, argument checks and the backend-independent driver of lstm_layer and
// lstm_layer_packed: a whole sequence of one LSTM layer and direction in one op.
//
// Work is laid out as PyTorch's PackedSequence: sequences ordered by decreasing length, so
// the sequences still running at step t are a prefix [0, batch_sizes[t]) of the batch and
// their rows of every per-position buffer are rows [offsets[t], offsets[t] + batch_sizes[t]).
// Finished sequences then cost nothing: each step's GEMM and pointwise pass cover the prefix
// only. Padded input is packed by one gather (which also sorts it) and unpacked by one
// scatter; input without lengths is already in this layout.
//
// Forward: one GEMM projects the inputs of all steps; each step is the backend's (recurrent
// GEMM and pointwise math). Backward through time runs the backend's backward step; the
// gradients of the input and of both weights are then one large GEMM each over all
// positions.
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/checks.h"
#include "ops/lstm/lstm.h"

namespace dll_ext::lstm {
namespace {

// Which packed rows each step touches, and how the input's batch maps onto them.
struct Schedule {
  std::vector<int64_t> batch_sizes;  // sequences still running at each step
  std::vector<int64_t> offsets;      // first packed row of each step
  std::vector<int64_t> lengths;      // of the sorted sequences
  int64_t rows = 0;                  // packed rows (valid positions)
  // Padded input only, undefined where the layout is already packed: the input row
  // (t * B + b) of each packed row, and the input batch position of each sorted sequence.
  at::Tensor pack_index, order;

  int64_t steps() const { return static_cast<int64_t>(batch_sizes.size()); }
  int64_t batch() const { return batch_sizes.empty() ? 0 : batch_sizes[0]; }

  void set_offsets() {
    offsets.resize(batch_sizes.size());
    std::exclusive_scan(batch_sizes.begin(), batch_sizes.end(), offsets.begin(), int64_t{0});
    rows = std::accumulate(batch_sizes.begin(), batch_sizes.end(), int64_t{0});
  }
};

// A CPU int64 vector argument (lengths, batch_sizes) as host values.
std::vector<int64_t> host_values(const char* op, const at::Tensor& t, const char* name, int64_t size,
                                 const char* size_name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name,
              " must be a CPU tensor (the schedule of steps is planned on the host, as for "
              "pack_padded_sequence), but got one on ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be an int64 tensor, but got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && (size < 0 || t.size(0) == size), op, ": ", name,
              " must be a 1-D tensor", size < 0 ? "" : " of size ", size_name,
              size < 0 ? "" : " = ", size < 0 ? "" : std::to_string(size), ", but got shape ",
              t.sizes());
  const at::Tensor c = t.contiguous();
  return {c.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>() + c.numel()};
}

Schedule padded_schedule(const at::Tensor& input, const std::optional<at::Tensor>& lengths) {
  const int64_t steps = input.size(0), batch = input.size(1);
  Schedule s;
  if (!lengths) {
    s.batch_sizes.assign(steps, batch);
    s.lengths.assign(batch, steps);
    s.set_offsets();
    return s;
  }
  const std::vector<int64_t> len = host_values("lstm_layer", *lengths, "lengths", batch, "batch");
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(len[b] >= 1 && len[b] <= steps, "lstm_layer: lengths must be in [1, ", steps,
                "] (the padded sequence length), but lengths[", b, "] = ", len[b]);
  }
  std::vector<int64_t> order(batch);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return len[a] > len[b]; });
  s.batch_sizes.assign(steps, 0);
  for (int64_t r = 0; r < batch; ++r) {
    s.lengths.push_back(len[order[r]]);
    for (int64_t t = 0; t < s.lengths[r]; ++t) ++s.batch_sizes[t];
  }
  s.set_offsets();
  if (s.rows == steps * batch && std::is_sorted(order.begin(), order.end())) return s;  // all full
  std::vector<int64_t> index(s.rows);
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t r = 0; r < s.batch_sizes[t]; ++r) index[s.offsets[t] + r] = t * batch + order[r];
  }
  s.pack_index = at::tensor(index, at::kLong).to(input.device());
  s.order = at::tensor(order, at::kLong).to(input.device());
  return s;
}

Schedule packed_schedule(const at::Tensor& input, const at::Tensor& batch_sizes) {
  Schedule s;
  s.batch_sizes = host_values("lstm_layer_packed", batch_sizes, "batch_sizes", -1, "");
  for (size_t t = 0; t < s.batch_sizes.size(); ++t) {
    const int64_t bound = t == 0 ? s.batch_sizes[0] : s.batch_sizes[t - 1];
    TORCH_CHECK(s.batch_sizes[t] >= 1 && s.batch_sizes[t] <= bound,
                "lstm_layer_packed: batch_sizes must be positive and non-increasing (a "
                "PackedSequence's), but got ",
                batch_sizes);
  }
  s.set_offsets();
  TORCH_CHECK(s.rows == input.size(0), "lstm_layer_packed: batch_sizes sum to ", s.rows,
              " but input has ", input.size(0), " rows");
  s.lengths.assign(s.batch(), 0);
  for (int64_t t = 0; t < s.steps(); ++t) {
    for (int64_t r = 0; r < s.batch_sizes[t]; ++r) ++s.lengths[r];
  }
  return s;
}

// The checks of both layouts, then their schedule.
Schedule check_and_plan(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& lengths,
                        const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                        const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  const std::string name = std::string(op) + ": input";
  if (batch_sizes) {
    check_dim(input, 2, name.c_str(), "(packed rows, input_size)");
  } else {
    check_dim(input, 3, name.c_str(), "(seq_len, batch, input_size)");
  }
  check_parameters(op, input, w_ih, w_hh, b_ih, b_hh);
  Schedule s = batch_sizes ? packed_schedule(input, *batch_sizes) : padded_schedule(input, lengths);
  const int64_t batch = batch_sizes ? s.batch() : input.size(1), hidden = w_hh.size(1);
  check_state(op, hx, input, batch, hidden, "hx");
  check_state(op, cx, input, batch, hidden, "cx");
  return s;
}

// Positions of a padded (T, B, ·) or packed (N, ·) tensor: T * B or N.
int64_t positions(const at::Tensor& t) {
  return c10::multiply_integers(t.sizes().begin(), t.sizes().end() - 1);
}

// Input rows (T * B or N, features) in packed order: a view when the layout is packed already.
at::Tensor pack(const at::Tensor& t, const Schedule& s) {
  const at::Tensor rows = t.reshape({-1, t.size(-1)});
  return s.pack_index.defined() ? rows.index_select(0, s.pack_index) : rows.contiguous();
}

// Packed rows back to the layout of `input`, with packed.size(1) features (padded positions
// zero).
at::Tensor unpack(const at::Tensor& packed, const at::Tensor& input, const Schedule& s) {
  std::vector<int64_t> sizes = input.sizes().vec();
  sizes.back() = packed.size(1);
  if (!s.pack_index.defined()) return packed.view(sizes);
  at::Tensor rows = at::zeros({positions(input), packed.size(1)}, packed.options());
  return rows.index_copy_(0, s.pack_index, packed).view(sizes);
}

// A (B, H) state in the order of the sorted sequences, and back.
at::Tensor sort_batch(const at::Tensor& t, const Schedule& s) {
  return s.order.defined() ? t.index_select(0, s.order) : t.contiguous();
}

at::Tensor unsort_batch(const at::Tensor& t, const Schedule& s) {
  return s.order.defined() ? at::empty_like(t).index_copy_(0, s.order, t) : t;
}

at::Tensor step_rows(const at::Tensor& packed, const Schedule& s, int64_t t) {
  return packed.narrow(0, s.offsets[t], s.batch_sizes[t]);
}

// The state entering step t, rows [0, batch_sizes[t]): the previous step's rows of `packed`,
// or `initial` for sequences whose first step this is. Only in reverse do sequences join
// part-way (the shorter ones start later), and only then is a copy made.
at::Tensor state_before(const at::Tensor& packed, const at::Tensor& initial, const Schedule& s,
                        int64_t t, bool reverse) {
  const int64_t rows = s.batch_sizes[t], prev = reverse ? t + 1 : t - 1;
  if (prev < 0 || prev >= s.steps()) return initial.narrow(0, 0, rows);
  const int64_t carried = std::min(rows, s.batch_sizes[prev]);
  const at::Tensor previous = packed.narrow(0, s.offsets[prev], carried);
  if (carried == rows) return previous;
  return at::cat({previous, initial.narrow(0, carried, rows - carried)});
}

// Steps in the order the forward visits them.
int64_t step_at(const Schedule& s, int64_t k, bool reverse) { return reverse ? s.steps() - 1 - k : k; }

// Workspace buffers have a row per input row, so that their shapes follow from the input's
// alone; rows past the packed ones are zero.
at::Tensor workspace(const Schedule& s, int64_t capacity, int64_t width, const at::TensorOptions& options) {
  at::Tensor w = at::empty({capacity, width}, options);
  w.narrow(0, s.rows, capacity - s.rows).zero_();
  return w;
}

}  // namespace

LayerOutputs layer_forward(const Backend& backend, const at::Tensor& input,
                           const std::optional<at::Tensor>& lengths,
                           const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                           const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const std::optional<at::Tensor>& b_ih,
                           const std::optional<at::Tensor>& b_hh, bool reverse) {
  const char* op = batch_sizes ? "lstm_layer_packed" : "lstm_layer";
  const Schedule s = check_and_plan(op, input, lengths, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const int64_t hidden = w_hh.size(1), capacity = positions(input);
  const at::Tensor x = pack(input, s);
  const at::Tensor h0 = sort_batch(hx, s), c0 = sort_batch(cx, s);
  // The gates buffer first holds the input projection of every step; each step reads its
  // rows into the step's pre-activations and overwrites them with the activated gates.
  at::Tensor gates = workspace(s, capacity, 4 * hidden, input.options());
  at::Tensor projection = gates.narrow(0, 0, s.rows);
  at::mm_out(projection, x, w_ih.t());
  const at::Tensor bias = bias_row(gates, b_ih, b_hh, hidden);
  const RecurrentWeight w = backend.prepare(w_hh, s.batch(), s.steps(), false);
  at::Tensor out = at::empty({s.rows, hidden}, input.options());
  at::Tensor cells = workspace(s, capacity, hidden, input.options());
  for (int64_t k = 0; k < s.steps(); ++k) {
    const int64_t t = step_at(s, k, reverse);
    if (s.batch_sizes[t] == 0) continue;  // every sequence has ended (or the batch is empty)
    at::Tensor h_t = step_rows(out, s, t), c_t = step_rows(cells, s, t), gates_t = step_rows(gates, s, t);
    backend.step_forward(state_before(out, h0, s, t, reverse), state_before(cells, c0, s, t, reverse), w, bias,
                         gates_t, h_t, c_t);
  }
  // Each sequence's final state: at its last step going forward, at step 0 in reverse.
  std::vector<int64_t> last(s.batch());
  for (int64_t r = 0; r < s.batch(); ++r) last[r] = (reverse ? 0 : s.offsets[s.lengths[r] - 1]) + r;
  const at::Tensor last_rows = at::tensor(last, at::kLong).to(input.device());
  at::Tensor hy = s.batch() ? out.index_select(0, last_rows) : hx.clone();
  at::Tensor cy = s.batch() ? cells.narrow(0, 0, s.rows).index_select(0, last_rows) : cx.clone();
  return {unpack(out, input, s), unsort_batch(hy, s), unsort_batch(cy, s), gates, cells};
}

LayerGrads layer_backward(const Backend& backend, const std::optional<at::Tensor>& grad_output,
                          const std::optional<at::Tensor>& grad_hy,
                          const std::optional<at::Tensor>& grad_cy, const at::Tensor& input,
                          const std::optional<at::Tensor>& lengths,
                          const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                          const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                          const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cells,
                          bool has_bias, bool reverse, std::array<bool, 4> output_mask) {
  constexpr const char* op = "lstm_layer_backward";
  const Schedule s = check_and_plan(op, input, lengths, batch_sizes, hx, cx, w_ih, w_hh, std::nullopt,
                                    std::nullopt);
  const int64_t hidden = w_hh.size(1), capacity = positions(input), batch = hx.size(0);
  std::vector<int64_t> output_sizes = input.sizes().vec();
  output_sizes.back() = hidden;
  // The backward reads gates and cells as raw buffers: wrong shapes must not be read out of
  // bounds, and other layouts are made contiguous below.
  check_shape(op, output, output_sizes, "output", "(input's positions, hidden_size)");
  check_shape(op, gates, {capacity, 4 * hidden}, "gates", "(input's positions, 4 * hidden_size)");
  check_shape(op, cells, {capacity, hidden}, "cells", "(input's positions, hidden_size)");
  for (const auto& [t, name] : {std::pair{&output, "output"}, {&gates, "gates"}, {&cells, "cells"}}) {
    check_like_input(op, *t, input, name);
  }
  const at::Tensor gates_rows = gates.contiguous(), cells_rows = cells.contiguous();
  const auto defined = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  if (defined(grad_output)) {
    check_shape(op, *grad_output, output_sizes, "grad_output", "(the output's shape)");
    check_like_input(op, *grad_output, input, "grad_output");
  }
  if (defined(grad_hy)) check_state(op, *grad_hy, input, batch, hidden, "grad_hy");
  if (defined(grad_cy)) check_state(op, *grad_cy, input, batch, hidden, "grad_cy");

  // Undefined gradients are zeros, materialised once so the steps load unconditionally.
  const at::Tensor grad_out = defined(grad_output) ? pack(*grad_output, s)
                                                   : at::zeros({s.rows, hidden}, input.options());
  const auto sorted_or_zero = [&](const std::optional<at::Tensor>& t) {
    return defined(t) ? sort_batch(*t, s).clone() : at::zeros({batch, hidden}, input.options());
  };
  // Running gradients of each sequence's h and c, rows in sorted order; a sequence enters
  // with the gradient of its final state and leaves with that of its initial state.
  at::Tensor grad_h = sorted_or_zero(grad_hy), grad_c = sorted_or_zero(grad_cy);
  const at::Tensor out = pack(output, s), c0 = sort_batch(cx, s);
  at::Tensor grad_pre = at::empty({s.rows, 4 * hidden}, input.options());
  const RecurrentWeight w = backend.prepare(w_hh, batch, s.steps(), true);
  for (int64_t k = s.steps() - 1; k >= 0; --k) {
    const int64_t t = step_at(s, k, reverse), rows = s.batch_sizes[t];
    if (rows == 0) continue;
    at::Tensor grad_h_t = grad_h.narrow(0, 0, rows), grad_c_t = grad_c.narrow(0, 0, rows),
               grad_pre_t = step_rows(grad_pre, s, t);
    // The step leaves the gradients of h_prev and c_prev in grad_h_t and grad_c_t; after the
    // last step visited only hx's gradient would read the first.
    at::Tensor grad_h_prev = k > 0 || output_mask[1] ? grad_h_t : at::Tensor();
    backend.step_backward(grad_h_t, step_rows(grad_out, s, t), grad_c_t, step_rows(gates_rows, s, t),
                          state_before(cells_rows, c0, s, t, reverse), step_rows(cells_rows, s, t), w, grad_pre_t,
                          grad_h_prev);
  }

  at::Tensor grad_input, grad_w_ih, grad_w_hh;
  if (output_mask[0]) grad_input = unpack(at::mm(grad_pre, w_ih), input, s);
  if (output_mask[2] || output_mask[3]) {
    // Both weight gradients from one GEMM over all positions, grad_pre^T [x | h_prev] with the
    // inputs and the states entering every step side by side: MKL then packs the transposed
    // grad_pre once, not twice (13.3-13.8 ms against 14.7-14.9 for two GEMMs at T64 B32
    // H256 on 2 Xeon cores).
    const int64_t features = output_mask[2] ? input.size(-1) : 0;
    at::Tensor operands = at::empty({s.rows, features + (output_mask[3] ? hidden : 0)}, input.options());
    if (output_mask[2]) operands.narrow(1, 0, features).copy_(pack(input, s));
    if (output_mask[3]) {
      const at::Tensor h0 = sort_batch(hx, s), h_prev = operands.narrow(1, features, hidden);
      for (int64_t t = 0; t < s.steps(); ++t) step_rows(h_prev, s, t).copy_(state_before(out, h0, s, t, reverse));
    }
    const at::Tensor grad_w = at::mm(grad_pre.t(), operands);
    if (output_mask[2]) grad_w_ih = grad_w.narrow(1, 0, features).contiguous();
    if (output_mask[3]) grad_w_hh = grad_w.narrow(1, features, hidden).contiguous();
  }
  return {grad_input,
          output_mask[1] ? unsort_batch(grad_h, s) : at::Tensor(),
          unsort_batch(grad_c, s),
          grad_w_ih,
          grad_w_hh,
          has_bias ? grad_pre.sum(0) : at::Tensor()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer(const Backend& backend, const at::Tensor& input,
                                                     const at::Tensor& hx, const at::Tensor& cx,
                                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                     const std::optional<at::Tensor>& b_ih,
                                                     const std::optional<at::Tensor>& b_hh,
                                                     const std::optional<at::Tensor>& lengths, bool reverse) {
  auto [output, hy, cy, gates, cells] =
      layer_forward(backend, input, lengths, std::nullopt, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
  return {output, hy, cy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_packed(
    const Backend& backend, const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool reverse) {
  auto [output, hy, cy, gates, cells] =
      layer_forward(backend, input, std::nullopt, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
  return {output, hy, cy};
}

}  // namespace dll_ext::lstm

TORCH_LIBRARY_FRAGMENT(dll_ext, m) {
  m.def(
      "lstm_layer(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? lengths=None, bool reverse=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "lstm_layer_packed(Tensor input, Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_lstm_layer_forward(Tensor input, Tensor? lengths, Tensor? batch_sizes, Tensor hx, "
      "Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_layer_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, "
      "Tensor? lengths, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor output, Tensor gates, Tensor cells, bool has_bias, bool reverse, "
      "bool[4] output_mask=[True, True, True, True]) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
