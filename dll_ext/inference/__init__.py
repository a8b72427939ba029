"""Inference modules of the trained pipeline models, for `dll-ext export` and C++ (dll_infer).

One module per pipeline (listed in dll_ext.export.EXPORTS) defines:

- `load_model(config, options) -> nn.Module`: the trained model rebuilt from a checkpoint's
  task configuration and training options (weights are loaded by the caller);
- `inference_module(model, config) -> nn.Module`: a torch.jit.script-able module holding the
  whole inference procedure, with TorchScript attributes `kind` and what a C++ program needs
  to prepare inputs and read outputs (vocabulary, special ids, image size, class names);
- optionally `export_inputs(config) -> (args, dynamic_shapes)`: example arguments of the
  inference module's forward for torch.export and AOTInductor; without it, no .pt2 is made,
  and `AOTI_UNSUPPORTED`, a string, says why in export.json.

A seq2seq model's inference module (kind "seq2seq", for `dll_infer answer`) has the attributes
vocabulary: List[str] (symbols in id order, specials included), pad, sos, eos: int (special ids;
every other single-character symbol is a character of questions), max_length: int (the longest
question, in characters) and max_answer_length: int, and the method

    @torch.jit.export
    def greedy(self, source: Tensor, source_lengths: Tensor, max_length: int) -> Tensor

taking question ids int64 (B, S) without specials, padded with `pad` after source_lengths
(int64 (B,)), and returning answer ids int64 (B, L), L <= max_length, without sos, each row's
answer ending at its first eos (positions after it are ignored).
"""
