#include "utf8.h"

#include <stdexcept>

namespace dll_infer {
namespace {

// Per lead byte: how many continuation bytes follow, and the smallest code point such a
// sequence may encode (anything smaller is an overlong form).
struct Lead {
  int continuation;
  char32_t minimum;
  char32_t bits;
};

Lead classify_lead(unsigned char byte) {
  if (byte < 0x80) return {0, 0, byte};
  if ((byte & 0xE0) == 0xC0) return {1, 0x80, static_cast<char32_t>(byte & 0x1F)};
  if ((byte & 0xF0) == 0xE0) return {2, 0x800, static_cast<char32_t>(byte & 0x0F)};
  if ((byte & 0xF8) == 0xF0) return {3, 0x10000, static_cast<char32_t>(byte & 0x07)};
  return {-1, 0, 0};  // a continuation byte or 0xF8..0xFF
}

}  // namespace

std::vector<char32_t> decode_utf8(const std::string& text) {
  std::vector<char32_t> code_points;
  for (size_t i = 0; i < text.size();) {
    const Lead lead = classify_lead(static_cast<unsigned char>(text[i]));
    const std::string where = " at byte " + std::to_string(i);
    if (lead.continuation < 0) throw std::runtime_error("invalid UTF-8" + where);
    if (text.size() - i - 1 < static_cast<size_t>(lead.continuation)) {
      throw std::runtime_error("invalid UTF-8: truncated sequence" + where);
    }
    char32_t value = lead.bits;
    for (int k = 1; k <= lead.continuation; ++k) {
      const auto byte = static_cast<unsigned char>(text[i + k]);
      if ((byte & 0xC0) != 0x80) throw std::runtime_error("invalid UTF-8: truncated sequence" + where);
      value = (value << 6) | (byte & 0x3F);
    }
    if (value < lead.minimum) throw std::runtime_error("invalid UTF-8: overlong sequence" + where);
    if ((value >= 0xD800 && value <= 0xDFFF) || value > 0x10FFFF) {
      throw std::runtime_error("invalid UTF-8: not a Unicode scalar value" + where);
    }
    code_points.push_back(value);
    i += 1 + lead.continuation;
  }
  return code_points;
}

std::string encode_utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

}  // namespace dll_infer
