// Marks per-element functions that both the CPU build (g++) and the CUDA build (nvcc) compile.
#pragma once

#if defined(__CUDACC__)
#define EGNO_HD __host__ __device__ __forceinline__
#else
#define EGNO_HD inline
#endif
