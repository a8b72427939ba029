#include "model.h"

#include "common.h"

#include <filesystem>
#include <stdexcept>

namespace dll_infer {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A model that calls an op nobody registered fails with the dispatcher's or the TorchScript
// compiler's message, which does not say what to do about it.
std::string with_op_hint(const std::string& message) {
  for (const char* marker : {"Unknown builtin op", "Could not find schema", "Unknown type name"}) {
    if (message.find(marker) != std::string::npos) {
      return message + "\n(dll_infer registers torch's and dll_ext's ops only: this model needs ops "
                       "from another library)";
    }
  }
  return message;
}

}  // namespace

Model Model::load(const std::string& path, c10::Device device) {
  Model model;
  model.path_ = path;
  const std::string what = "loading model '" + path + "'";
  if (!std::filesystem::is_regular_file(path)) {
    throw std::runtime_error(what + ": no such file");
  }
  try {
    doing(what, [&] {
      if (ends_with(path, ".pt2")) {
        model.package_ = std::make_shared<torch::inductor::AOTIModelPackageLoader>(
            path, "model", false, 1, device.is_cuda() ? device.index() : -1);
        model.metadata_ = model.package_->get_metadata();
      } else {
        // map_location: parameters land on the target device whatever device they were saved from.
        model.module_ = torch::jit::load(path, device);
        model.module_->eval();
      }
      return 0;
    });
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(with_op_hint(e.what()));
  }
  return model;
}

std::optional<std::string> Model::kind() {
  if (!has_attribute("kind")) return std::nullopt;
  return string_attribute("kind");
}

void Model::require_kind(const std::string& wanted, const std::string& command) {
  const std::optional<std::string> actual = kind();
  if (!actual) {
    throw std::runtime_error("'" + path_ + "' has no 'kind' attribute: `dll_infer " + command +
                             "` takes a model written by `dll-ext export`");
  }
  if (*actual != wanted) {
    throw std::runtime_error("'" + path_ + "' is a " + *actual + " model; `dll_infer " + command +
                             "` needs a " + wanted + " model");
  }
}

bool Model::has_attribute(const std::string& name) {
  if (module_) return module_->hasattr(name);
  return metadata_.count(name) > 0 || metadata_.count(name + ".count") > 0;
}

namespace {
std::runtime_error missing(const std::string& path, const std::string& name, const std::string& type) {
  return std::runtime_error("'" + path + "' has no " + type + " attribute '" + name + "'");
}
}  // namespace

int64_t Model::int_attribute(const std::string& name) {
  if (module_) {
    if (!module_->hasattr(name) || !module_->attr(name).isInt()) throw missing(path_, name, "int");
    return module_->attr(name).toInt();
  }
  auto found = metadata_.find(name);
  if (found == metadata_.end()) throw missing(path_, name, "int");
  try {
    return std::stoll(found->second);
  } catch (const std::exception&) {
    throw missing(path_, name, "int");
  }
}

std::string Model::string_attribute(const std::string& name) {
  if (module_) {
    if (!module_->hasattr(name) || !module_->attr(name).isString()) throw missing(path_, name, "str");
    return module_->attr(name).toStringRef();
  }
  auto found = metadata_.find(name);
  if (found == metadata_.end()) throw missing(path_, name, "str");
  return found->second;
}

std::vector<std::string> Model::string_list_attribute(const std::string& name) {
  std::vector<std::string> items;
  if (module_) {
    if (!module_->hasattr(name) || !module_->attr(name).isList()) throw missing(path_, name, "List[str]");
    for (const c10::IValue& item : module_->attr(name).toListRef()) {
      if (!item.isString()) throw missing(path_, name, "List[str]");
      items.push_back(item.toStringRef());
    }
    return items;
  }
  const int64_t count = int_attribute(name + ".count");
  for (int64_t i = 0; i < count; ++i) items.push_back(string_attribute(name + "." + std::to_string(i)));
  return items;
}

c10::IValue Model::forward(std::vector<c10::IValue> args) {
  if (module_) return module_->forward(std::move(args));
  std::vector<at::Tensor> inputs;
  for (const c10::IValue& arg : args) {
    if (!arg.isTensor()) throw std::runtime_error("a .pt2 package takes tensor arguments only");
    inputs.push_back(arg.toTensor());
  }
  std::vector<at::Tensor> outputs = package_->run(inputs);
  if (outputs.size() == 1) return outputs[0];
  return c10::ivalue::Tuple::create(std::vector<c10::IValue>(outputs.begin(), outputs.end()));
}

torch::jit::Module& Model::script(const std::string& what) {
  if (!module_) {
    throw std::runtime_error(what + " needs the TorchScript model.pt: '" + path_ +
                             "' is an AOTInductor package, which holds the forward pass only");
  }
  return *module_;
}

}  // namespace dll_infer
