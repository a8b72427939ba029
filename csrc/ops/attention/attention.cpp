// Schemas and argument checks of the attention ops.
#include <torch/library.h>

#include <cmath>
#include <string>

#include "common/checks.h"
#include "ops/attention/attention.h"

namespace dll_ext::attention {

Problem check_and_resolve(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& attn_mask,
                          const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
                          std::optional<double> scale) {
  const std::string prefix = std::string(op) + ": ";
  check_dim(q, 4, (prefix + "query").c_str(), "(batch, heads, L, E)");
  check_dim(k, 4, (prefix + "key").c_str(), "(batch, heads, S, E)");
  check_dim(v, 4, (prefix + "value").c_str(), "(batch, heads, S, Ev)");
  for (const auto& [t, name] : {std::pair{&k, "key"}, {&v, "value"}}) {
    check_same_device(*t, q, (prefix + name).c_str(), "query");
    check_same_dtype(*t, q, (prefix + name).c_str(), "query");
    TORCH_CHECK_VALUE(t->size(0) == q.size(0) && t->size(1) == q.size(1), op, ": ", name,
                      " has (batch, heads) = (", t->size(0), ", ", t->size(1), ") but query has (",
                      q.size(0), ", ", q.size(1), ")");
  }
  TORCH_CHECK_VALUE(k.size(3) == q.size(3), op, ": key has head dim ", k.size(3), " but query has ", q.size(3),
                    "; they must match");
  TORCH_CHECK_VALUE(v.size(2) == k.size(2), op, ": value has ", v.size(2), " positions but key has ", k.size(2),
                    "; they must match");
  const auto dtype = q.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, op, ": query dtype ", dtype,
                   " is not supported on ", q.device().type(), "; supported: float32, float64");

  Problem p{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3), 0.0, is_causal, {}, {}};
  p.scale = scale.value_or(1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(p.head_dim, 1))));
  TORCH_CHECK_VALUE(std::isfinite(p.scale), op, ": scale must be finite, but got ", p.scale);
  if (attn_mask) {
    const at::Tensor& m = *attn_mask;
    check_same_device(m, q, (prefix + "attn_mask").c_str(), "query");
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool || m.scalar_type() == dtype, op,
                     ": attn_mask must be bool (True = may attend) or of query's dtype ", dtype,
                     " (added to the scores), but got ", m.scalar_type());
    const std::vector<int64_t> full{p.batch, p.heads, p.queries, p.keys};
    bool broadcasts = m.dim() <= 4;
    for (int64_t d = 1; broadcasts && d <= m.dim(); ++d) {
      const int64_t size = m.size(-d);
      broadcasts = size == 1 || size == full[4 - d];
    }
    TORCH_CHECK_VALUE(broadcasts, op, ": attn_mask of shape ", m.sizes(),
                      " does not broadcast to (batch, heads, L, S) = ", at::IntArrayRef(full));
    p.attn = m.expand(full);
  }
  if (key_padding_mask) {
    const at::Tensor& m = *key_padding_mask;
    check_same_device(m, q, (prefix + "key_padding_mask").c_str(), "query");
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, op,
                     ": key_padding_mask must be bool (True = padded key), but got ", m.scalar_type());
    TORCH_CHECK_VALUE(m.dim() == 2 && m.size(0) == p.batch && m.size(1) == p.keys, op,
                      ": key_padding_mask must have shape (batch, S) = [", p.batch, ", ", p.keys, "], but got ",
                      m.sizes());
    p.key_padding = m.contiguous();
  }
  return p;
}

}  // namespace dll_ext::attention

TORCH_LIBRARY_FRAGMENT(dll_ext, m) {
  m.def(
      "attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
      "Tensor? key_padding_mask=None, bool is_causal=False, float? scale=None) -> Tensor");
  m.def(
      "_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
      "Tensor? key_padding_mask, bool is_causal, float? scale) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, "
      "Tensor lse, Tensor? attn_mask, Tensor? key_padding_mask, bool is_causal, float? scale, "
      "bool mask_grad) -> (Tensor, Tensor, Tensor, Tensor?)");
}
