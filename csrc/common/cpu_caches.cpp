#include "common/cpu_caches.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

namespace dll_ext {
namespace {

// sysfs writes sizes as "48K", "2048K" or "105M".
int64_t parse_size(const std::string& text) {
  try {
    size_t end = 0;
    const int64_t value = std::stoll(text, &end);
    const char unit = end < text.size() ? text[end] : ' ';
    return unit == 'K' ? value << 10 : unit == 'M' ? value << 20 : unit == 'G' ? value << 30 : value;
  } catch (const std::exception&) {
    return 0;
  }
}

std::string read_line(const std::string& path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

CacheSizes from_sysfs() {
  CacheSizes sizes{0, 0, 0};
  for (int index = 0;; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    const std::string level = read_line(dir + "level");
    if (level.empty()) break;
    if (read_line(dir + "type") == "Instruction") continue;
    const int64_t size = parse_size(read_line(dir + "size"));
    (level == "1" ? sizes.l1d : level == "2" ? sizes.l2 : sizes.l3) = size;
  }
  return sizes;
}

CacheSizes from_sysconf() {
  CacheSizes sizes{0, 0, 0};
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  sizes = {sysconf(_SC_LEVEL1_DCACHE_SIZE), sysconf(_SC_LEVEL2_CACHE_SIZE), sysconf(_SC_LEVEL3_CACHE_SIZE)};
  for (int64_t* size : {&sizes.l1d, &sizes.l2, &sizes.l3}) *size = std::max<int64_t>(*size, 0);
#endif
  return sizes;
}

}  // namespace

const CacheSizes& cpu_caches() {
  static const CacheSizes sizes = [] {
    const CacheSizes sysfs = from_sysfs();
    return sysfs.l2 > 0 ? sysfs : from_sysconf();
  }();
  return sizes;
}

}  // namespace dll_ext
