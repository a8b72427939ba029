// CUDA kernels of the attention ops (float32, float16, bfloat16; head dims up to 256), flash
// style with float accumulation. Tiles are 32 keys wide, one key per lane, staged in shared
// memory as float.
//
// Forward: a block of kWarps warps owns kRowsPerWarp query rows per warp and walks the key
// tiles with an online softmax; a tile whose every score is masked for the block's rows is
// skipped (one vote of the block), before its loads.
//
// Backward: a block owns one key tile of one (batch, head) and walks the query rows, a warp
// per row; its key and value gradients accumulate in shared memory (warps add with shared
// atomics), the query gradient in a float32 buffer with global atomics, since every key block
// adds to every query row.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/cuda_launch.cuh"
#include "ops/attention/attention.h"

namespace dll_ext::attention {
namespace {

constexpr int kWarp = 32;
constexpr int kTileKeys = kWarp;
constexpr int kWarps = 4;
constexpr int kThreadsPerBlock = kWarps * kWarp;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxHeadDim = 256;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr std::initializer_list<at::ScalarType> kSupported{at::kFloat, at::kHalf, at::kBFloat16};

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
  float scale;
  bool causal;
  const bool* allowed;  // expanded attn_mask (True = may attend), or null
  const T* added;       // expanded additive attn_mask, or null
  int64_t mask_strides[4];
  const bool* padded;  // (B, S), True = padded, or null
  Dropout dropout;

  // The score of (b, h, i, j) with the masks applied (-inf where masked), from scale * q.k.
  __device__ float masked(float score, int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (i >= queries || j >= keys || (causal && j > i)) return -INFINITY;
    if (padded && padded[b * keys + j]) return -INFINITY;
    const int64_t at = b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3];
    if (allowed && !allowed[at]) return -INFINITY;
    if (added) score += static_cast<float>(added[at]);
    return score;
  }

  // Whether (b, h, i, j) may be attended at all, as far as the masks that skip tiles tell.
  __device__ bool live(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (i >= queries || j >= keys || (causal && j > i)) return false;
    if (padded && padded[b * keys + j]) return false;
    return !allowed ||
           allowed[b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3]];
  }

  // The dropout factor of (row, key): 0 if dropped, 1 / (1 - p) if kept, 1 without dropout.
  __device__ float dropout_factor(DropoutRow row, int64_t j) const {
    if (!dropout.active) return 1.0f;
    return dropout_keeps(row, j, dropout.threshold) ? static_cast<float>(dropout.keep_scale) : 0.0f;
  }
};

template <typename T>
Args<T> make_args(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  Args<T> a{head_rows<T>(q), head_rows<T>(k), head_rows<T>(v), p.heads, p.queries, p.keys, p.head_dim,
            p.value_dim, static_cast<float>(p.scale), p.causal, nullptr, nullptr, {0, 0, 0, 0}, nullptr,
            p.dropout};
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

  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][kValuesPerLane];
  DropoutRow drop_rows[kRowsPerWarp];
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
    for (int m = 0; m < kValuesPerLane; ++m) acc[r][m] = 0.0f;
    drop_rows[r] = dropout_row(a.dropout.seed, bh * a.queries + first_row + r);
  }

  for (int64_t j0 = 0; j0 < a.keys; j0 += kTileKeys) {
    // Skip the tile when no (row, key) of it may be attended; each thread checks a share.
    bool any_live = false;
    for (int idx = threadIdx.x; idx < kRowsPerBlock * kTileKeys && !any_live; idx += blockDim.x) {
      any_live = a.live(b, h, i0 + idx / kTileKeys, j0 + idx % kTileKeys);
    }
    if (!__syncthreads_or(any_live)) continue;
    stage_rows(k_tile, key_pitch, a.k, b, h, j0, kTileKeys, a.keys, D);
    stage_rows(v_tile, Dv, a.v, b, h, j0, kTileKeys, a.keys, Dv);
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
        const float new_max = fmaxf(row_max[r], warp_max(s));
        if (new_max == -INFINITY) {  // nothing unmasked in this row yet
          p[r] = 0.0f;
          continue;
        }
        const float shrink = row_max[r] == -INFINITY ? 0.0f : expf(row_max[r] - new_max);
        const float e = s == -INFINITY ? 0.0f : expf(s - new_max);
        row_sum[r] = row_sum[r] * shrink + warp_sum(e);
        row_max[r] = new_max;
        for (int m = 0; m < kValuesPerLane; ++m) acc[r][m] *= shrink;
        // Dropout after the sum: the normaliser is that of the undropped row.
        p[r] = e * a.dropout_factor(drop_rows[r], j);
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
    // A row whose every key is masked: output 0 and an infinite log-sum-exp, so that the
    // backward's probabilities exp(score - lse) are 0 there too.
    const float inverse = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
    T* out_row = out + (bh * a.queries + i) * Dv;
    for (int m = 0; m < kValuesPerLane; ++m) {
      const int64_t e = lane + m * kWarp;
      if (e < Dv) out_row[e] = static_cast<T>(acc[r][m] * inverse);
    }
    if (lane == 0) lse[bh * a.queries + i] = row_sum[r] > 0.0f ? row_max[r] + logf(row_sum[r]) : INFINITY;
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

// grid (B*H, key tiles). Shared memory: the key, value, key-gradient and value-gradient
// tiles (32 rows each, odd pitches), then each warp's query row and output-gradient row.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const Args<T> a, const T* __restrict__ grad_out, const float* __restrict__ lse,
                    const float* __restrict__ delta, float* __restrict__ grad_q, T* __restrict__ grad_k,
                    T* __restrict__ grad_v, float* __restrict__ grad_mask) {
  extern __shared__ float shared[];
  const int64_t D = a.head_dim, Dv = a.value_dim, kp = odd_pitch(D), vp = odd_pitch(Dv);
  float* k_tile = shared;
  float* v_tile = k_tile + kTileKeys * kp;
  float* dk_tile = v_tile + kTileKeys * vp;
  float* dv_tile = dk_tile + kTileKeys * kp;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float* q_row = dv_tile + kTileKeys * vp + warp * (D + Dv);
  float* dout_row = q_row + D;

  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t j0 = int64_t(blockIdx.y) * kTileKeys, j = j0 + lane;
  stage_rows(k_tile, kp, a.k, b, h, j0, kTileKeys, a.keys, D);
  stage_rows(v_tile, vp, a.v, b, h, j0, kTileKeys, a.keys, Dv);
  for (int64_t idx = threadIdx.x; idx < kTileKeys * kp; idx += blockDim.x) dk_tile[idx] = 0.0f;
  for (int64_t idx = threadIdx.x; idx < kTileKeys * vp; idx += blockDim.x) dv_tile[idx] = 0.0f;
  __syncthreads();

  // Under is_causal, rows before the tile's first key see none of it.
  const int64_t first_row = a.causal ? j0 : 0;
  for (int64_t i = first_row + warp; i < a.queries; i += kWarps) {
    const float row_lse = lse[bh * a.queries + i];
    if (row_lse == INFINITY) continue;  // every key masked: no gradient
    for (int64_t e = lane; e < D; e += kWarp) q_row[e] = static_cast<float>(a.q.row(b, h, i)[e]);
    const T* dout_i = grad_out + (bh * a.queries + i) * Dv;
    for (int64_t e = lane; e < Dv; e += kWarp) dout_row[e] = static_cast<float>(dout_i[e]);
    __syncwarp();

    float score = 0.0f, dp = 0.0f;
    for (int64_t e = 0; e < D; ++e) score += q_row[e] * k_tile[lane * kp + e];
    for (int64_t e = 0; e < Dv; ++e) dp += dout_row[e] * v_tile[lane * vp + e];
    const float s = a.masked(a.scale * score, b, h, i, j);
    const float prob = s == -INFINITY ? 0.0f : expf(s - row_lse);
    // With dropout, O = (P * Z) V: dV takes P * Z, dP is Z * (dO V^T), and
    // dS = P (dP - delta) with delta = rowsum(dO * O) as without dropout.
    const float z = a.dropout_factor(dropout_row(a.dropout.seed, bh * a.queries + i), j);
    const float kept = prob * z;
    const float ds = prob * (dp * z - delta[bh * a.queries + i]);
    if (grad_mask && j < a.keys) grad_mask[(bh * a.queries + i) * a.keys + j] = ds;
    if (kept != 0.0f) {
      for (int64_t e = 0; e < Dv; ++e) atomicAdd(&dv_tile[lane * vp + e], kept * dout_row[e]);
    }
    if (ds != 0.0f) {
      for (int64_t e = 0; e < D; ++e) atomicAdd(&dk_tile[lane * kp + e], ds * q_row[e]);
    }
    if (__any_sync(kFullMask, ds != 0.0f)) {
      // dQ_i += scale * sum_j dS_ij K_j, a lane per feature. Every lane runs every round (the
      // shuffles need the whole warp), also past the last feature.
      for (int64_t e0 = 0; e0 < D; e0 += kWarp) {
        const int64_t e = e0 + lane;
        float acc = 0.0f;
        for (int jj = 0; jj < kTileKeys; ++jj) {
          const float ds_j = __shfl_sync(kFullMask, ds, jj);
          if (e < D) acc += ds_j * k_tile[jj * kp + e];
        }
        if (e < D) atomicAdd(&grad_q[(bh * a.queries + i) * D + e], a.scale * acc);
      }
    }
    __syncwarp();  // the row buffers are overwritten next
  }
  __syncthreads();

  for (int64_t idx = threadIdx.x; idx < kTileKeys * D; idx += blockDim.x) {
    const int64_t r = idx / D, e = idx % D;
    if (j0 + r < a.keys) grad_k[(bh * a.keys + j0 + r) * D + e] = static_cast<T>(a.scale * dk_tile[r * kp + e]);
  }
  for (int64_t idx = threadIdx.x; idx < kTileKeys * Dv; idx += blockDim.x) {
    const int64_t r = idx / Dv, e = idx % Dv;
    if (j0 + r < a.keys) grad_v[(bh * a.keys + j0 + r) * Dv + e] = static_cast<T>(dv_tile[r * vp + e]);
  }
}

// Kernels use more than the default 48 KiB of shared memory for large head dims.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

void check_cuda_problem(const char* op, const Problem& p) {
  TORCH_CHECK_VALUE(p.head_dim <= kMaxHeadDim && p.value_dim <= kMaxHeadDim, op,
                    ": head dims up to ", kMaxHeadDim, " are supported on CUDA, but got E = ", p.head_dim,
                    ", Ev = ", p.value_dim);
  TORCH_CHECK_VALUE(p.batch * p.heads <= std::numeric_limits<int32_t>::max(), op,
                    ": batch * heads must be below 2^31 on CUDA");
  TORCH_CHECK_VALUE((p.queries + kRowsPerBlock - 1) / kRowsPerBlock <= 65535 &&
                        (p.keys + kTileKeys - 1) / kTileKeys <= 65535,
                    op, ": L and S must be below ", 65535 * kTileKeys, " on CUDA");
}

template <typename T, int kValuesPerLane>
void launch_forward(const Args<T>& a, int64_t batch_heads, T* out, float* lse) {
  const size_t bytes = sizeof(float) * (kRowsPerBlock * a.head_dim + kTileKeys * odd_pitch(a.head_dim) +
                                        kTileKeys * a.value_dim);
  auto kernel = forward_kernel<T, kValuesPerLane>;
  allow_shared_memory(kernel, bytes);
  const dim3 grid(batch_heads, (a.queries + kRowsPerBlock - 1) / kRowsPerBlock);
  kernel<<<grid, kThreadsPerBlock, bytes, at::cuda::getCurrentCUDAStream()>>>(a, out, lse);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v,
                                                          const std::optional<at::Tensor>& attn_mask,
                                                          const std::optional<at::Tensor>& key_padding_mask,
                                                          bool is_causal, std::optional<double> scale,
                                                          double dropout_p,
                                                          const std::optional<at::Tensor>& dropout_seed) {
  const Problem p = check_and_resolve("attention", q, k, v, attn_mask, key_padding_mask, is_causal, scale,
                                      dropout_p, dropout_seed, kSupported);
  check_cuda_problem("attention", p);
  const auto guard = dll_ext::cuda::device_guard(q);
  at::Tensor out = at::empty({p.batch, p.heads, p.queries, p.value_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.heads, p.queries}, q.options().dtype(at::kFloat));
  if (lse.numel() == 0) return {out, lse};
  const at::Tensor qc = rows_addressable(q), kc = rows_addressable(k), vc = rows_addressable(v);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_forward_cuda", [&] {
    const Args<scalar_t> a = make_args<scalar_t>(p, qc, kc, vc);
    scalar_t* o = out.data_ptr<scalar_t>();
    float* l = lse.data_ptr<float>();
    const int64_t bh = p.batch * p.heads;
    if (p.value_dim <= 32) {
      launch_forward<scalar_t, 1>(a, bh, o, l);
    } else if (p.value_dim <= 64) {
      launch_forward<scalar_t, 2>(a, bh, o, l);
    } else if (p.value_dim <= 128) {
      launch_forward<scalar_t, 4>(a, bh, o, l);
    } else {
      launch_forward<scalar_t, 8>(a, bh, o, l);
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& key_padding_mask, bool is_causal, std::optional<double> scale,
    double dropout_p, const std::optional<at::Tensor>& dropout_seed, bool mask_grad) {
  const Problem p = check_and_resolve("attention_backward", q, k, v, attn_mask, key_padding_mask, is_causal, scale,
                                      dropout_p, dropout_seed, kSupported);
  check_backward_inputs(p, q, grad_out, out, lse, mask_grad);
  check_cuda_problem("attention_backward", p);
  const auto guard = dll_ext::cuda::device_guard(q);
  const auto floats = q.options().dtype(at::kFloat);
  at::Tensor grad_q = at::zeros({p.batch, p.heads, p.queries, p.head_dim}, floats);
  at::Tensor grad_k = at::zeros({p.batch, p.heads, p.keys, p.head_dim}, q.options());
  at::Tensor grad_v = at::zeros({p.batch, p.heads, p.keys, p.value_dim}, q.options());
  at::Tensor grad_mask = mask_grad ? at::zeros({p.batch, p.heads, p.queries, p.keys}, floats) : at::Tensor();
  const int64_t rows = p.batch * p.heads * p.queries;
  if (rows > 0 && p.keys > 0) {
    const at::Tensor dout = grad_out.contiguous(), o = out.contiguous(), l = lse.contiguous();
    const at::Tensor qc = rows_addressable(q), kc = rows_addressable(k), vc = rows_addressable(v);
    at::Tensor delta = at::empty({rows}, floats);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_backward_cuda", [&] {
      constexpr int kWarpsPerBlock = dll_ext::cuda::kThreads / kWarp;
      const int64_t blocks = std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 65535);
      delta_kernel<scalar_t><<<blocks, dll_ext::cuda::kThreads, 0, stream>>>(
          dout.const_data_ptr<scalar_t>(), o.const_data_ptr<scalar_t>(), delta.data_ptr<float>(), rows, p.value_dim);
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      const size_t bytes = sizeof(float) * (2 * kTileKeys * (odd_pitch(p.head_dim) + odd_pitch(p.value_dim)) +
                                            kWarps * (p.head_dim + p.value_dim));
      auto kernel = backward_kernel<scalar_t>;
      allow_shared_memory(kernel, bytes);
      const dim3 grid(p.batch * p.heads, (p.keys + kTileKeys - 1) / kTileKeys);
      kernel<<<grid, kThreadsPerBlock, bytes, stream>>>(
          make_args<scalar_t>(p, qc, kc, vc), dout.const_data_ptr<scalar_t>(), l.const_data_ptr<float>(),
          delta.const_data_ptr<float>(), grad_q.data_ptr<float>(), grad_k.data_ptr<scalar_t>(),
          grad_v.data_ptr<scalar_t>(), mask_grad ? grad_mask.data_ptr<float>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  std::optional<at::Tensor> mask_gradient;
  if (mask_grad) mask_gradient = at::sum_to(grad_mask, attn_mask->sizes()).to(q.scalar_type());
  return {grad_q.to(q.scalar_type()), grad_k, grad_v, mask_gradient};
}

}  // namespace
}  // namespace dll_ext::attention

TORCH_LIBRARY_IMPL(dll_ext, CUDA, m) {
  m.impl("_attention_forward", &dll_ext::attention::attention_forward_cuda);
  m.impl("attention_backward", &dll_ext::attention::attention_backward_cuda);
}
