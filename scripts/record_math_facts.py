"""Records facts of DeepMind's released Mathematics generator into tests/data/math_facts.json, the
reference tests/test_math_fidelity.py holds dll_ext.data.math's generator to.

Run it in a separate virtual environment, never in the project's: the released package needs
sympy 1.5.1, which conflicts with torch.

    python -m venv /tmp/mathematics-venv
    /tmp/mathematics-venv/bin/pip install mathematics-dataset==1.0.1 sympy==1.5.1
    /tmp/mathematics-venv/bin/python scripts/record_math_facts.py [--samples 4000] [--seed 0]

It samples each module in each released split (train-easy, train-medium, train-hard, interpolate,
extrapolate) as the release did: difficulty by entropy range, and questions over 160 characters
or answers over 30 dropped. Then it summarizes them with tests/math_facts.py.
"""
import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
from mathematics_dataset import generate, generate_settings
from mathematics_dataset.modules import modules

ROOT = Path(__file__).resolve().parent.parent
# Nearly every sort_more question (9 or 10 numbers of entropy 12) has an answer over 30 characters
# and is dropped: one kept pair costs about 2 s, so this split gets fewer pairs.
SLOW_MODULE_SAMPLES = {"comparison__sort_more": 400}


def _facts_module():
    spec = importlib.util.spec_from_file_location("math_facts", ROOT / "tests" / "math_facts.py")
    facts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(facts)
    return facts


def _released_modules():
    """{split: {'numbers__place_value': callable, ...}} for every released split."""
    trees = {f"train-{name}": modules.train(generate._make_entropy_fn(level, 3))
             for level, name in enumerate(("easy", "medium", "hard"))}
    trees["interpolate"] = modules.test()
    trees["extrapolate"] = modules.test_extra()
    return {split: {f"{area}__{name}": fn for area, fns in tree.items() for name, fn in fns.items()}
            for split, tree in trees.items()}


def _sample(module, count):
    pairs = []
    while len(pairs) < count:
        problem = module()
        question, answer = str(problem.question), str(problem.answer)
        if (len(question) <= generate_settings.MAX_QUESTION_LENGTH
                and len(answer) <= generate_settings.MAX_ANSWER_LENGTH):
            pairs.append((question, answer))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000, help="pairs per module and split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "math_facts.json")
    args = parser.parse_args(argv)
    facts = _facts_module()
    random.seed(args.seed)
    np.random.seed(args.seed)
    released = _released_modules()
    record = {"generator": "mathematics-dataset 1.0.1 with sympy 1.5.1", "samples": args.samples,
              "seed": args.seed, "modules": {}}
    for module in facts.MODULES:
        for split in facts.SPLITS:
            name = facts.EXTRAPOLATE_MODULES.get(module) if split == "extrapolate" else module
            if name is None:
                continue
            count = min(args.samples, SLOW_MODULE_SAMPLES.get(name, args.samples))
            summary = facts.summarize(_sample(released[split][name], count))
            summary["released_module"] = name
            record["modules"].setdefault(module, {})[split] = summary
            print(f"{module} {split}: {name}, {len(summary['features']['template'])} templates", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
