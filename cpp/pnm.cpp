#include "pnm.h"

#include <cctype>
#include <stdexcept>

namespace dll_infer {
namespace {

class HeaderReader {
 public:
  explicit HeaderReader(const std::vector<char>& bytes) : bytes_(bytes) {}

  // The next decimal header field, after whitespace and '#' comments (which run to the end of
  // their line and may sit between any two fields).
  long field(const char* name) {
    skip_space_and_comments();
    long value = 0;
    size_t digits = 0;
    while (pos_ < bytes_.size() && std::isdigit(static_cast<unsigned char>(bytes_[pos_]))) {
      value = value * 10 + (bytes_[pos_++] - '0');
      if (value > 1'000'000) throw std::runtime_error(std::string("PNM header: ") + name + " is too large");
      ++digits;
    }
    if (digits == 0) {
      throw std::runtime_error(std::string("PNM header: ") + name +
                               (pos_ >= bytes_.size() ? " is missing (file too short)" : " is not a number"));
    }
    return value;
  }

  // The single whitespace byte that ends the header; the pixels start after it.
  size_t end_of_header() {
    if (pos_ >= bytes_.size() || !std::isspace(static_cast<unsigned char>(bytes_[pos_]))) {
      throw std::runtime_error("PNM header: no whitespace between maxval and the pixel data");
    }
    return pos_ + 1;
  }

 private:
  void skip_space_and_comments() {
    while (pos_ < bytes_.size()) {
      if (bytes_[pos_] == '#') {
        while (pos_ < bytes_.size() && bytes_[pos_] != '\n' && bytes_[pos_] != '\r') ++pos_;
      } else if (std::isspace(static_cast<unsigned char>(bytes_[pos_]))) {
        ++pos_;
      } else {
        return;
      }
    }
  }

  const std::vector<char>& bytes_;
  size_t pos_ = 2;  // after the magic number
};

}  // namespace

bool looks_like_pnm(const std::vector<char>& bytes) {
  return bytes.size() >= 2 && bytes[0] == 'P' && std::isdigit(static_cast<unsigned char>(bytes[1]));
}

PnmImage parse_pnm(const std::vector<char>& bytes) {
  if (!looks_like_pnm(bytes)) throw std::runtime_error("not a PGM/PPM file (no P5/P6 magic number)");
  const char variant = bytes[1];
  if (variant != '5' && variant != '6') {
    throw std::runtime_error(std::string("P") + variant +
                             " Netpbm files are not supported: only binary PGM (P5) and PPM (P6)");
  }
  PnmImage image;
  image.channels = variant == '5' ? 1 : 3;
  HeaderReader header(bytes);
  image.width = header.field("width");
  image.height = header.field("height");
  const long maxval = header.field("maxval");
  if (image.width < 1 || image.height < 1) throw std::runtime_error("PNM header: width and height must be >= 1");
  if (maxval < 1 || maxval > 255) {
    throw std::runtime_error("PNM maxval " + std::to_string(maxval) +
                             ": only 8-bit samples (maxval 1..255) are supported");
  }
  image.maxval = static_cast<int>(maxval);
  const size_t start = header.end_of_header();
  const size_t expected = static_cast<size_t>(image.width * image.height * image.channels);
  const size_t available = bytes.size() - start;
  if (available < expected) {
    throw std::runtime_error("truncated PNM file: " + std::to_string(image.width) + "x" +
                             std::to_string(image.height) + " needs " + std::to_string(expected) +
                             " bytes of pixels, found " + std::to_string(available));
  }
  image.pixels.assign(bytes.begin() + static_cast<std::ptrdiff_t>(start),
                      bytes.begin() + static_cast<std::ptrdiff_t>(start + expected));
  for (uint8_t sample : image.pixels) {
    if (sample > image.maxval) {
      throw std::runtime_error("PNM sample " + std::to_string(sample) + " exceeds maxval " +
                               std::to_string(image.maxval));
    }
  }
  return image;
}

}  // namespace dll_infer
