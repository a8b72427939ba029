// Marks math that is compiled for both the CPU kernels and the CUDA kernels, so the CPU
// tests exercise exactly the arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define DLL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DLL_HOST_DEVICE inline
#endif
