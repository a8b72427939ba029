"""The dll-ext command: `dll-ext info`, `dll-ext bench`, `dll-ext train`."""
import argparse
import json
import sys

from dll_ext.training.pipeline import PIPELINES


def _info(args):
    from dll_ext.info import format_info, info

    data = info()
    print(json.dumps(data, indent=2) if args.json else format_info(data))
    return 0


def _bench(args):
    from dll_ext.benchmark.run import run_benchmarks

    return run_benchmarks(device=args.device, quick=args.quick, op=args.op, out_dir=args.out)


def _train(args):
    from dll_ext.data.errors import DataError
    from dll_ext.training.command import run
    from dll_ext.training.errors import TrainingError

    try:
        return run(args.pipeline, args.options)
    except (TrainingError, DataError) as e:  # the user's options, files or data: one line
        print(f"dll-ext train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dll-ext train: interrupted", file=sys.stderr)
        return 130


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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
