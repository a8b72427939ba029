// Beam search over an exported seq2seq model, the algorithm of dll_ext.models.decoding
// step for step (same candidates, same float64 sums, same order), so that `dll_infer answer
// --beam K` prints what `dll-ext answer --beam K` prints for the same model.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <vector>

namespace dll_infer {

// One answer of the N-best list: its ids without <sos>, ending with <eos> unless the search
// reached max_length first; the sum of their log-probabilities; and the score the list is
// sorted by, log_prob / ((5 + length) / 6) ** alpha (GNMT's length penalty).
struct Hypothesis {
  std::vector<int64_t> tokens;
  double score;
  double log_prob;
};

struct BeamOptions {
  int64_t beam_size;
  int64_t max_length;
  double alpha;  // the length penalty's exponent, >= 0
  int64_t sos;
  int64_t eos;
};

// The N-best list (at most beam_size hypotheses, best score first) for one source row (1, S)
// of `model`, a scripted module with encode, decode_step and reorder_state (the models of
// dll_ext.models.seq2seq).
std::vector<Hypothesis> beam_search(torch::jit::Module& model, const at::Tensor& source, const at::Tensor& lengths,
                                    const BeamOptions& options);

}  // namespace dll_infer
