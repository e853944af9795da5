// Include first in a translation unit whose distances must be computed as the reference computes them: each
// product and sum rounded on its own, in the written order (e.g. ((dx^2 + dy^2) + dz^2)), so that ties at a cutoff
// and between neighbour candidates are decided the same way by every backend. The global flags allow fused
// multiply-adds and reassociation (good for the EGNN kernels); not in these files. (The CUDA build compiles its
// distance code with --fmad=false.)
#pragma once

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "no-associative-math")
#endif
