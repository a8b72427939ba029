// UTF-8 to code points and back, for prompts and vocabularies.
#pragma once

#include <string>
#include <vector>

namespace dll_infer {

// The code points of `text`; std::runtime_error at the first invalid sequence (a stray
// continuation byte, a truncated, overlong or surrogate sequence, a value past U+10FFFF).
std::vector<char32_t> decode_utf8(const std::string& text);

// The UTF-8 bytes of one code point.
std::string encode_utf8(char32_t code_point);

}  // namespace dll_infer
