"""`dll-ext train <pipeline> [options]`: the options of a pipeline, and running it."""
import argparse
from typing import List

from dll_ext.training.distributed import DistEnv
from dll_ext.training.options import add_common_arguments
from dll_ext.training.pipeline import Pipeline, get_pipeline
from dll_ext.training.trainer import train


class _HelpFormatter(argparse.HelpFormatter):
    """Every option that takes a value shows its default (this pipeline's, after set_defaults)."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
            return action.help
        return f"{action.help} (default: %(default)s)"


def build_parser(pipeline: Pipeline) -> argparse.ArgumentParser:
    quick = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in pipeline.quick.items())
    parser = argparse.ArgumentParser(
        prog=f"dll-ext train {pipeline.name}", description=pipeline.help,
        formatter_class=_HelpFormatter,
        epilog=f"--quick sets {quick} (options given explicitly still win)." if quick else None)
    add_common_arguments(parser, pipeline.name)
    pipeline.add_arguments(parser.add_argument_group(pipeline.name))
    parser.set_defaults(**pipeline.defaults)
    return parser


def parse_options(pipeline: Pipeline, argv: List[str]) -> argparse.Namespace:
    """Parse `argv`; with --quick, parse again with the pipeline's quick values as defaults, so that
    options given explicitly override them."""
    parser = build_parser(pipeline)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**pipeline.quick)
        args = parser.parse_args(argv)
    return args


def run(name: str, argv: List[str]) -> int:
    """Train pipeline `name` with command-line options `argv`; the exit code. Raises TrainingError
    for the user's mistakes (the CLI prints it as one line)."""
    pipeline = get_pipeline(name)
    args = parse_options(pipeline, argv)
    env = DistEnv.from_environment(args.device)
    try:
        code = train(pipeline, args, env)
        # No rank exits before all are done: when one exits with an error code (a stop signal's),
        # torchrun terminates the others, which must have written and flushed everything by then.
        env.barrier()
        return code
    finally:
        env.close()
