// See buffer_pool.h.
#include "buffer_pool.h"

#include <c10/util/accumulate.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace egno_fast {
namespace {

size_t limit_from_environment() {
  const char* value = std::getenv("EGNO_FAST_CPU_CACHE_MB");
  if (value == nullptr || *value == '\0') return size_t(4096) << 20;
  char* end = nullptr;
  const long long megabytes = std::strtoll(value, &end, 10);
  TORCH_CHECK(end != value && *end == '\0' && megabytes >= 0,
              "EGNO_FAST_CPU_CACHE_MB must be a number of megabytes (0 turns the cache off), got '", value, "'");
  return static_cast<size_t>(megabytes) << 20;
}

class BufferPool {
 public:
  // A free buffer of at least `bytes` and at most twice that, or a new one.
  std::pair<void*, size_t> take(size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        const std::pair<void*, size_t> found{it->second, it->first};
        free_bytes_ -= it->first;
        free_.erase(it);
        return found;
      }
    }
    void* data = std::malloc(bytes);
    TORCH_CHECK(data != nullptr, "egno_fast: out of memory allocating ", bytes, " bytes");
    return {data, bytes};
  }

  void give(void* data, size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (free_bytes_ + bytes <= limit_) {
        free_.emplace(bytes, data);
        free_bytes_ += bytes;
        return;
      }
    }
    std::free(data);
  }

  size_t clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    const size_t freed = free_bytes_;
    for (const auto& entry : free_) std::free(entry.second);
    free_.clear();
    free_bytes_ = 0;
    return freed;
  }

  size_t free_bytes() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return free_bytes_;
  }

  size_t limit() const { return limit_; }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t free_bytes_ = 0;
  const size_t limit_ = limit_from_environment();
};

// Never destroyed: tensors may still return buffers while the process exits.
BufferPool& pool() {
  static BufferPool* instance = new BufferPool();
  return *instance;
}

}  // namespace

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (bytes < kCachedMinBytes || pool().limit() == 0) return at::empty(sizes, options);
  const auto [data, capacity] = pool().take(bytes);
  return at::from_blob(data, sizes, [capacity = capacity](void* ptr) { pool().give(ptr, capacity); }, options);
}

size_t empty_cache() { return pool().clear(); }

size_t cached_bytes() { return pool().free_bytes(); }

}  // namespace egno_fast
