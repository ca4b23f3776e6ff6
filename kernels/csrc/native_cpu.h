// Shared by the native CPU extensions (sinkhorn_scaling_cpu.cpp, streaming_softmin_cpu.cpp).
#pragma once

#include <cstdint>

// Work functions are cloned per x86-64 level (AVX-512 / AVX2 / SSE2, chosen at load time) so
// the small helpers they call inline into each clone and vectorise at its width. An OpenMP
// region's outlined body is not cloned: parallel regions call PER_ISA workers, never the reverse.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PER_ISA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PER_ISA
#endif
#define INLINE inline __attribute__((always_inline))

// A buffer address passed from Python (Tensor.data_ptr()) as a typed pointer.
template <typename T>
T* as_ptr(unsigned long long address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}
