"""The dll-ext command: `dll-ext info`, `dll-ext bench`, `dll-ext train`, `dll-ext generate`,
`dll-ext answer`, `dll-ext export`."""
import argparse
import json
import sys

from dll_ext.training.options import nonnegative_float, nonnegative_int, positive_float, positive_int
from dll_ext.training.pipeline import PIPELINES


def _info(args):
    from dll_ext.info import format_info, info

    data = info()
    print(json.dumps(data, indent=2) if args.json else format_info(data))
    return 0


def _bench(args):
    from dll_ext.benchmark.run import run_benchmarks

    return run_benchmarks(device=args.device, quick=args.quick, op=args.op, out_dir=args.out)


def _one_line_errors(command: str, work) -> int:
    """work()'s exit code; the user's mistakes (options, files, data, checkpoints, prompts) are
    one `dll-ext COMMAND: error: ...` line on stderr and exit code 2, never a traceback."""
    from dll_ext.data.errors import DataError
    from dll_ext.training.errors import TrainingError

    try:
        return work()
    except (TrainingError, DataError) as e:
        print(f"dll-ext {command}: error: {e}", file=sys.stderr)
        return 2


def _inference_device(name: str):
    import torch

    from dll_ext.training.errors import TrainingError

    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda needs a CUDA GPU, but none is usable here")
    return torch.device(name)


def _train(args):
    from dll_ext.training.command import run

    try:
        return _one_line_errors("train", lambda: run(args.pipeline, args.options))
    except KeyboardInterrupt:
        print("dll-ext train: interrupted", file=sys.stderr)
        return 130


def _generate(args):
    from dll_ext.training.pipelines.charlm import generate_text, load_char_lm

    def work():
        model, vocabulary = load_char_lm(args.checkpoint, _inference_device(args.device))
        text = generate_text(model, vocabulary, args.prompt, args.length, args.greedy,
                             args.temperature or 1.0, args.top_k, args.seed)
        print(args.prompt + text)
        return 0

    return _one_line_errors("generate", work)


def _answer(args):
    from dll_ext.training.pipelines.seq2seq import beam_answers, load_math_model

    def work():
        model, vocabulary = load_math_model(args.checkpoint, _inference_device(args.device))
        hypotheses = beam_answers(model, vocabulary, args.question, args.beam, args.length_penalty)
        if args.nbest == 1:
            print(hypotheses[0][0])
        else:
            for text, score in hypotheses[:args.nbest]:
                print(f"{score:.6f}\t{text}")
        return 0

    return _one_line_errors("answer", work)


def _export(args):
    from dll_ext.export import export_run

    def work():
        info = export_run(args.run_dir, args.checkpoint, args.out, aoti=not args.no_aoti)
        out = info["out"]
        print(f"{out}/{info['torchscript']}: TorchScript {info['kind']} ({', '.join(info['methods'])})")
        if info["aoti"]:
            print(f"{out}/{info['aoti']}: AOTInductor package of forward")
        elif not args.no_aoti:
            print(f"note: no .pt2: {info['aoti_error']}", file=sys.stderr)
        print(f"{out}/export.json")
        return 0

    return _one_line_errors("export", work)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dll-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, CUDA build, CPU ISA and the backends of each op")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)
    p = sub.add_parser("bench", help="benchmark dll_ext ops against native PyTorch")
    p.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--op", help="only this op (e.g. conv2d_relu)")
    p.add_argument("--out", default="bench-results", help="folder for the JSON and PNG results")
    p.set_defaults(func=_bench)
    p = sub.add_parser("train", help="train one of the course's pipelines (dll-ext train PIPELINE --help)",
                       description="Train a pipeline; `dll-ext train PIPELINE --help` lists its options.")
    p.add_argument("pipeline", choices=list(PIPELINES))
    p.add_argument("options", nargs=argparse.REMAINDER, help="the pipeline's options")
    p.set_defaults(func=_train)
    p = sub.add_parser("generate", help="continue a prompt with a character LM (dll-ext train charlm)",
                       description="Print the prompt and the characters a character LM writes after it.")
    p.add_argument("--checkpoint", required=True,
                   help="a charlm run folder (its best.pt), or its best.pt, checkpoint.pt or averaged.pt")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--length", type=nonnegative_int, default=300, help="characters to generate")
    p.add_argument("--greedy", action="store_true", help="take the most likely character at every step")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help="sampling: divide the logits by this (default 1; lower is more conservative)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sampling: only from the K most likely")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(func=_generate)
    p = sub.add_parser("answer", help="answer a math question with a math-transformer or math-lstm model",
                       description="Print the model's answer (greedy decoding, or the best of beam search).")
    p.add_argument("question", help="the question, in the dataset's words (e.g. 'What is the tens digit of 1234?')")
    p.add_argument("--checkpoint", required=True,
                   help="a math run folder (its best.pt), or its best.pt, checkpoint.pt or averaged.pt")
    p.add_argument("--beam", type=positive_int, default=1, help="beam size (1: greedy decoding)")
    p.add_argument("--nbest", type=positive_int, default=1,
                   help="print this many answers of the N-best list, each after its score")
    p.add_argument("--length-penalty", type=nonnegative_float, default=0.0,
                   help="beam search: GNMT's alpha (0: raw log-probabilities)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(func=_answer)
    p = sub.add_parser("export", help="a trained model as TorchScript (and AOTInductor) files for C++ (dll_infer)",
                       description="Write RUN_DIR/export/model.pt (torch.jit.script: the whole inference, "
                                   "generation loops included), model.pt2 (torch.export + AOTInductor: the "
                                   "forward pass, where it compiles) and export.json.")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="the --out folder of a dll-ext train run, or one of its checkpoint files")
    p.add_argument("--checkpoint", choices=["best", "checkpoint", "averaged"], default=None,
                   help="which weights: best.pt (default), checkpoint.pt (the last epoch) or averaged.pt")
    p.add_argument("--out", default=None, help="folder for the files (default: RUN_DIR/export)")
    p.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor compile (tens of seconds)")
    p.set_defaults(func=_export)
    args = parser.parse_args(argv)
    if args.func is _generate and args.greedy and (args.temperature is not None or args.top_k is not None):
        p.error("--greedy takes no --temperature or --top-k: those are for sampling")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
