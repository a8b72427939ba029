// dll_infer: run a TorchScript model that uses dll_ext ops, without Python.
//
//   dll_infer MODEL.pt --input X.pt --output Y.pt [--device cpu|cuda]
//
// X.pt is written by Python's torch.save: one tensor, or a tuple/list of tensors that become
// forward's positional arguments. Y.pt is read back with torch.load.
//
// The dll_ext ops need no code here: libdll_ext_ops.so registers them with the dispatcher
// when it is loaded, which the --no-as-needed link guarantees (see CMakeLists.txt).
//
// Exit status: 0 on success, 1 when loading, running or saving fails, 2 on bad usage.
#include <torch/cuda.h>
#include <torch/script.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: dll_infer MODEL.pt --input X.pt --output Y.pt [--device cpu|cuda]\n"
    "  MODEL.pt  TorchScript module (torch.jit.save)\n"
    "  X.pt      a tensor, or a tuple/list of tensors (torch.save): forward's arguments\n"
    "  Y.pt      forward's result, for torch.load\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model, input, output;
  c10::Device device = c10::kCPU;
};

c10::Device parse_device(const std::string& text) {
  std::optional<c10::Device> device;
  try {
    device = c10::Device(text);  // also takes "cuda:1"
  } catch (const c10::Error&) {
    // not a device name at all: reported below with the other unusable values
  }
  if (!device || !(device->is_cpu() || device->is_cuda())) {
    throw UsageError("--device must be cpu or cuda, got '" + text + "'");
  }
  return *device;
}

Options parse_args(int argc, char** argv) {
  Options opts;
  std::string device = "cpu";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") {
      opts.input = value();
    } else if (arg == "--output") {
      opts.output = value();
    } else if (arg == "--device") {
      device = value();
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else if (opts.model.empty()) {
      opts.model = arg;
    } else {
      throw UsageError("unexpected argument " + arg);
    }
  }
  if (opts.model.empty()) throw UsageError("no model file given");
  if (opts.input.empty()) throw UsageError("--input is required");
  if (opts.output.empty()) throw UsageError("--output is required");
  opts.device = parse_device(device);
  return opts;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open the file");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw std::runtime_error("cannot write the file");
}

// forward's positional arguments from the unpickled input file, moved to `device`.
std::vector<c10::IValue> to_arguments(const c10::IValue& value, c10::Device device) {
  std::vector<c10::IValue> elements;
  if (value.isTensor()) {
    elements.push_back(value);
  } else if (value.isTuple()) {
    elements = value.toTupleRef().elements().vec();
  } else if (value.isList()) {
    elements = value.toList().vec();
  } else {
    throw std::runtime_error("the input file must hold a tensor or a tuple/list of tensors, not " +
                             value.tagKind());
  }
  std::vector<c10::IValue> args;
  for (const auto& element : elements) {
    if (!element.isTensor()) {
      throw std::runtime_error("the input tuple/list must hold tensors only, found " +
                               element.tagKind());
    }
    args.emplace_back(element.toTensor().to(device));
  }
  return args;
}

// Tensors in the result go back to the CPU, so torch.load works without a GPU.
c10::IValue to_cpu(const c10::IValue& value) {
  if (value.isTensor()) return value.toTensor().cpu();
  if (value.isTuple()) {
    std::vector<c10::IValue> elements;
    for (const auto& element : value.toTupleRef().elements()) elements.push_back(to_cpu(element));
    return c10::ivalue::Tuple::create(std::move(elements));
  }
  if (value.isTensorList()) {
    c10::List<at::Tensor> tensors;
    for (const at::Tensor& t : value.toTensorList().vec()) tensors.push_back(t.cpu());
    return tensors;
  }
  return value;
}

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

void run(const Options& opts) {
  if (opts.device.is_cuda() && !torch::cuda::is_available()) {
    throw std::runtime_error("--device " + opts.device.str() + ": CUDA is not available");
  }
  torch::jit::Module model = doing("loading model '" + opts.model + "'", [&] {
    // map_location: parameters land on the target device whatever device they were saved from.
    torch::jit::Module m = torch::jit::load(opts.model, opts.device);
    m.eval();
    return m;
  });
  std::vector<c10::IValue> args = doing("reading input '" + opts.input + "'", [&] {
    return to_arguments(torch::jit::pickle_load(read_file(opts.input)), opts.device);
  });
  c10::IValue result = doing("running the model", [&] {
    // No autograd bookkeeping: nothing will be differentiated, and inference tensors are cheaper.
    c10::InferenceMode guard;
    return to_cpu(model.forward(args));
  });
  doing("writing output '" + opts.output + "'",
        [&] { write_file(opts.output, torch::jit::pickle_save(result)); });
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    }
  }
  Options opts;
  try {
    opts = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "dll_infer: " << e.what() << "\n" << kUsage;
    return 2;
  }
  try {
    run(opts);
  } catch (const std::exception& e) {
    std::cerr << "dll_infer: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
