// Marks math that is compiled for both the CPU kernels and the CUDA kernels, so the CPU
// tests exercise exactly the arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define DLL_HOST_DEVICE __host__ __device__ __forceinline__
#else
// Always inlined: the CPU loops that call these are vectorised only when no call remains.
#define DLL_HOST_DEVICE inline __attribute__((always_inline))
#endif

// CPU loops marked DLL_CPU_CLONES are compiled once per x86 ISA level and picked at load time
// (GCC/Clang function multiversioning), so memory-bound passes get AVX2 without
// requiring them: the build itself targets baseline x86-64. Elsewhere it is a no-op.
#if defined(__x86_64__) && defined(__linux__) && !defined(__CUDACC__) && !defined(__SANITIZE_ADDRESS__)
#define DLL_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DLL_CPU_CLONES
#endif
