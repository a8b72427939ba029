// A model file for dll_infer: a TorchScript module (.pt, torch.jit.save) or an AOTInductor
// package (.pt2, torch._inductor.aoti_compile_and_package), with the attributes that
// `dll-ext export` gives it (kind, vocabulary, image size, ...).
#pragma once

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace dll_infer {

class Model {
 public:
  // Loads `path` (a .pt2 name means a package) onto `device`; std::runtime_error when the file
  // is missing, unreadable, or needs ops that are not registered in this process.
  static Model load(const std::string& path, c10::Device device);

  const std::string& path() const { return path_; }
  bool is_package() const { return package_ != nullptr; }

  // The `kind` attribute of an exported model ("classifier", "char_lm", "nback", "seq2seq");
  // std::nullopt for a model that has none (not written by dll-ext export).
  std::optional<std::string> kind();
  // Throws unless kind() is `wanted`, naming what `command` needs.
  void require_kind(const std::string& wanted, const std::string& command);

  // Attributes (TorchScript) or metadata entries (a package: NAME, or NAME.count and NAME.i
  // for a list); std::runtime_error when missing or of another type.
  bool has_attribute(const std::string& name);
  int64_t int_attribute(const std::string& name);
  std::string string_attribute(const std::string& name);
  std::vector<std::string> string_list_attribute(const std::string& name);

  // forward's result for positional arguments, as an IValue (a package's outputs: a tensor,
  // or a tuple of them).
  c10::IValue forward(std::vector<c10::IValue> args);
  // The TorchScript module, for methods other than forward; throws for a package, naming `what`.
  torch::jit::Module& script(const std::string& what);

 private:
  std::string path_;
  std::optional<torch::jit::Module> module_;
  std::shared_ptr<torch::inductor::AOTIModelPackageLoader> package_;
  std::unordered_map<std::string, std::string> metadata_;
};

}  // namespace dll_infer
