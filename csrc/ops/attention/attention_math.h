// Element and row math of attention, shared by the CPU and CUDA kernels: the masks, the
// online softmax, the finalisation of a row, dropout and the score gradient. The kernels
// differ only in how they tile and reduce; every value they compute goes through these
// functions, so the CPU tests exercise the arithmetic the GPU runs.
//
// Notation: a score is s = scale * q.k + m (m the additive mask, 0 without one); masked
// scores are -inf; P = softmax(s) row by row; Z the dropout factor of an element (0 if
// dropped, 1 / (1 - p) if kept, 1 without dropout); O = (P Z) V.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/fast_math.h"
#include "common/host_device.h"
#include "ops/attention/attention_dropout.h"

namespace dll_ext::attention {

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// Under is_causal (top-left aligned, as F.scaled_dot_product_attention), query i sees the
// keys before this bound.
DLL_HOST_DEVICE int64_t causal_key_limit(int64_t query) { return query + 1; }

// value where keep, else -inf. On the CPU a bit blend on the float's bits: with a select on
// a bool the compiler emitted a scalar branchy loop.
template <typename T>
DLL_HOST_DEVICE T keep_or_neg_inf(T value, bool keep) {
#if defined(__CUDA_ARCH__)
  return keep ? value : kNegInf<T>;
#else
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits v, inf;
  const T neg_inf = kNegInf<T>;
  __builtin_memcpy(&v, &value, sizeof(T));
  __builtin_memcpy(&inf, &neg_inf, sizeof(T));
  const Bits all = Bits(0) - static_cast<Bits>(keep);
  const Bits blended = (v & all) | (inf & ~all);
  T out;
  __builtin_memcpy(&out, &blended, sizeof(T));
  return out;
#endif
}

// An additive (float) attn_mask element added to its score.
template <typename T>
DLL_HOST_DEVICE T add_mask(T score, T added) {
  return score + added;
}

// A score with every mask applied: `visible` is false where a boolean mask, the key padding or
// the causal bound hides the key. The additive mask is added first, so a NaN in it is hidden too.
template <typename T>
DLL_HOST_DEVICE T masked_score(T score, T added, bool visible) {
  return keep_or_neg_inf(add_mask(score, added), visible);
}

// The running max and sum of one query row's online softmax over its key tiles.
template <typename T>
struct RowSoftmax {
  T max = kNegInf<T>;
  T sum = T(0);

  // Moves the max to cover a tile whose largest score is tile_max; returns the factor by
  // which the sum and the outputs accumulated so far shrink (0 while nothing was visible).
  DLL_HOST_DEVICE T rescale(T tile_max) {
    const T new_max = tile_max > max ? tile_max : max;
    const T shrink = max == kNegInf<T> ? T(0) : fast_exp(max - new_max);
    sum *= shrink;
    max = new_max;
    return shrink;
  }

  // A score's probability before normalisation, relative to the current max; 0 if masked.
  DLL_HOST_DEVICE T unnormalised(T score) const { return score == kNegInf<T> ? T(0) : fast_exp(score - max); }

  DLL_HOST_DEVICE void add(T tile_sum) { sum += tile_sum; }

  // Finalisation. The factor of the accumulated output; a row whose every key is masked
  // has sum 0 and gets output 0.
  DLL_HOST_DEVICE T output_scale() const { return sum > T(0) ? T(1) / sum : T(0); }

  // The row's log-sum-exp for the backward; +inf for a row with no visible key, so that the
  // probabilities recomputed from it are all 0.
  DLL_HOST_DEVICE T lse() const { return sum > T(0) ? max + log_of(sum) : kInf<T>; }
};

// Backward: a score's probability recomputed from its row's log-sum-exp.
template <typename T>
DLL_HOST_DEVICE T probability(T score, T lse) {
  return score == kNegInf<T> || lse == kInf<T> ? T(0) : fast_exp(score - lse);
}

// Z of an element under active dropout. A select: GCC does not vectorise the product of a
// bool converted to float, and the CPU loops that call this must be vector code.
template <typename T>
DLL_HOST_DEVICE T dropout_factor(DropoutRow row, int64_t key, uint32_t threshold, T keep_scale) {
  return dropout_keeps(row, key, threshold) ? keep_scale : T(0);
}

// The gradient of a score, dS = P (Z dP - delta), from dP = dO . v (the gradient reaching
// the dropped probability) and delta = rowsum(dO * O); without dropout Z = 1.
template <typename T>
DLL_HOST_DEVICE T score_gradient(T prob, T dp, T z, T delta) {
  return prob * (dp * z - delta);
}

// The gradient of an additive attn_mask element: the score's, since s = scale q.k + m.
template <typename T>
DLL_HOST_DEVICE T mask_gradient(T score_grad) {
  return score_grad;
}

}  // namespace dll_ext::attention
