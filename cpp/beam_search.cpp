#include "beam_search.h"

#include <algorithm>
#include <cmath>

namespace dll_infer {
namespace {

double length_penalty_term(int64_t length, double alpha) { return std::pow((5.0 + length) / 6.0, alpha); }

// The live hypotheses after a step: which old beam each extends, its tokens and log-probability.
struct Beams {
  std::vector<int64_t> parents;
  std::vector<std::vector<int64_t>> tokens;
  std::vector<double> log_probs;
};

// The next live beams: the best beam_size extensions by log-probability that are not <eos>;
// the <eos> extensions ranking above the last of them join `finished`.
Beams expand(const Beams& beams, const at::Tensor& step_log_probs, const BeamOptions& options,
             std::vector<Hypothesis>& finished) {
  const at::Tensor totals =
      torch::tensor(beams.log_probs, torch::kFloat64).unsqueeze(1) + step_log_probs.to(torch::kFloat64);
  const int64_t vocab_size = totals.size(1);
  // Each beam has one <eos> extension, so 2 * beam_size candidates hold beam_size others.
  const auto [values, indices] = totals.flatten().topk(std::min<int64_t>(2 * options.beam_size, totals.numel()));
  Beams next;
  for (int64_t k = 0; k < values.size(0); ++k) {
    const double total = values[k].item<double>();
    const int64_t flat = indices[k].item<int64_t>(), parent = flat / vocab_size, token = flat % vocab_size;
    std::vector<int64_t> extended = beams.tokens[parent];
    extended.push_back(token);
    if (token == options.eos) {
      const double score = total / length_penalty_term(static_cast<int64_t>(extended.size()), options.alpha);
      finished.push_back({std::move(extended), score, total});
      continue;
    }
    next.parents.push_back(parent);
    next.tokens.push_back(std::move(extended));
    next.log_probs.push_back(total);
    if (static_cast<int64_t>(next.parents.size()) == options.beam_size) break;
  }
  return next;
}

// Whether no live beam can still enter the N-best list: beam_size hypotheses have finished and
// the best score any live beam can still reach (it ends with length + 1 to max_length tokens,
// its log-probability only falls, the penalty is monotonic in the length) is no higher than
// the worst of those.
bool cannot_improve(const std::vector<Hypothesis>& finished, const Beams& beams, const BeamOptions& options) {
  if (beams.parents.empty()) return true;
  if (static_cast<int64_t>(finished.size()) < options.beam_size) return false;
  std::vector<double> scores;
  for (const Hypothesis& h : finished) scores.push_back(h.score);
  std::sort(scores.begin(), scores.end(), std::greater<double>());
  const double worst_kept = scores[options.beam_size - 1];
  const int64_t length = static_cast<int64_t>(beams.tokens[0].size());
  return std::all_of(beams.log_probs.begin(), beams.log_probs.end(), [&](double log_prob) {
    const double reachable = std::max(log_prob / length_penalty_term(length + 1, options.alpha),
                                      log_prob / length_penalty_term(options.max_length, options.alpha));
    return reachable <= worst_kept;
  });
}

}  // namespace

std::vector<Hypothesis> beam_search(torch::jit::Module& model, const at::Tensor& source, const at::Tensor& lengths,
                                    const BeamOptions& options) {
  c10::InferenceMode guard;
  c10::IValue state = model.get_method("encode")({source, lengths});
  Beams beams{{0}, {{}}, {0.0}};
  std::vector<int64_t> last_tokens{options.sos};
  std::vector<Hypothesis> finished;
  for (int64_t step = 0; step < options.max_length; ++step) {
    const auto output = model.get_method("decode_step")({state, torch::tensor(last_tokens, torch::kInt64)}).toTuple();
    state = output->elements()[1];
    beams = expand(beams, output->elements()[0].toTensor(), options, finished);
    if (step == options.max_length - 1) {
      for (size_t b = 0; b < beams.tokens.size(); ++b) {
        const double score =
            beams.log_probs[b] / length_penalty_term(static_cast<int64_t>(beams.tokens[b].size()), options.alpha);
        finished.push_back({beams.tokens[b], score, beams.log_probs[b]});
      }
      break;
    }
    if (cannot_improve(finished, beams, options)) break;
    state = model.get_method("reorder_state")({state, torch::tensor(beams.parents, torch::kInt64)});
    last_tokens.clear();
    for (const auto& tokens : beams.tokens) last_tokens.push_back(tokens.back());
  }
  // Stable, as Python's sorted: equal scores keep the order they finished in.
  std::stable_sort(finished.begin(), finished.end(),
                   [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
  if (static_cast<int64_t>(finished.size()) > options.beam_size) finished.resize(options.beam_size);
  return finished;
}

}  // namespace dll_infer
