#include "commands.h"

#include "beam_search.h"
#include "common.h"
#include "model.h"
#include "pnm.h"
#include "utf8.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <unordered_map>

namespace dll_infer {
namespace {

// Unknown characters named in an error, at most this many (as dll_ext.data.Vocabulary does).
constexpr size_t kShownUnknown = 20;

int64_t parse_int(const std::string& option, const std::string& text, int64_t minimum) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < minimum) {
    throw UsageError(option + " must be an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  }
  return value;
}

// A finite number >= 0, or > 0 unless zero_allowed.
double parse_number(const std::string& option, const std::string& text, bool zero_allowed) {
  size_t used = 0;
  double value = -1;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !std::isfinite(value) || value < 0 || (value == 0 && !zero_allowed)) {
    throw UsageError(option + " must be a number " + (zero_allowed ? ">= 0" : "> 0") + ", got '" + text + "'");
  }
  return value;
}

std::string option_or(const CommandLine& args, const std::string& name, const std::string& fallback) {
  auto found = args.options.find(name);
  return found == args.options.end() ? fallback : found->second;
}

void expect_positional(const CommandLine& args, size_t count, const std::string& what) {
  if (args.positional.size() < count) throw UsageError("missing " + what);
  if (args.positional.size() > count) throw UsageError("unexpected argument " + args.positional[count]);
}

Model load_model(const CommandLine& args) {
  // Generation loops and single images gain nothing from a GPU; the raw mode has --device cuda.
  if (option_or(args, "--device", "cpu") != "cpu") throw UsageError("the subcommands run on the CPU (--device cpu)");
  return Model::load(args.positional.at(0), c10::kCPU);
}

// The characters of a text model's vocabulary: every single-code-point symbol except the
// special ids the model names (pad, unk, sos, eos), which never stand for a character.
class CharVocabulary {
 public:
  explicit CharVocabulary(Model& model) : symbols_(model.string_list_attribute("vocabulary")) {
    std::set<int64_t> specials;
    for (const char* name : {"pad", "unk", "sos", "eos"}) {
      if (model.has_attribute(name)) specials.insert(model.int_attribute(name));
    }
    for (int64_t id = 0; id < static_cast<int64_t>(symbols_.size()); ++id) {
      const std::vector<char32_t> code_points = decode_utf8(symbols_[id]);
      if (code_points.size() == 1 && !specials.count(id)) ids_.emplace(code_points[0], id);
    }
  }

  int64_t size() const { return static_cast<int64_t>(symbols_.size()); }

  // int64 (len,) ids of `text`, or an error naming the characters outside the vocabulary.
  at::Tensor encode(const std::vector<char32_t>& text) const {
    std::vector<int64_t> ids;
    std::set<char32_t> unknown;
    for (char32_t c : text) {
      auto found = ids_.find(c);
      if (found == ids_.end()) {
        unknown.insert(c);
      } else {
        ids.push_back(found->second);
      }
    }
    if (!unknown.empty()) throw std::runtime_error("characters not in the vocabulary: " + describe(unknown));
    return torch::tensor(ids, torch::kInt64);
  }

  // The symbols of ids (specials as their names), up to the first `stop` id if one is given,
  // without the `skipped` ids.
  std::string decode(const at::Tensor& ids, std::optional<int64_t> stop = std::nullopt,
                     const std::set<int64_t>& skipped = {}) const {
    std::string text;
    const at::Tensor flat = ids.to(torch::kInt64).contiguous().view(-1);
    const int64_t* data = flat.data_ptr<int64_t>();
    for (int64_t i = 0; i < flat.numel(); ++i) {
      if (stop && data[i] == *stop) break;
      if (skipped.count(data[i])) continue;
      if (data[i] < 0 || data[i] >= size()) {
        throw std::runtime_error("the model returned id " + std::to_string(data[i]) + ", outside its vocabulary");
      }
      text += symbols_[data[i]];
    }
    return text;
  }

 private:
  static std::string describe(const std::set<char32_t>& characters) {
    std::ostringstream out;
    size_t shown = 0;
    for (char32_t c : characters) {
      if (shown == kShownUnknown) break;
      char code[16];
      std::snprintf(code, sizeof code, "U+%04X", static_cast<unsigned>(c));
      out << (shown++ ? ", " : "") << "'" << encode_utf8(c) << "' (" << code << ")";
    }
    if (characters.size() > kShownUnknown) out << " and " << characters.size() - kShownUnknown << " more";
    return out.str();
  }

  std::vector<std::string> symbols_;
  std::unordered_map<char32_t, int64_t> ids_;
};

std::vector<char32_t> text_argument(const std::string& text, const std::string& what) {
  if (text.empty()) throw std::runtime_error("the " + what + " is empty");
  return doing("reading the " + what, [&] { return decode_utf8(text); });
}

// Images (N, C, H, W) as float in [0, 1] from a PGM/PPM file (a sample over maxval) or a
// tensor file (uint8 pixels over 255; floating-point values as they are).
at::Tensor read_images(const std::string& path) {
  const std::vector<char> bytes = doing("reading image '" + path + "'", [&] { return read_file(path); });
  if (looks_like_pnm(bytes)) {
    const PnmImage image = doing("reading image '" + path + "'", [&] { return parse_pnm(bytes); });
    at::Tensor pixels = torch::tensor(at::ArrayRef<uint8_t>(image.pixels), torch::kUInt8)
                            .view({1, image.height, image.width, image.channels})
                            .permute({0, 3, 1, 2});
    return pixels.to(torch::kFloat32) / image.maxval;
  }
  // torch.save writes a zip archive; anything else would fail deep in the unpickler.
  const bool is_zip = bytes.size() >= 4 && std::equal(bytes.begin(), bytes.begin() + 4, "PK\x03\x04");
  const c10::IValue value =
      is_zip ? doing("reading image tensor '" + path + "'", [&] { return torch::jit::pickle_load(bytes); })
             : c10::IValue();
  if (!value.isTensor()) {
    throw std::runtime_error("'" + path + "' is neither a PGM/PPM image nor a tensor file (torch.save of a tensor)");
  }
  at::Tensor images = value.toTensor();
  if (images.dim() == 3) images = images.unsqueeze(0);
  if (images.dim() != 4) {
    throw std::runtime_error("the tensor in '" + path + "' must be (C, H, W) or (N, C, H, W), got " +
                             std::to_string(images.dim()) + " dimensions");
  }
  if (images.scalar_type() == torch::kUInt8) return images.to(torch::kFloat32) / 255;
  if (!images.is_floating_point()) throw std::runtime_error("the image tensor must be uint8 or floating point");
  return images.to(torch::kFloat32);
}

std::string shape_text(int64_t c, int64_t h, int64_t w) {
  return std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w);
}

}  // namespace

CommandLine parse_command_line(int argc, char** argv, int first, const std::vector<std::string>& valued) {
  CommandLine args;
  for (int i = first; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.size() > 1 && arg[0] == '-' && arg != "--") {
      if (std::find(valued.begin(), valued.end(), arg) == valued.end()) throw UsageError("unknown option " + arg);
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      args.options[arg] = argv[++i];
    } else if (arg == "--") {
      for (++i; i < argc; ++i) args.positional.emplace_back(argv[i]);
    } else {
      args.positional.push_back(arg);
    }
  }
  return args;
}

void classify_command(const CommandLine& args) {
  expect_positional(args, 2, "MODEL and IMAGE");
  const int64_t top = parse_int("--top", option_or(args, "--top", "1"), 1);
  Model model = load_model(args);
  model.require_kind("classifier", "classify");
  const std::vector<std::string> classes = model.string_list_attribute("classes");
  const int64_t channels = model.int_attribute("channels"), height = model.int_attribute("height"),
                width = model.int_attribute("width");
  const at::Tensor images = read_images(args.positional[1]);
  if (images.size(1) != channels || images.size(2) != height || images.size(3) != width) {
    throw std::runtime_error("the image is " + shape_text(images.size(1), images.size(2), images.size(3)) +
                             " (channels x height x width) but the model takes " +
                             shape_text(channels, height, width) + " images (dll_infer does not resize)");
  }
  const at::Tensor probabilities = doing("running the model", [&] {
    c10::InferenceMode guard;
    return torch::softmax(model.forward({images}).toTensor(), 1);
  });
  const auto [values, indices] = probabilities.topk(std::min<int64_t>(top, probabilities.size(1)), 1);
  for (int64_t n = 0; n < values.size(0); ++n) {
    for (int64_t k = 0; k < values.size(1); ++k) {
      const int64_t index = indices[n][k].item<int64_t>();
      char probability[32];
      std::snprintf(probability, sizeof probability, "%.6f", values[n][k].item<float>());
      std::cout << "class " << classes.at(index) << ", probability " << probability << "\n";
    }
  }
}

// What follows prompt `ids` (P,), `length` ids sampled as dll_ext.models.CharLM.generate samples
// them (the same calls, ops and generator stream): the prompt goes in once, then each sampled
// id, the LSTM state carried; each id is drawn from softmax(logits / temperature) over the
// top_k most likely (all when top_k is 0) with a CPU generator seeded with `seed`.
at::Tensor sample_continuation(Model& model, const at::Tensor& ids, int64_t length, double temperature,
                               int64_t top_k, uint64_t seed) {
  c10::InferenceMode guard;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t layers = model.int_attribute("num_layers"), hidden = model.int_attribute("hidden_size");
  at::Tensor h = torch::zeros({layers, 1, hidden}), c = torch::zeros({layers, 1, hidden});
  at::Tensor inputs = ids.unsqueeze(0);
  at::Tensor generated = torch::empty({length}, torch::kInt64);
  for (int64_t step = 0; step < length; ++step) {
    const auto output = model.forward({inputs, h, c}).toTuple();
    h = output->elements()[1].toTensor();
    c = output->elements()[2].toTensor();
    at::Tensor logits = output->elements()[0].toTensor()[0][-1].to(torch::kFloat32) / temperature;
    if (top_k > 0 && top_k < logits.numel()) {
      const at::Tensor kth_largest = std::get<0>(logits.topk(top_k))[-1];
      logits = logits.masked_fill(logits < kth_largest, -std::numeric_limits<double>::infinity());
    }
    const at::Tensor token = at::multinomial(torch::softmax(logits, -1), 1, false, generator)[0];
    generated[step] = token;
    inputs = token.view({1, 1});
  }
  return generated;
}

void generate_command(const CommandLine& args) {
  expect_positional(args, 1, "MODEL");
  if (!args.options.count("--prompt")) throw UsageError("--prompt is required");
  const int64_t length = parse_int("--length", option_or(args, "--length", "300"), 0);
  const bool sampling =
      args.options.count("--temperature") || args.options.count("--top-k") || args.options.count("--seed");
  const double temperature = parse_number("--temperature", option_or(args, "--temperature", "1"), false);
  const int64_t top_k = args.options.count("--top-k") ? parse_int("--top-k", args.options.at("--top-k"), 1) : 0;
  const int64_t seed = parse_int("--seed", option_or(args, "--seed", "0"), 0);
  const std::string prompt = args.options.at("--prompt");
  Model model = load_model(args);
  model.require_kind("char_lm", "generate");
  torch::jit::Module& module = model.script("generate");
  const CharVocabulary vocabulary(model);
  const at::Tensor ids = vocabulary.encode(text_argument(prompt, "prompt"));
  const at::Tensor generated = doing("generating", [&] {
    if (sampling) return sample_continuation(model, ids, length, temperature, top_k, static_cast<uint64_t>(seed));
    c10::InferenceMode guard;
    return module.get_method("generate")({ids, length}).toTensor();
  });
  std::cout << prompt << vocabulary.decode(generated) << "\n";
}

void answer_command(const CommandLine& args) {
  expect_positional(args, 2, "MODEL and QUESTION");
  const int64_t beam = parse_int("--beam", option_or(args, "--beam", "1"), 1);
  const int64_t nbest = parse_int("--nbest", option_or(args, "--nbest", "1"), 1);
  const double length_penalty = parse_number("--length-penalty", option_or(args, "--length-penalty", "0"), true);
  Model model = load_model(args);
  model.require_kind("seq2seq", "answer");
  torch::jit::Module& module = model.script("answer");
  const CharVocabulary vocabulary(model);
  const std::vector<char32_t> question = text_argument(args.positional[1], "question");
  const int64_t max_length = model.int_attribute("max_length");
  if (static_cast<int64_t>(question.size()) > max_length) {
    throw std::runtime_error("the question has " + std::to_string(question.size()) +
                             " characters, more than the model's maximum of " + std::to_string(max_length));
  }
  const at::Tensor source = vocabulary.encode(question).unsqueeze(0);
  const at::Tensor lengths = torch::tensor({source.size(1)}, torch::kInt64);
  const int64_t max_answer = model.int_attribute("max_answer_length"), eos = model.int_attribute("eos");
  const int64_t sos = model.int_attribute("sos");
  // An answer reads as Seq2SeqVocabulary.decode reads it: up to <eos>, without <sos> and <pad>.
  const auto answer_text = [&](const at::Tensor& ids) {
    return vocabulary.decode(ids, eos, {sos, model.int_attribute("pad")});
  };
  // Greedy decoding unless an option of beam search is given (--beam defaults to 1 there, as
  // in `dll-ext answer`).
  if (!args.options.count("--beam") && !args.options.count("--nbest") && !args.options.count("--length-penalty")) {
    const at::Tensor answer = doing("answering", [&] {
      c10::InferenceMode guard;
      return module.get_method("greedy")({source, lengths, max_answer}).toTensor();
    });
    std::cout << answer_text(answer[0]) << "\n";
    return;
  }
  const BeamOptions options{beam, max_answer, length_penalty, sos, eos};
  torch::jit::Module decoder = module.attr("model").toModule();
  const std::vector<Hypothesis> hypotheses =
      doing("answering", [&] { return beam_search(decoder, source, lengths, options); });
  if (nbest == 1) {
    std::cout << answer_text(torch::tensor(hypotheses.at(0).tokens, torch::kInt64)) << "\n";
    return;
  }
  for (size_t n = 0; n < hypotheses.size() && static_cast<int64_t>(n) < nbest; ++n) {
    char score[32];
    std::snprintf(score, sizeof score, "%.6f", hypotheses[n].score);
    std::cout << score << "\t" << answer_text(torch::tensor(hypotheses[n].tokens, torch::kInt64)) << "\n";
  }
}

void nback_command(const CommandLine& args) {
  if (args.positional.size() < 2) throw UsageError("missing MODEL and SYMBOL...");
  std::vector<int64_t> symbols;
  for (size_t i = 1; i < args.positional.size(); ++i) symbols.push_back(parse_int("SYMBOL", args.positional[i], 0));
  Model model = load_model(args);
  model.require_kind("nback", "nback");
  const at::Tensor input = torch::tensor(symbols, torch::kInt64).unsqueeze(0);
  const at::Tensor lengths = torch::tensor({input.size(1)}, torch::kInt64);
  const at::Tensor predictions = doing("running the model", [&] {
    c10::InferenceMode guard;
    return model.forward({input, lengths}).toTensor();
  });
  for (int64_t t = 0; t < predictions.size(1); ++t) std::cout << (t ? " " : "") << predictions[0][t].item<int64_t>();
  std::cout << "\n";
}

}  // namespace dll_infer
