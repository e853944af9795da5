// A cache for the large work tensors of the CPU kernels (the EGNN op's stored activations: hundreds of MB on large
// graphs).
//
// From the system allocator every such tensor is a fresh mapping whose 4 KB pages are faulted in and zeroed one at
// a time, then unmapped again; in a training loop that is paid twice per layer and step. Tensors from
// `empty_cached` return their memory here when the last reference goes, and the next request of a size between
// the buffer's size and half of it takes it back with its pages still mapped. The cache keeps at most
// EGNO_FAST_CPU_CACHE_MB megabytes (default 4096; 0 turns it off); `egno_fast.cpp.empty_cache()` frees it.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace egno_fast {

// An uninitialised contiguous CPU tensor; from the cache when its size is at least kCachedMinBytes.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options);

constexpr size_t kCachedMinBytes = size_t(1) << 20;

// Frees every cached buffer; returns the bytes freed.
size_t empty_cache();

// Bytes held by the cache (free buffers only).
size_t cached_bytes();

}  // namespace egno_fast
