// Schemas, argument checks and the backend-independent composition of the attention ops.
#include "ops/attention/attention.h"

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/dtypes.h"

namespace dll_ext::attention {
namespace {

constexpr DtypeTable kDtypes{{at::kFloat, at::kDouble, at::kBFloat16, at::kHalf},
                             {at::kFloat, at::kHalf, at::kBFloat16}};
const RegisterDtypes kRegistered({"attention"}, kDtypes);

bool reduced_precision(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// The dtype of the row log-sum-exp and of the mask gradient's buffer: the accumulation type.
at::ScalarType accumulation_dtype(at::ScalarType query_dtype) {
  return reduced_precision(query_dtype) ? at::kFloat : query_dtype;
}

// A (B, H, rows, features) tensor whose rows the kernels (and BLAS) can address by a row
// stride: unit stride along the features and a row stride of at least a row, as the head
// views of a projection (MultiheadAttention's permuted q, k, v) have. Other layouts are
// copied once.
at::Tensor rows_addressable(const at::Tensor& t) {
  const bool ok = t.stride(3) == 1 && t.stride(2) >= std::max<int64_t>(1, t.size(3));
  return ok ? t : t.contiguous();
}

Problem check_and_resolve(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const OptTensor& attn_mask, const OptTensor& key_padding_mask, bool is_causal,
                          std::optional<double> scale, double dropout_p, const OptTensor& dropout_seed) {
  const std::string prefix = std::string(op) + ": ";
  check_dim(q, 4, (prefix + "query").c_str(), "(batch, heads, L, E)");
  check_dim(k, 4, (prefix + "key").c_str(), "(batch, heads, S, E)");
  check_dim(v, 4, (prefix + "value").c_str(), "(batch, heads, S, Ev)");
  for (const auto& [t, name] : {std::pair{&k, "key"}, {&v, "value"}}) {
    check_same_device(*t, q, (prefix + name).c_str(), "query");
    check_same_dtype(*t, q, (prefix + name).c_str(), "query");
  }
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), op, ": key and value must have query's batch ",
              q.size(0), ", but have ", k.size(0), " and ", v.size(0));
  TORCH_CHECK(v.size(1) == k.size(1), op, ": value has ", v.size(1), " heads but key has ", k.size(1),
              "; they must match");
  const int64_t heads = q.size(1), kv_heads = k.size(1);
  TORCH_CHECK(kv_heads == heads || (kv_heads > 0 && heads % kv_heads == 0), op, ": query has ", heads,
              " heads, key and value ", kv_heads, ": the key/value heads must divide the query heads "
              "(grouped-query attention)");
  TORCH_CHECK(k.size(3) == q.size(3), op, ": key has head dim ", k.size(3), " but query has ", q.size(3),
              "; they must match");
  TORCH_CHECK(v.size(2) == k.size(2), op, ": value has ", v.size(2), " positions but key has ", k.size(2),
              "; they must match");
  check_dtype_supported(op, q, kDtypes, "query");
  const auto dtype = q.scalar_type();
  Problem p{q.size(0), heads, q.size(2), k.size(2), q.size(3), v.size(3), kv_heads, 0.0, is_causal, {}, {}};
  p.scale = scale.value_or(1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(p.head_dim, 1))));
  TORCH_CHECK(std::isfinite(p.scale), op, ": scale must be finite, but got ", p.scale);
  if (attn_mask) {
    const at::Tensor& m = *attn_mask;
    check_same_device(m, q, (prefix + "attn_mask").c_str(), "query");
    TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == dtype, op,
                ": attn_mask must be bool (True = may attend) or of query's dtype ", dtype,
                " (added to the scores), but got ", m.scalar_type());
    const std::vector<int64_t> full{p.batch, p.heads, p.queries, p.keys};
    bool broadcasts = m.dim() <= 4;
    for (int64_t d = 1; broadcasts && d <= m.dim(); ++d) {
      const int64_t size = m.size(-d);
      broadcasts = size == 1 || size == full[4 - d];
    }
    TORCH_CHECK(broadcasts, op, ": attn_mask of shape ", m.sizes(),
                " does not broadcast to (batch, heads, L, S) = ", at::IntArrayRef(full));
    p.attn = m.expand(full);
  }
  if (key_padding_mask) {
    const at::Tensor& m = *key_padding_mask;
    check_same_device(m, q, (prefix + "key_padding_mask").c_str(), "query");
    TORCH_CHECK(m.scalar_type() == at::kBool, op,
                ": key_padding_mask must be bool (True = padded key), but got ", m.scalar_type());
    TORCH_CHECK(m.dim() == 2 && m.size(0) == p.batch && m.size(1) == p.keys, op,
                ": key_padding_mask must have shape (batch, S) = [", p.batch, ", ", p.keys, "], but got ",
                m.sizes());
    p.key_padding = m.contiguous();
  }
  if (dropout_seed) {
    // The seed is read on the host, but a CUDA seed would send CPU inputs to the CUDA kernels.
    TORCH_CHECK(dropout_seed->device().is_cpu() || dropout_seed->device() == q.device(), op,
                ": dropout_seed must be on the CPU or on query's device (", q.device(), "), but it is on ",
                dropout_seed->device());
  }
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must be in [0, 1), but got ", dropout_p);
  if (dropout_p > 0.0) {
    TORCH_CHECK(dropout_seed && dropout_seed->numel() == 1 && dropout_seed->scalar_type() == at::kLong, op,
                ": dropout_p > 0 needs dropout_seed, an int64 tensor with one element "
                "(dll_ext.functional.scaled_dot_product_attention draws one from torch's generator)");
    p.dropout.active = true;
    p.dropout.seed = static_cast<uint64_t>(dropout_seed->item<int64_t>());
    p.dropout.threshold = static_cast<uint32_t>(std::min(std::round(dropout_p * 4294967296.0), 4294967295.0));
    p.dropout.keep_scale = 1.0 / (1.0 - dropout_p);
  }
  return p;
}

void check_backward_inputs(const Problem& p, const at::Tensor& q, const at::Tensor& grad_out, const at::Tensor& out,
                           const at::Tensor& lse, bool mask_grad) {
  constexpr const char* op = "attention_backward";
  const std::vector<int64_t> out_sizes{p.batch, p.heads, p.queries, p.value_dim};
  for (const auto& [t, name] : {std::pair{&grad_out, "grad_out"}, {&out, "out"}}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef(out_sizes), op, ": ", name, " must have shape ",
                at::IntArrayRef(out_sizes), ", but got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->device() == q.device(), op, ": ", name,
                " must match query's dtype and device");
  }
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({p.batch, p.heads, p.queries}) &&
                  lse.scalar_type() == accumulation_dtype(q.scalar_type()) && lse.device() == q.device(),
              op, ": lse must have shape (batch, heads, L), dtype ", accumulation_dtype(q.scalar_type()),
              " and query's device, but got ", lse.sizes(), " ", lse.scalar_type());
  TORCH_CHECK(!mask_grad || (p.attn.defined() && p.attn.scalar_type() != at::kBool), op,
              ": mask_grad needs a floating-point attn_mask");
}

// float32 copies of float16/bfloat16 tensors, for a backend that computes them in float.
at::Tensor in_float(const at::Tensor& t) { return reduced_precision(t.scalar_type()) ? t.to(at::kFloat) : t; }

OptTensor in_float(const OptTensor& t) { return t ? OptTensor(in_float(*t)) : std::nullopt; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward(const Backend& backend, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const OptTensor& attn_mask,
                                           const OptTensor& key_padding_mask, bool is_causal,
                                           std::optional<double> scale, double dropout_p,
                                           const OptTensor& dropout_seed) {
  constexpr const char* op = "attention";
  const Problem p =
      check_and_resolve(op, q, k, v, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed);
  backend.check_limits(op, p, /*backward=*/false);
  const auto dtype = q.scalar_type();
  if (backend.computes_reduced_in_float && reduced_precision(dtype)) {
    auto [out, lse] = forward(backend, in_float(q), in_float(k), in_float(v), in_float(attn_mask), key_padding_mask,
                              is_causal, scale, dropout_p, dropout_seed);
    return {out.to(dtype), lse};
  }
  at::Tensor out = at::empty({p.batch, p.heads, p.queries, p.value_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.heads, p.queries}, q.options().dtype(accumulation_dtype(dtype)));
  if (lse.numel() > 0) backend.forward(p, rows_addressable(q), rows_addressable(k), rows_addressable(v), out, lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, OptTensor> backward(
    const Backend& backend, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const OptTensor& attn_mask,
    const OptTensor& key_padding_mask, bool is_causal, std::optional<double> scale, double dropout_p,
    const OptTensor& dropout_seed, bool mask_grad) {
  constexpr const char* op = "attention_backward";
  const Problem p =
      check_and_resolve(op, q, k, v, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed);
  check_backward_inputs(p, q, grad_out, out, lse, mask_grad);
  backend.check_limits(op, p, /*backward=*/true);
  const auto dtype = q.scalar_type();
  if (backend.computes_reduced_in_float && reduced_precision(dtype)) {
    auto [dq, dk, dv, dmask] =
        backward(backend, in_float(grad_out), in_float(q), in_float(k), in_float(v), in_float(out), lse,
                 in_float(attn_mask), key_padding_mask, is_causal, scale, dropout_p, dropout_seed, mask_grad);
    if (dmask) dmask = dmask->to(dtype);
    return {dq.to(dtype), dk.to(dtype), dv.to(dtype), dmask};
  }
  // Zeros: the kernels skip fully masked tiles, and rows and keys past them.
  at::Tensor grad_q = at::zeros({p.batch, p.heads, p.queries, p.head_dim}, q.options());
  at::Tensor grad_k = at::zeros({p.batch, p.kv_heads, p.keys, p.head_dim}, q.options());
  at::Tensor grad_v = at::zeros({p.batch, p.kv_heads, p.keys, p.value_dim}, q.options());
  at::Tensor grad_mask;
  if (mask_grad) {
    const auto [batch, heads] = backend.mask_grad_extent(p);
    grad_mask = at::zeros({batch, heads, p.queries, p.keys}, q.options().dtype(accumulation_dtype(dtype)));
  }
  if (p.batch * p.heads * p.queries > 0 && p.keys > 0) {
    backend.backward(p, grad_out.contiguous(), rows_addressable(q), rows_addressable(k), rows_addressable(v),
                     out.contiguous(), lse.contiguous(), grad_q, grad_k, grad_v, grad_mask);
  }
  OptTensor mask_gradient;
  if (mask_grad) mask_gradient = at::sum_to(grad_mask, attn_mask->sizes()).to(dtype);
  return {grad_q, grad_k, grad_v, mask_gradient};
}

}  // namespace dll_ext::attention

TORCH_LIBRARY_FRAGMENT(dll_ext, m) {
  // dropout_seed: an int64 tensor with one element; dropout_p > 0 needs it. The same seed
  // gives the same dropout mask (see attention_dropout.h).
  m.def(
      "attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
      "Tensor? key_padding_mask=None, bool is_causal=False, float? scale=None, float dropout_p=0.0, "
      "Tensor? dropout_seed=None) -> Tensor");
  m.def(
      "_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
      "Tensor? key_padding_mask, bool is_causal, float? scale, float dropout_p, Tensor? dropout_seed) "
      "-> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, "
      "Tensor lse, Tensor? attn_mask, Tensor? key_padding_mask, bool is_causal, float? scale, "
      "float dropout_p, Tensor? dropout_seed, bool mask_grad) -> (Tensor, Tensor, Tensor, Tensor?)");
  // [query rows, keys] of the CPU kernels' tile for `keys` keys of element_size bytes on this
  // CPU: what `dll-ext info` shows and the tests cover.
  m.def("_attention_cpu_tiles(int keys, int element_size) -> int[]", [](int64_t keys, int64_t element_size) {
    TORCH_CHECK(keys >= 0 && element_size > 0, "_attention_cpu_tiles: keys must be >= 0 and element_size > 0");
    const auto tiles = dll_ext::attention::cpu_tiles(keys, element_size);
    return std::vector<int64_t>{tiles.queries, tiles.keys};
  });
}
