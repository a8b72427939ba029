// Binary PGM (P5, grey) and PPM (P6, RGB) images with 8-bit samples.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dll_infer {

struct PnmImage {
  int64_t channels = 0, height = 0, width = 0;
  int maxval = 0;               // the value of a full-intensity sample, 1..255
  std::vector<uint8_t> pixels;  // rows top to bottom, samples of a pixel side by side (H, W, C)
};

// True when the bytes start like a Netpbm file ('P' and a digit).
bool looks_like_pnm(const std::vector<char>& bytes);

// The image in `bytes`; std::runtime_error naming what is wrong: another Netpbm variant
// (ASCII, bitmap, PAM), 16-bit samples, a malformed header or missing pixel data.
PnmImage parse_pnm(const std::vector<char>& bytes);

}  // namespace dll_infer
