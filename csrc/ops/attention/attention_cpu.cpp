// CPU kernels of the attention ops (float32 and float64; attention.cpp runs bfloat16 and
// float16 through float32). Work is cut into tiles of queries by keys whose size comes from
// this CPU's L2 cache (cpu_tiles): the wider the key tile, the larger and faster the GEMMs,
// as long as a tile's scores stay in L2. The GEMMs of a tile call BLAS directly
// (common/blas.h), without the dispatcher's per-call cost. A tile's keys are trimmed to those
// some query of the tile may see (before the causal bound, not padded, allowed by a boolean
// mask somewhere in the tile) before its GEMMs, and a tile with none left is skipped.
// Forward is parallel over (batch, head, query block); backward over (batch, key/value head),
// so that each task owns the key and value gradients it accumulates (every query head of a
// grouped-query group runs in its task), or over the slices of a broadcast float mask's
// gradient, each with every (batch, head) that sums into it.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "common/blas.h"
#include "common/cpu_caches.h"
#include "common/host_device.h"
#include "common/registration.h"
#include "ops/attention/attention.h"
#include "ops/attention/attention_math.h"

namespace dll_ext::attention {
namespace {

using blas::gemm;
constexpr bool kNoTranspose = false, kTranspose = true;

// Keys of a tile that some of its queries may see: [first, first + count); `padded` if the
// key padding hides some of them still.
struct KeyRange {
  int64_t first, count;
  bool padded;
};

// The masks of one row of scores, in place: an additive mask is added, disallowed (bool
// False), padded and causally excluded scores become -inf. Mask pointers are at the row's
// first key; `stride` steps along the keys of an expanded attn_mask (0 where it broadcasts).
template <typename T>
DLL_CPU_CLONES void mask_row(T* row, int64_t cols, const bool* allowed, const T* added, int64_t stride,
                             const bool* padded, int64_t causal_from) {
  // Unit stride (a mask that does not broadcast along the keys) gets its own loops, which
  // vectorise; a broadcast one is a constant along the row.
  if (added && stride == 1) {
    for (int64_t c = 0; c < cols; ++c) row[c] = add_mask(row[c], added[c]);
  } else if (added) {
    for (int64_t c = 0; c < cols; ++c) row[c] = add_mask(row[c], added[c * stride]);
  }
  if (allowed && stride == 1) {
    for (int64_t c = 0; c < cols; ++c) row[c] = keep_or_neg_inf(row[c], allowed[c]);
  } else if (allowed) {
    for (int64_t c = 0; c < cols; ++c) row[c] = keep_or_neg_inf(row[c], allowed[c * stride]);
  }
  if (padded) {
    for (int64_t c = 0; c < cols; ++c) row[c] = keep_or_neg_inf(row[c], !padded[c]);
  }
  for (int64_t c = causal_from; c < cols; ++c) row[c] = keep_or_neg_inf(row[c], false);
}

// Raw views of one call: the inputs' rows of head (b, h) and the masks.
template <typename T>
struct Call {
  const Problem& p;
  at::Tensor q, k, v;
  at::Tensor own_allowed, own_added;  // the (L, S) masks made for a broadcast boolean mask
  const bool* allowed = nullptr;      // boolean attn_mask, for skipping tiles
  const bool* bool_mask = nullptr;    // boolean attn_mask applied to rows, unless turned additive
  const T* add_mask = nullptr;
  std::array<int64_t, 4> mask_strides{};
  const bool* padding = nullptr;
  CpuTiles tiles;

  Call(const Problem& problem, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_)
      : p(problem), q(q_), k(k_), v(v_), tiles(cpu_tiles(problem.keys, sizeof(T))) {
    if (p.attn.defined()) {
      for (int d = 0; d < 4; ++d) mask_strides[d] = p.attn.stride(d);
      if (p.attn.scalar_type() != at::kBool) {
        add_mask = p.attn.const_data_ptr<T>();
      } else if (mask_strides[0] == 0 && mask_strides[1] == 0 && p.batch > 0 && p.heads > 0) {
        // One (L, S) boolean mask for every (batch, head): applied as an additive 0/-inf mask
        // made once (L * S values), since adding a row is cheaper than blending one by its
        // bytes, and every (batch, head) applies it again.
        own_allowed = p.attn[0][0].contiguous();
        own_added = at::zeros({p.queries, p.keys}, q_.options()).masked_fill_(own_allowed.logical_not(), kNegInf<T>);
        allowed = own_allowed.const_data_ptr<bool>();
        add_mask = own_added.const_data_ptr<T>();
        mask_strides = {0, 0, p.keys, 1};
      } else {
        allowed = bool_mask = p.attn.const_data_ptr<bool>();
      }
    }
    if (p.key_padding.defined()) padding = p.key_padding.const_data_ptr<bool>();
  }

  const T* head_rows(const at::Tensor& t, int64_t b, int64_t h, int64_t first) const {
    return t.const_data_ptr<T>() + b * t.stride(0) + h * t.stride(1) + first * t.stride(2);
  }

  // The rows of k or v that query head h reads (its group's key/value head).
  const T* kv_rows(const at::Tensor& t, int64_t b, int64_t h, int64_t first) const {
    return head_rows(t, b, h / p.group(), first);
  }

  int64_t mask_offset(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3];
  }

  // Whether query i0 + r of the tile may see key j under the boolean mask, for some r < rows.
  bool key_allowed(int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j) const {
    for (int64_t r = 0; r < rows; ++r) {
      if (allowed[mask_offset(b, h, i0 + r, j)]) return true;
    }
    return false;
  }

  // The keys among [j0, j0 + cols) that some of the tile's queries may see, trimmed from both
  // ends without computing a score: count 0 when the whole tile is masked.
  KeyRange visible_keys(int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols) const {
    int64_t lo = j0, hi = j0 + cols;
    if (p.causal) hi = std::min(hi, causal_key_limit(i0 + rows - 1));
    const bool* pad = padding ? padding + b * p.keys : nullptr;
    if (pad) {
      while (lo < hi && pad[lo]) ++lo;
      while (hi > lo && pad[hi - 1]) --hi;
    }
    if (allowed) {
      while (lo < hi && !key_allowed(b, h, i0, rows, lo)) ++lo;
      while (hi > lo && !key_allowed(b, h, i0, rows, hi - 1)) --hi;
    }
    // Padding at the end of the keys, the common case, is all trimmed: no row pass needed.
    const bool padded = pad && std::any_of(pad + lo, pad + std::max(lo, hi), [](bool x) { return x; });
    return {lo, std::max<int64_t>(hi - lo, 0), padded};
  }

  // scores (rows x cols, leading dimension tiles.keys) = scale * q k^T, without the masks.
  void scores(int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols, T* s) const {
    // Row-major S = Q K^T is column-major S^T = K Q^T.
    gemm(kTranspose, kNoTranspose, cols, rows, p.head_dim, static_cast<T>(p.scale),
         kv_rows(k, b, h, j0), k.stride(2), head_rows(q, b, h, i0), q.stride(2), T(0), s, tiles.keys);
  }

  // The masks of query i's scores of the tile's keys, in place: masked scores become -inf,
  // an additive mask is added. Applied row by row, just before the row's softmax pass, so that
  // the row is still in L1 for it (a whole tile is not).
  void mask(int64_t b, int64_t h, int64_t i, const KeyRange& keys, T* row) const {
    const int64_t j0 = keys.first, cols = keys.count;
    const int64_t at = mask_offset(b, h, i, j0);
    // Keys after the query's position are masked under is_causal (top-left aligned).
    const int64_t causal_from = p.causal ? std::clamp<int64_t>(causal_key_limit(i) - j0, 0, cols) : cols;
    mask_row(row, cols, bool_mask ? bool_mask + at : nullptr, add_mask ? add_mask + at : nullptr, mask_strides[3],
             keys.padded ? padding + b * p.keys + j0 : nullptr, causal_from);
  }
};

// The online-softmax update of one tile's row: s becomes the row's probabilities relative
// to the new running max; returns the factor by which earlier outputs shrink. The max and
// the sum are OpenMP SIMD reductions: a single running value is a serial dependency the
// compiler will not vectorise on its own (with 16 hand-made lanes GCC still emitted 16
// scalar max chains), and the exponentials and their sum share one pass over the row.
template <typename T>
DLL_CPU_CLONES T softmax_update(T* s, int64_t cols, RowSoftmax<T>& softmax) {
  T tile_max = kNegInf<T>;
#pragma omp simd reduction(max : tile_max)
  for (int64_t c = 0; c < cols; ++c) tile_max = s[c] > tile_max ? s[c] : tile_max;
  const T shrink = softmax.rescale(tile_max);
  // A local copy: through the reference, each store to s might change the max, which keeps
  // the compiler from vectorising the loop.
  const RowSoftmax<T> now = softmax;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < cols; ++c) {
    const T p = now.unnormalised(s[c]);
    s[c] = p;
    sum += p;
  }
  softmax.add(sum);
  return shrink;
}

// Backward: a row of scores becomes its probabilities.
template <typename T>
DLL_CPU_CLONES void probabilities_row(T* row, int64_t cols, T lse) {
  for (int64_t c = 0; c < cols; ++c) row[c] = probability(row[c], lse);
}

// Dropout on a row: dst = src * Z (dst may be src).
template <typename T>
DLL_CPU_CLONES void dropout_row_apply(T* dst, const T* src, int64_t cols, DropoutRow row, int64_t first_key,
                                      uint32_t threshold, T keep_scale) {
  for (int64_t c = 0; c < cols; ++c) dst[c] = src[c] * dropout_factor(row, first_key + c, threshold, keep_scale);
}

// The float mask's gradient of a row, from its dS, added to what other heads or batch
// elements that share the mask element gave.
template <typename T>
DLL_CPU_CLONES void mask_gradient_row(T* __restrict__ dmask, const T* __restrict__ ds, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) dmask[c] += mask_gradient(ds[c]);
}

// dS in place of dP, without dropout (Z = 1) or with it; with a float mask, its gradient too.
template <typename T>
DLL_CPU_CLONES void score_gradient_row(T* __restrict__ dp, const T* __restrict__ prob, int64_t cols, T delta) {
  for (int64_t c = 0; c < cols; ++c) dp[c] = score_gradient(prob[c], dp[c], T(1), delta);
}

template <typename T>
DLL_CPU_CLONES void score_gradient_row(T* __restrict__ dp, const T* __restrict__ prob, int64_t cols, T delta,
                                       DropoutRow row, int64_t first_key, uint32_t threshold, T keep_scale) {
  for (int64_t c = 0; c < cols; ++c) {
    dp[c] = score_gradient(prob[c], dp[c], dropout_factor(row, first_key + c, threshold, keep_scale), delta);
  }
}

template <typename T>
void forward_kernel(const Call<T>& call, at::Tensor& out, at::Tensor& lse) {
  const Problem& p = call.p;
  const int64_t query_block = call.tiles.queries, key_block = call.tiles.keys;
  const int64_t query_blocks = (p.queries + query_block - 1) / query_block;
  T* out_data = out.data_ptr<T>();
  T* lse_data = lse.data_ptr<T>();
  const Dropout& drop = p.dropout;
  const T keep_scale = static_cast<T>(drop.keep_scale);
  at::parallel_for(0, p.batch * p.heads * query_blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<T> s(query_block * key_block);
    std::vector<RowSoftmax<T>> softmax(query_block);
    for (int64_t task = first; task < last; ++task) {
      const int64_t bh = task / query_blocks, b = bh / p.heads, h = bh % p.heads;
      const int64_t i0 = (task % query_blocks) * query_block, rows = std::min(query_block, p.queries - i0);
      // The output rows accumulate the unnormalised sum of probabilities times values.
      T* acc = out_data + (bh * p.queries + i0) * p.value_dim;
      std::fill(acc, acc + rows * p.value_dim, T(0));
      std::fill(softmax.begin(), softmax.end(), RowSoftmax<T>{});
      for (int64_t tile = 0; tile < p.keys; tile += key_block) {
        const KeyRange keys = call.visible_keys(b, h, i0, rows, tile, std::min(key_block, p.keys - tile));
        const int64_t j0 = keys.first, cols = keys.count;
        if (cols == 0) continue;
        call.scores(b, h, i0, rows, j0, cols, s.data());
        for (int64_t r = 0; r < rows; ++r) {
          T* row = s.data() + r * key_block;
          call.mask(b, h, i0 + r, keys, row);
          const T shrink = softmax_update(row, cols, softmax[r]);
          // Dropout acts on the probabilities after their sum is taken: the softmax's
          // normaliser is that of the undropped row.
          if (drop.active) {
            dropout_row_apply(row, row, cols, dropout_row(drop.seed, bh * p.queries + i0 + r), j0, drop.threshold,
                              keep_scale);
          }
          if (shrink != T(1)) {
            for (int64_t e = 0; e < p.value_dim; ++e) acc[r * p.value_dim + e] *= shrink;
          }
        }
        // Row-major acc += P V is column-major acc^T += V^T P^T.
        gemm(kNoTranspose, kNoTranspose, p.value_dim, rows, cols, T(1),
             call.kv_rows(call.v, b, h, j0), call.v.stride(2), s.data(), key_block, T(1), acc, p.value_dim);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T inverse = softmax[r].output_scale();
        for (int64_t e = 0; e < p.value_dim; ++e) acc[r * p.value_dim + e] *= inverse;
        lse_data[bh * p.queries + i0 + r] = softmax[r].lse();
      }
    }
  });
}

template <typename T>
void backward_kernel(const Call<T>& call, const at::Tensor& grad_out, const at::Tensor& out,
                     const at::Tensor& lse, at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v,
                     at::Tensor& grad_mask) {
  const Problem& p = call.p;
  const T* dout = grad_out.const_data_ptr<T>();
  const T* o = out.const_data_ptr<T>();
  const T* lse_data = lse.const_data_ptr<T>();
  T* dq = grad_q.data_ptr<T>();
  T* dk = grad_k.data_ptr<T>();
  T* dv = grad_v.data_ptr<T>();
  T* dmask = grad_mask.defined() ? grad_mask.data_ptr<T>() : nullptr;
  const T scale = static_cast<T>(p.scale);
  const Dropout& drop = p.dropout;
  const T keep_scale = static_cast<T>(drop.keep_scale);
  const int64_t query_block = call.tiles.queries, key_block = call.tiles.keys;
  // A task owns what it writes: every (batch, head) pair that sums into one slice of the
  // mask's gradient (mask_grad_extent), and every query head of a key/value head's group,
  // whose key and value gradients it sums; they run in one task, one after the other.
  const int64_t grad_batch = dmask ? grad_mask.size(0) : p.batch, grad_heads = dmask ? grad_mask.size(1) : p.heads;
  const int64_t group = p.group(), head_tasks = grad_heads == p.heads ? p.kv_heads : 1;
  at::parallel_for(0, grad_batch * head_tasks, 1, [&](int64_t first, int64_t last) {
    // With dropout, O = (P Z) V: dV takes P Z (in `dropped`).
    std::vector<T> s(query_block * key_block), dp(query_block * key_block), delta(query_block);
    std::vector<T> dropped(drop.active ? query_block * key_block : 0);
    const auto head = [&](int64_t b, int64_t h, T* dmask_slice) {
      const int64_t bh = b * p.heads + h;
      for (int64_t i0 = 0; i0 < p.queries; i0 += query_block) {
        const int64_t rows = std::min(query_block, p.queries - i0);
        const int64_t q_row = (bh * p.queries + i0);
        const T* dout_i = dout + q_row * p.value_dim;
        // delta_i = sum_e dO_ie O_ie, the row's term of the softmax's backward.
        for (int64_t r = 0; r < rows; ++r) {
          T acc = 0;
          for (int64_t e = 0; e < p.value_dim; ++e) acc += dout_i[r * p.value_dim + e] * o[(q_row + r) * p.value_dim + e];
          delta[r] = acc;
        }
        for (int64_t tile = 0; tile < p.keys; tile += key_block) {
          const KeyRange keys = call.visible_keys(b, h, i0, rows, tile, std::min(key_block, p.keys - tile));
          const int64_t j0 = keys.first, cols = keys.count;
          if (cols == 0) continue;
          call.scores(b, h, i0, rows, j0, cols, s.data());
          for (int64_t r = 0; r < rows; ++r) {
            call.mask(b, h, i0 + r, keys, s.data() + r * key_block);
            probabilities_row(s.data() + r * key_block, cols, lse_data[q_row + r]);
            if (drop.active) {
              dropout_row_apply(dropped.data() + r * key_block, s.data() + r * key_block, cols,
                                dropout_row(drop.seed, q_row + r), j0, drop.threshold, keep_scale);
            }
          }
          const T* kept = drop.active ? dropped.data() : s.data();
          const int64_t k_row = (b * p.kv_heads + h / p.group()) * p.keys + j0;
          // dV_j += P^T dO_i (column-major: dV^T += dO^T P).
          gemm(kNoTranspose, kTranspose, p.value_dim, cols, rows, T(1), dout_i,
               p.value_dim, kept, key_block, T(1), dv + k_row * p.value_dim, p.value_dim);
          // dP = dO_i V_j^T (column-major: dP^T = V dO^T).
          gemm(kTranspose, kNoTranspose, cols, rows, p.value_dim, T(1),
               call.kv_rows(call.v, b, h, j0), call.v.stride(2), dout_i, p.value_dim, T(0), dp.data(), key_block);
          // dS in place of dP.
          for (int64_t r = 0; r < rows; ++r) {
            T* d = dp.data() + r * key_block;
            if (drop.active) {
              score_gradient_row(d, s.data() + r * key_block, cols, delta[r], dropout_row(drop.seed, q_row + r), j0,
                                 drop.threshold, keep_scale);
            } else {
              score_gradient_row(d, s.data() + r * key_block, cols, delta[r]);
            }
            if (dmask_slice) mask_gradient_row(dmask_slice + ((i0 + r) * p.keys + j0), d, cols);
          }
          // dQ_i += scale dS K_j (column-major: dQ^T += K^T dS^T).
          gemm(kNoTranspose, kNoTranspose, p.head_dim, rows, cols, scale,
               call.kv_rows(call.k, b, h, j0), call.k.stride(2), dp.data(), key_block, T(1),
               dq + q_row * p.head_dim, p.head_dim);
          // dK_j += scale dS^T Q_i (column-major: dK^T += Q^T dS).
          gemm(kNoTranspose, kTranspose, p.head_dim, cols, rows, scale,
               call.head_rows(call.q, b, h, i0), call.q.stride(2), dp.data(), key_block, T(1),
               dk + k_row * p.head_dim, p.head_dim);
        }
      }
    };
    for (int64_t task = first; task < last; ++task) {
      const int64_t sb = task / head_tasks, group_index = task % head_tasks;
      // A slice of size 1 along batch or heads takes every batch element or head.
      const bool all_b = grad_batch != p.batch, all_h = head_tasks == 1;
      const int64_t h0 = all_h ? 0 : group_index * group, h1 = all_h ? p.heads : h0 + group;
      for (int64_t b = all_b ? 0 : sb; b < (all_b ? p.batch : sb + 1); ++b) {
        for (int64_t h = h0; h < h1; ++h) {
          const int64_t slice = (all_b ? 0 : b) * grad_heads + (grad_heads == p.heads ? h : 0);
          head(b, h, dmask ? dmask + slice * p.queries * p.keys : nullptr);
        }
      }
    }
  });
}

}  // namespace

CpuTiles cpu_tiles(int64_t keys, int64_t element_size) {
  constexpr int64_t kAlign = 16, kNarrowest = 128, kPreferredKeys = 512, kFewestRows = 64, kMostRows = 128;
  // The backward holds three score tiles (probabilities, their gradient, the dropped
  // probabilities); they get half of L2, BLAS's packed panels of K, V and Q the other half.
  const int64_t l2 = cpu_caches().l2 > 0 ? cpu_caches().l2 : int64_t(512) << 10;
  const int64_t room = l2 / 2 / (3 * element_size);  // elements of one tile
  // Query rows are the M (or K) of every GEMM: as many as fit beside up to 512 keys (PyTorch's
  // CPU flash attention's key block), 64 to 128; the keys take the rest of the room.
  const int64_t wanted_keys = std::clamp((keys + kAlign - 1) / kAlign * kAlign, kAlign, kPreferredKeys);
  int64_t rows = kFewestRows;
  while (rows < kMostRows && 2 * rows * wanted_keys <= room) rows *= 2;
  const int64_t widest = std::max(kNarrowest, room / rows / kAlign * kAlign);
  // Equal tiles: 512 keys with room for 336 are two tiles of 256, not 336 and 176.
  const int64_t count = std::max<int64_t>(1, (keys + widest - 1) / widest);
  const int64_t width = ((keys + count - 1) / count + kAlign - 1) / kAlign * kAlign;
  return {rows, std::max(width, kAlign)};
}

namespace {

void forward_cpu(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                 at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_forward_cpu", [&] {
    forward_kernel<scalar_t>(Call<scalar_t>(p, q, k, v), out, lse);
  });
}

void backward_cpu(const Problem& p, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_q,
                  at::Tensor& grad_k, at::Tensor& grad_v, at::Tensor& grad_mask) {
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(Call<scalar_t>(p, q, k, v), grad_out, out, lse, grad_q, grad_k, grad_v, grad_mask);
  });
}

// Sizes are bounded by memory alone on the CPU.
void no_limits(const char*, const Problem&, bool) {}

// Summing a float mask's gradient over the batch elements or heads it broadcasts over in the
// kernel saves writing, and then reducing, the whole (B, H, L, S) gradient, as long as enough
// slices are left to keep every thread busy; the first extent with enough of them is taken.
std::array<int64_t, 2> mask_grad_extent(const Problem& p) {
  const int64_t batch = p.attn.stride(0) == 0 ? 1 : p.batch, heads = p.attn.stride(1) == 0 ? 1 : p.heads;
  const int64_t threads = at::get_num_threads();
  for (const auto extent : {std::array{batch, heads}, {p.batch, heads}, {batch, p.heads}}) {
    if (extent[0] * extent[1] >= threads) return extent;
  }
  return {p.batch, p.heads};
}

constexpr Backend kCpu{/*computes_reduced_in_float=*/true, no_limits, forward_cpu, mask_grad_extent, backward_cpu};

}  // namespace
}  // namespace dll_ext::attention

TORCH_LIBRARY_IMPL(dll_ext, CPU, m) {
  dll_ext::attention::register_kernels<dll_ext::attention::kCpu, dll_ext::NoGuard>(m);
}
