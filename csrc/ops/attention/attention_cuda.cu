// CUDA kernels of the attention ops (float32, float16, bfloat16; head dims up to 256), flash
// style with float accumulation. Tiles are 32 keys wide, one key per lane, staged in shared
// memory as float. All element math is attention_math.h's.
//
// Forward: a block of kWarps warps owns kRowsPerWarp query rows per warp and walks the key
// tiles with an online softmax; a tile whose every score is masked for the block's rows is
// skipped (one vote of the block), before its loads.
//
// Backward, deterministic (no atomics: every gradient element has one writer and every sum
// a fixed order), in two passes that each recompute the probabilities:
// - key_gradients_kernel: a block owns one key tile of one (batch, head) and walks the query
//   rows one at a time; its warps split the features, so each key- and value-gradient element
//   of the tile is accumulated by one thread. It also writes the float mask's gradient.
// - query_gradients_kernel: a block owns kRowsPerBlock query rows, as the forward does, and
//   walks the key tiles, accumulating the query gradient in registers.
// The second pass costs about one more forward of the scores and dP (the price of
// reproducible gradients; FlashAttention's backward uses atomics for dQ instead).
#include <ATen/Dispatch_v2.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>

#include "common/cuda_launch.cuh"
#include "ops/attention/attention.h"
#include "ops/attention/attention_math.h"

namespace dll_ext::attention {
namespace {

constexpr int kWarp = 32;
constexpr int kTileKeys = kWarp;
constexpr int kWarps = 4;
constexpr int kThreadsPerBlock = kWarps * kWarp;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxHeadDim = 256;
constexpr int64_t kMaxGridY = 65535;
constexpr unsigned kFullMask = 0xffffffffu;

// The dtypes of attention.cpp's CUDA table: float64 is refused before any kernel runs, so
// none is instantiated for it.
#define DISPATCH_ATTENTION_CUDA_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_V2(TYPE, NAME, AT_WRAP(__VA_ARGS__), at::kFloat, at::kHalf, at::kBFloat16)

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

// Rows of shared-memory tiles that lanes read one row each: an odd pitch puts the 32 rows'
// elements in 32 different banks.
__host__ __device__ constexpr int64_t odd_pitch(int64_t features) { return features | 1; }

// The (b, h) rows of a (B, H, rows, features) tensor with unit feature stride.
template <typename T>
struct HeadRows {
  const T* data;
  int64_t batch_stride, head_stride, row_stride;

  __device__ const T* row(int64_t b, int64_t h, int64_t r) const {
    return data + b * batch_stride + h * head_stride + r * row_stride;
  }
};

template <typename T>
HeadRows<T> head_rows(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

// Everything a kernel needs of one call, by value.
template <typename T>
struct Args {
  HeadRows<T> q, k, v;
  int64_t heads, queries, keys, head_dim, value_dim;
  int64_t kv_heads, group;  // key/value heads; query heads per key/value head
  float scale;
  bool causal;
  const bool* allowed;  // expanded attn_mask (True = may attend), or null
  const T* added;       // expanded additive attn_mask, or null
  int64_t mask_strides[4];
  const bool* padded;  // (B, S), True = padded, or null
  Dropout dropout;

  __device__ int64_t mask_offset(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3];
  }

  // Whether query i may see key j at all: in range and hidden by no boolean mask.
  __device__ bool visible(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (i >= queries || j >= keys) return false;
    if (causal && j >= causal_key_limit(i)) return false;
    if (padded && padded[b * keys + j]) return false;
    return !allowed || allowed[mask_offset(b, h, i, j)];
  }

  // The score of (b, h, i, j) from scale * q.k, with the masks applied (-inf where masked).
  __device__ float masked(float score, int64_t b, int64_t h, int64_t i, int64_t j) const {
    const bool seen = visible(b, h, i, j);
    const float add = added && seen ? static_cast<float>(added[mask_offset(b, h, i, j)]) : 0.0f;
    return masked_score(score, add, seen);
  }

  // Z of (row, key): 1 without dropout.
  __device__ float dropout_z(DropoutRow row, int64_t j) const {
    return dropout.active ? dropout_factor(row, j, dropout.threshold, static_cast<float>(dropout.keep_scale)) : 1.0f;
  }
};

template <typename T>
Args<T> make_args(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  Args<T> a{head_rows<T>(q), head_rows<T>(k), head_rows<T>(v), p.heads, p.queries, p.keys, p.head_dim,
            p.value_dim, p.kv_heads, p.group(), static_cast<float>(p.scale), p.causal, nullptr, nullptr,
            {0, 0, 0, 0}, nullptr, p.dropout};
  if (p.attn.defined()) {
    if (p.attn.scalar_type() == at::kBool) {
      a.allowed = p.attn.const_data_ptr<bool>();
    } else {
      a.added = p.attn.const_data_ptr<T>();
    }
    for (int d = 0; d < 4; ++d) a.mask_strides[d] = p.attn.stride(d);
  }
  if (p.key_padding.defined()) a.padded = p.key_padding.const_data_ptr<bool>();
  return a;
}

// Copies rows [first, first + rows) of head (b, h) into shared memory as float, `pitch`
// apart; rows past `limit` are zeros.
template <typename T>
__device__ void stage_rows(float* dst, int64_t pitch, const HeadRows<T>& src, int64_t b, int64_t h, int64_t first,
                           int rows, int64_t limit, int64_t features) {
  for (int64_t idx = threadIdx.x; idx < rows * features; idx += blockDim.x) {
    const int64_t r = idx / features, e = idx % features;
    dst[r * pitch + e] = first + r < limit ? static_cast<float>(src.row(b, h, first + r)[e]) : 0.0f;
  }
}

// Whether any (row, key) of rows [i0, i0 + kRowsPerBlock) and the key tile at j0 is visible;
// each thread checks a share, the block votes.
template <typename T>
__device__ bool tile_live(const Args<T>& a, int64_t b, int64_t h, int64_t i0, int64_t j0) {
  bool any = false;
  for (int idx = threadIdx.x; idx < kRowsPerBlock * kTileKeys && !any; idx += blockDim.x) {
    any = a.visible(b, h, i0 + idx / kTileKeys, j0 + idx % kTileKeys);
  }
  return __syncthreads_or(any);
}

// Shared memory of each kernel, in floats; the launchers and check_limits use the same sums.
int64_t forward_shared_floats(int64_t D, int64_t Dv) {
  return kRowsPerBlock * D + kTileKeys * odd_pitch(D) + kTileKeys * Dv;
}

int64_t key_gradients_shared_floats(int64_t D, int64_t Dv) {
  return 2 * kTileKeys * (odd_pitch(D) + odd_pitch(Dv)) + D + Dv + 2 * kWarps * kWarp;
}

int64_t query_gradients_shared_floats(int64_t D, int64_t Dv) {
  return kRowsPerBlock * (D + Dv) + kTileKeys * (odd_pitch(D) + odd_pitch(Dv));
}

// grid (B*H, query blocks); kValuesPerLane * 32 >= value_dim. Shared memory: the block's
// queries (kRowsPerBlock x head_dim), a key tile (32 x odd pitch) and a value tile (32 x value_dim).
template <typename T, int kValuesPerLane>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const Args<T> a, T* __restrict__ out, float* __restrict__ lse) {
  extern __shared__ float shared[];
  const int64_t D = a.head_dim, Dv = a.value_dim, key_pitch = odd_pitch(D);
  float* q_tile = shared;
  float* k_tile = q_tile + kRowsPerBlock * D;
  float* v_tile = k_tile + kTileKeys * key_pitch;

  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t i0 = int64_t(blockIdx.y) * kRowsPerBlock;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t first_row = i0 + warp * kRowsPerWarp;

  stage_rows(q_tile, D, a.q, b, h, i0, kRowsPerBlock, a.queries, D);

  RowSoftmax<float> softmax[kRowsPerWarp];
  float acc[kRowsPerWarp][kValuesPerLane];
  DropoutRow drop_rows[kRowsPerWarp];
  for (int r = 0; r < kRowsPerWarp; ++r) {
    for (int m = 0; m < kValuesPerLane; ++m) acc[r][m] = 0.0f;
    drop_rows[r] = dropout_row(a.dropout.seed, bh * a.queries + first_row + r);
  }

  for (int64_t j0 = 0; j0 < a.keys; j0 += kTileKeys) {
    if (!tile_live(a, b, h, i0, j0)) continue;
    stage_rows(k_tile, key_pitch, a.k, b, h / a.group, j0, kTileKeys, a.keys, D);
    stage_rows(v_tile, Dv, a.v, b, h / a.group, j0, kTileKeys, a.keys, Dv);
    __syncthreads();

    if (first_row < a.queries) {
      const int64_t j = j0 + lane;
      float score[kRowsPerWarp] = {};
      for (int64_t e = 0; e < D; ++e) {
        const float key = k_tile[lane * key_pitch + e];
        for (int r = 0; r < kRowsPerWarp; ++r) score[r] += q_tile[(warp * kRowsPerWarp + r) * D + e] * key;
      }
      float p[kRowsPerWarp];
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float s = a.masked(a.scale * score[r], b, h, first_row + r, j);
        const float shrink = softmax[r].rescale(warp_max(s));
        const float e = softmax[r].unnormalised(s);
        softmax[r].add(warp_sum(e));
        for (int m = 0; m < kValuesPerLane; ++m) acc[r][m] *= shrink;
        // Dropout after the sum: the normaliser is that of the undropped row.
        p[r] = e * a.dropout_z(drop_rows[r], j);
      }
      for (int jj = 0; jj < kTileKeys; ++jj) {
        float pj[kRowsPerWarp];
        for (int r = 0; r < kRowsPerWarp; ++r) pj[r] = __shfl_sync(kFullMask, p[r], jj);
        for (int m = 0; m < kValuesPerLane; ++m) {
          const int64_t e = lane + m * kWarp;
          if (e < Dv) {
            const float value = v_tile[jj * Dv + e];
            for (int r = 0; r < kRowsPerWarp; ++r) acc[r][m] += pj[r] * value;
          }
        }
      }
    }
    __syncthreads();  // the tiles are overwritten next
  }

  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = first_row + r;
    if (i >= a.queries) break;
    const float inverse = softmax[r].output_scale();
    T* out_row = out + (bh * a.queries + i) * Dv;
    for (int m = 0; m < kValuesPerLane; ++m) {
      const int64_t e = lane + m * kWarp;
      if (e < Dv) out_row[e] = static_cast<T>(acc[r][m] * inverse);
    }
    if (lane == 0) lse[bh * a.queries + i] = softmax[r].lse();
  }
}

// delta_i = sum_e dO_ie O_ie, one warp per row.
template <typename T>
__global__ void delta_kernel(const T* __restrict__ grad_out, const T* __restrict__ out, float* __restrict__ delta,
                             int64_t rows, int64_t value_dim) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; row < rows; row += warps) {
    float acc = 0.0f;
    for (int64_t e = lane; e < value_dim; e += kWarp) {
      acc += static_cast<float>(grad_out[row * value_dim + e]) * static_cast<float>(out[row * value_dim + e]);
    }
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
  }
}

// grid (B*Hkv, key tiles). Shared memory: the key, value, key-gradient and value-gradient
// tiles (32 rows each, odd pitches), the current query row and output-gradient row, and the
// warps' partial dot products. Warp w handles the features e = w (mod kWarps).
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    key_gradients_kernel(const Args<T> a, const T* __restrict__ grad_out, const float* __restrict__ lse,
                         const float* __restrict__ delta, T* __restrict__ grad_k, T* __restrict__ grad_v,
                         float* __restrict__ grad_mask) {
  extern __shared__ float shared[];
  const int64_t D = a.head_dim, Dv = a.value_dim, kp = odd_pitch(D), vp = odd_pitch(Dv);
  float* k_tile = shared;
  float* v_tile = k_tile + kTileKeys * kp;
  float* dk_tile = v_tile + kTileKeys * vp;
  float* dv_tile = dk_tile + kTileKeys * kp;
  float* q_row = dv_tile + kTileKeys * vp;
  float* dout_row = q_row + D;
  float* partial_score = dout_row + Dv;            // [kWarps][32]
  float* partial_dp = partial_score + kWarps * kWarp;  // [kWarps][32]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;

  // One key/value head; its gradients sum over the query heads of its group.
  const int64_t kv_bh = blockIdx.x, b = kv_bh / a.kv_heads, kv_h = kv_bh % a.kv_heads;
  const int64_t j0 = int64_t(blockIdx.y) * kTileKeys, j = j0 + lane;
  stage_rows(k_tile, kp, a.k, b, kv_h, j0, kTileKeys, a.keys, D);
  stage_rows(v_tile, vp, a.v, b, kv_h, j0, kTileKeys, a.keys, Dv);
  for (int64_t idx = threadIdx.x; idx < kTileKeys * kp; idx += blockDim.x) dk_tile[idx] = 0.0f;
  for (int64_t idx = threadIdx.x; idx < kTileKeys * vp; idx += blockDim.x) dv_tile[idx] = 0.0f;

  // Under is_causal, rows before the tile's first key see none of it.
  const int64_t first_row = a.causal ? j0 : 0;
  for (int64_t h = kv_h * a.group; h < (kv_h + 1) * a.group; ++h) {
    const int64_t bh = b * a.heads + h;
    for (int64_t i = first_row; i < a.queries; ++i) {
      const int64_t row = bh * a.queries + i;
      const float row_lse = lse[row];
      if (row_lse == kInf<float>) continue;  // every key masked: no gradient (the same for the whole block)
      __syncthreads();  // the previous row's buffers are read to the end; also orders the staging above
      for (int64_t e = threadIdx.x; e < D; e += blockDim.x) q_row[e] = static_cast<float>(a.q.row(b, h, i)[e]);
      for (int64_t e = threadIdx.x; e < Dv; e += blockDim.x) dout_row[e] = static_cast<float>(grad_out[row * Dv + e]);
      __syncthreads();

      float score = 0.0f, dp = 0.0f;
      for (int64_t e = warp; e < D; e += kWarps) score += q_row[e] * k_tile[lane * kp + e];
      for (int64_t e = warp; e < Dv; e += kWarps) dp += dout_row[e] * v_tile[lane * vp + e];
      partial_score[warp * kWarp + lane] = score;
      partial_dp[warp * kWarp + lane] = dp;
      __syncthreads();
      score = dp = 0.0f;
      for (int w = 0; w < kWarps; ++w) {  // the same order in every warp: the same values
        score += partial_score[w * kWarp + lane];
        dp += partial_dp[w * kWarp + lane];
      }

      const float prob = probability(a.masked(a.scale * score, b, h, i, j), row_lse);
      const float z = a.dropout_z(dropout_row(a.dropout.seed, row), j);
      const float ds = score_gradient(prob, dp, z, delta[row]);
      if (grad_mask && warp == 0 && j < a.keys) grad_mask[row * a.keys + j] = mask_gradient(ds);
      const float kept = prob * z;
      for (int64_t e = warp; e < Dv; e += kWarps) dv_tile[lane * vp + e] += kept * dout_row[e];
      for (int64_t e = warp; e < D; e += kWarps) dk_tile[lane * kp + e] += ds * q_row[e];
    }
  }
  __syncthreads();

  for (int64_t idx = threadIdx.x; idx < kTileKeys * D; idx += blockDim.x) {
    const int64_t r = idx / D, e = idx % D;
    if (j0 + r < a.keys) grad_k[(kv_bh * a.keys + j0 + r) * D + e] = static_cast<T>(a.scale * dk_tile[r * kp + e]);
  }
  for (int64_t idx = threadIdx.x; idx < kTileKeys * Dv; idx += blockDim.x) {
    const int64_t r = idx / Dv, e = idx % Dv;
    if (j0 + r < a.keys) grad_v[(kv_bh * a.keys + j0 + r) * Dv + e] = static_cast<T>(dv_tile[r * vp + e]);
  }
}

// grid (B*H, query blocks); kValuesPerLane * 32 >= head_dim. Shared memory: the block's
// query rows and output-gradient rows, a key tile and a value tile (odd pitches).
template <typename T, int kValuesPerLane>
__global__ void __launch_bounds__(kThreadsPerBlock)
    query_gradients_kernel(const Args<T> a, const T* __restrict__ grad_out, const float* __restrict__ lse,
                           const float* __restrict__ delta, T* __restrict__ grad_q) {
  extern __shared__ float shared[];
  const int64_t D = a.head_dim, Dv = a.value_dim, kp = odd_pitch(D), vp = odd_pitch(Dv);
  float* q_tile = shared;
  float* dout_tile = q_tile + kRowsPerBlock * D;
  float* k_tile = dout_tile + kRowsPerBlock * Dv;
  float* v_tile = k_tile + kTileKeys * kp;

  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t i0 = int64_t(blockIdx.y) * kRowsPerBlock;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t first_row = i0 + warp * kRowsPerWarp;

  stage_rows(q_tile, D, a.q, b, h, i0, kRowsPerBlock, a.queries, D);
  const HeadRows<T> dout{grad_out, a.heads * a.queries * Dv, a.queries * Dv, Dv};
  stage_rows(dout_tile, Dv, dout, b, h, i0, kRowsPerBlock, a.queries, Dv);

  float row_lse[kRowsPerWarp], row_delta[kRowsPerWarp], acc[kRowsPerWarp][kValuesPerLane];
  DropoutRow drop_rows[kRowsPerWarp];
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = first_row + r;
    row_lse[r] = i < a.queries ? lse[bh * a.queries + i] : kInf<float>;
    row_delta[r] = i < a.queries ? delta[bh * a.queries + i] : 0.0f;
    drop_rows[r] = dropout_row(a.dropout.seed, bh * a.queries + i);
    for (int m = 0; m < kValuesPerLane; ++m) acc[r][m] = 0.0f;
  }

  for (int64_t j0 = 0; j0 < a.keys; j0 += kTileKeys) {
    if (!tile_live(a, b, h, i0, j0)) continue;
    stage_rows(k_tile, kp, a.k, b, h / a.group, j0, kTileKeys, a.keys, D);
    stage_rows(v_tile, vp, a.v, b, h / a.group, j0, kTileKeys, a.keys, Dv);
    __syncthreads();

    if (first_row < a.queries) {
      const int64_t j = j0 + lane;
      float score[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
      for (int64_t e = 0; e < D; ++e) {
        const float key = k_tile[lane * kp + e];
        for (int r = 0; r < kRowsPerWarp; ++r) score[r] += q_tile[(warp * kRowsPerWarp + r) * D + e] * key;
      }
      for (int64_t e = 0; e < Dv; ++e) {
        const float value = v_tile[lane * vp + e];
        for (int r = 0; r < kRowsPerWarp; ++r) dp[r] += dout_tile[(warp * kRowsPerWarp + r) * Dv + e] * value;
      }
      float ds[kRowsPerWarp];
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float prob = probability(a.masked(a.scale * score[r], b, h, first_row + r, j), row_lse[r]);
        ds[r] = score_gradient(prob, dp[r], a.dropout_z(drop_rows[r], j), row_delta[r]);
      }
      // dQ_i += sum_j dS_ij K_j, a lane per feature, keys in a fixed order.
      for (int jj = 0; jj < kTileKeys; ++jj) {
        float ds_j[kRowsPerWarp];
        for (int r = 0; r < kRowsPerWarp; ++r) ds_j[r] = __shfl_sync(kFullMask, ds[r], jj);
        for (int m = 0; m < kValuesPerLane; ++m) {
          const int64_t e = lane + m * kWarp;
          if (e < D) {
            const float key = k_tile[jj * kp + e];
            for (int r = 0; r < kRowsPerWarp; ++r) acc[r][m] += ds_j[r] * key;
          }
        }
      }
    }
    __syncthreads();  // the tiles are overwritten next
  }

  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = first_row + r;
    if (i >= a.queries) break;
    T* dq_row = grad_q + (bh * a.queries + i) * D;
    for (int m = 0; m < kValuesPerLane; ++m) {
      const int64_t e = lane + m * kWarp;
      if (e < D) dq_row[e] = static_cast<T>(a.scale * acc[r][m]);
    }
  }
}

int64_t blocks_of(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

void check_limits_cuda(const char* op, const Problem& p, bool backward) {
  TORCH_CHECK(p.head_dim <= kMaxHeadDim && p.value_dim <= kMaxHeadDim, op,
              ": head dims up to ", kMaxHeadDim, " are supported on CUDA, but got E = ", p.head_dim,
              ", Ev = ", p.value_dim);
  TORCH_CHECK(p.batch * p.heads <= std::numeric_limits<int32_t>::max(), op,
              ": batch * heads must be below 2^31 on CUDA");
  TORCH_CHECK(blocks_of(p.queries, kRowsPerBlock) <= kMaxGridY, op, ": L must be at most ",
              kMaxGridY * kRowsPerBlock, " on CUDA, but got ", p.queries);
  TORCH_CHECK(!backward || blocks_of(p.keys, kTileKeys) <= kMaxGridY, op, ": S must be at most ",
              kMaxGridY * kTileKeys, " on CUDA, but got ", p.keys);
  int64_t floats = forward_shared_floats(p.head_dim, p.value_dim);
  if (backward) {
    floats = std::max(key_gradients_shared_floats(p.head_dim, p.value_dim),
                      query_gradients_shared_floats(p.head_dim, p.value_dim));
  }
  const int64_t bytes = floats * int64_t(sizeof(float));
  const size_t limit = dll_ext::cuda::shared_memory_limit();
  TORCH_CHECK(bytes <= int64_t(limit), op, ": head dims E = ", p.head_dim, ", Ev = ", p.value_dim, " need ",
              bytes / 1024, " KiB of shared memory per block, but this GPU allows ", limit / 1024,
              " KiB; use smaller head dims on this GPU");
}

template <typename T, int kValuesPerLane>
void launch_forward(const Args<T>& a, int64_t batch_heads, T* out, float* lse) {
  const size_t bytes = sizeof(float) * forward_shared_floats(a.head_dim, a.value_dim);
  auto kernel = forward_kernel<T, kValuesPerLane>;
  dll_ext::cuda::allow_shared_memory(kernel, bytes);
  const dim3 grid(batch_heads, blocks_of(a.queries, kRowsPerBlock));
  kernel<<<grid, kThreadsPerBlock, bytes, at::cuda::getCurrentCUDAStream()>>>(a, out, lse);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int kValuesPerLane>
void launch_query_gradients(const Args<T>& a, int64_t batch_heads, const T* grad_out, const float* lse,
                            const float* delta, T* grad_q) {
  const size_t bytes = sizeof(float) * query_gradients_shared_floats(a.head_dim, a.value_dim);
  auto kernel = query_gradients_kernel<T, kValuesPerLane>;
  dll_ext::cuda::allow_shared_memory(kernel, bytes);
  const dim3 grid(batch_heads, blocks_of(a.queries, kRowsPerBlock));
  kernel<<<grid, kThreadsPerBlock, bytes, at::cuda::getCurrentCUDAStream()>>>(a, grad_out, lse, delta, grad_q);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls launch<kValuesPerLane>() with the fewest values per lane that cover `features`.
template <typename Launch>
void by_values_per_lane(int64_t features, const Launch& launch) {
  if (features <= 32) {
    launch(std::integral_constant<int, 1>{});
  } else if (features <= 64) {
    launch(std::integral_constant<int, 2>{});
  } else if (features <= 128) {
    launch(std::integral_constant<int, 4>{});
  } else {
    launch(std::integral_constant<int, 8>{});
  }
}

void forward_cuda(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                  at::Tensor& lse) {
  DISPATCH_ATTENTION_CUDA_TYPES(q.scalar_type(), "attention_forward_cuda", [&] {
    const Args<scalar_t> a = make_args<scalar_t>(p, q, k, v);
    by_values_per_lane(p.value_dim, [&](auto values) {
      launch_forward<scalar_t, decltype(values)::value>(a, p.batch * p.heads, out.data_ptr<scalar_t>(),
                                                         lse.data_ptr<float>());
    });
  });
}

void backward_cuda(const Problem& p, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_q,
                   at::Tensor& grad_k, at::Tensor& grad_v, at::Tensor& grad_mask) {
  const int64_t rows = p.batch * p.heads * p.queries;
  at::Tensor delta = at::empty({rows}, q.options().dtype(at::kFloat));
  auto stream = at::cuda::getCurrentCUDAStream();
  DISPATCH_ATTENTION_CUDA_TYPES(q.scalar_type(), "attention_backward_cuda", [&] {
    const Args<scalar_t> a = make_args<scalar_t>(p, q, k, v);
    const scalar_t* dout = grad_out.const_data_ptr<scalar_t>();
    const float* l = lse.const_data_ptr<float>();
    constexpr int kWarpsPerBlock = dll_ext::cuda::kThreads / kWarp;
    const int64_t delta_blocks = std::min<int64_t>(blocks_of(rows, kWarpsPerBlock), 65535);
    delta_kernel<scalar_t><<<delta_blocks, dll_ext::cuda::kThreads, 0, stream>>>(
        dout, out.const_data_ptr<scalar_t>(), delta.data_ptr<float>(), rows, p.value_dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const size_t bytes = sizeof(float) * key_gradients_shared_floats(p.head_dim, p.value_dim);
    auto kernel = key_gradients_kernel<scalar_t>;
    dll_ext::cuda::allow_shared_memory(kernel, bytes);
    const dim3 grid(p.batch * p.kv_heads, blocks_of(p.keys, kTileKeys));
    kernel<<<grid, kThreadsPerBlock, bytes, stream>>>(a, dout, l, delta.const_data_ptr<float>(),
                                                      grad_k.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>(),
                                                      grad_mask.defined() ? grad_mask.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    by_values_per_lane(p.head_dim, [&](auto values) {
      launch_query_gradients<scalar_t, decltype(values)::value>(a, p.batch * p.heads, dout, l,
                                                                 delta.const_data_ptr<float>(),
                                                                 grad_q.data_ptr<scalar_t>());
    });
  });
}

// One thread block per (batch, head) row block writes its own slice of the mask's gradient;
// summing over broadcast dimensions is left to attention.cpp's sum_to (deterministic).
std::array<int64_t, 2> full_mask_grad(const Problem& p) { return {p.batch, p.heads}; }

constexpr Backend kCuda{/*computes_reduced_in_float=*/false, check_limits_cuda, forward_cuda, full_mask_grad,
                        backward_cuda};

}  // namespace
}  // namespace dll_ext::attention

TORCH_LIBRARY_IMPL(dll_ext, CUDA, m) {
  dll_ext::attention::register_kernels<dll_ext::attention::kCuda, dll_ext::cuda::CudaGuard>(m);
}
