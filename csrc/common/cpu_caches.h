// This CPU's data cache sizes, for the CPU kernels that size their tiles to the cache they
// run on rather than to constants tuned on one machine.
#pragma once

#include <cstdint>

namespace dll_ext {

// Bytes of one instance of each data (or unified) cache level, as the first CPU reports them;
// a level the system does not report is 0.
struct CacheSizes {
  int64_t l1d, l2, l3;
};

// Read once, from Linux's sysfs, else glibc's sysconf; all 0 where neither answers.
const CacheSizes& cpu_caches();

}  // namespace dll_ext
