// Helpers shared by dll_infer's files: error kinds and reading files.
#pragma once

#include <c10/util/Exception.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace dll_infer {

// Bad command line: dll_infer prints the usage and exits with 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The whole file; throws std::runtime_error when it cannot be opened.
std::vector<char> read_file(const std::string& path);

// Runs step(), prefixing any error with what was being done. c10::Error::what() appends a
// C++ stack trace that means nothing to the user, so its short form is taken.
template <typename Step>
auto doing(const std::string& what, Step&& step) {
  try {
    return step();
  } catch (const c10::Error& e) {
    throw std::runtime_error(what + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    // Includes torch::jit::ErrorReport, e.g. for a model calling an op that is not registered.
    throw std::runtime_error(what + ": " + e.what());
  }
}

}  // namespace dll_infer
