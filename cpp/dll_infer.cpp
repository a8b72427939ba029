// dll_infer: run a model that uses dll_ext ops, without Python.
//
//   dll_infer MODEL.pt|MODEL.pt2 --input X.pt --output Y.pt [--device cpu|cuda]
//   dll_infer classify MODEL.pt|MODEL.pt2 IMAGE.pgm|IMAGE.ppm|IMAGE.pt [--top K]
//   dll_infer generate MODEL.pt --prompt TEXT [--length N] [--temperature T] [--top-k K] [--seed S]
//   dll_infer answer MODEL.pt QUESTION [--beam K [--nbest N] [--length-penalty A]]
//   dll_infer nback MODEL.pt SYMBOL...
//
// The first form runs any TorchScript module or AOTInductor package: X.pt is written by
// Python's torch.save, one tensor or a tuple/list of tensors that become forward's positional
// arguments; Y.pt is read back with torch.load. The others take the files of `dll-ext export`
// (commands.cpp).
//
// The dll_ext ops need no code here: libdll_ext_ops.so registers them with the dispatcher
// when it is loaded, which the --no-as-needed link guarantees (see CMakeLists.txt).
//
// Exit status: 0 on success, 1 when loading, running or saving fails, 2 on bad usage.
#include "commands.h"
#include "common.h"
#include "model.h"

#include <torch/cuda.h>
#include <torch/script.h>

#include <fstream>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace dll_infer {
namespace {

constexpr const char* kUsage =
    "usage: dll_infer MODEL.pt --input X.pt --output Y.pt [--device cpu|cuda]\n"
    "       dll_infer classify MODEL IMAGE [--top K]\n"
    "       dll_infer generate MODEL.pt --prompt TEXT [--length N] [--temperature T] [--top-k K] [--seed S]\n"
    "       dll_infer answer MODEL.pt QUESTION [--beam K [--nbest N] [--length-penalty A]]\n"
    "       dll_infer nback MODEL.pt SYMBOL...\n"
    "  MODEL.pt  TorchScript module (torch.jit.save; dll-ext export writes model.pt)\n"
    "  MODEL.pt2 AOTInductor package of a forward pass (dll-ext export writes model.pt2)\n"
    "  X.pt      a tensor, or a tuple/list of tensors (torch.save): forward's arguments\n"
    "  Y.pt      forward's result, for torch.load\n"
    "  IMAGE     binary PGM (P5) or PPM (P6), 8-bit, of the model's size; or a tensor file\n"
    "  classify: the K most likely classes; generate: the char LM's greedy continuation of\n"
    "  TEXT (default 300 characters), or with --temperature, --top-k or --seed one sampled as\n"
    "  dll-ext generate samples it (temperature 1, all characters, seed 0 by default);\n"
    "  answer: a seq2seq model's greedy answer, or with --beam the best of beam search of\n"
    "  width K (--nbest N: the N best, each after its score; --length-penalty: GNMT's alpha,\n"
    "  default 0); nback: the N-back model's prediction (1: same as n back) at each position\n"
    "  of the symbols\n";

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

void run_raw(const Options& opts) {
  if (opts.device.is_cuda() && !torch::cuda::is_available()) {
    throw std::runtime_error("--device " + opts.device.str() + ": CUDA is not available");
  }
  Model model = Model::load(opts.model, opts.device);
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

// The subcommand named by argv[1], or the raw mode.
void run(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "classify") {
    classify_command(parse_command_line(argc, argv, 2, {"--top", "--device"}));
  } else if (command == "generate") {
    generate_command(
        parse_command_line(argc, argv, 2, {"--prompt", "--length", "--temperature", "--top-k", "--seed", "--device"}));
  } else if (command == "answer") {
    answer_command(parse_command_line(argc, argv, 2, {"--beam", "--nbest", "--length-penalty", "--device"}));
  } else if (command == "nback") {
    nback_command(parse_command_line(argc, argv, 2, {"--device"}));
  } else {
    run_raw(parse_args(argc, argv));
  }
}

}  // namespace
}  // namespace dll_infer

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << dll_infer::kUsage;
      return 0;
    }
  }
  try {
    dll_infer::run(argc, argv);
  } catch (const dll_infer::UsageError& e) {
    std::cerr << "dll_infer: " << e.what() << "\n" << dll_infer::kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dll_infer: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
