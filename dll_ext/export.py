"""`dll-ext export RUN_DIR`: a trained pipeline model as files a Python-free program runs.

Into RUN_DIR/export (or --out): model.pt, a TorchScript module made with torch.jit.script
holding the whole inference procedure (normalisation, greedy generation loops) and, as
TorchScript attributes, what a program needs to prepare inputs and read outputs; model.pt2,
an AOTInductor package of its forward pass, where torch.export and AOTInductor can make one;
export.json, what was written and why a .pt2 was not.

Both files call the dll_ext ops by name: the program running them loads the op library
(Python: import dll_ext; C++: libdll_ext_ops.so, as dll_infer does).
"""
import contextlib
import importlib
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from dll_ext.training.atomic import atomic_write, save_json
from dll_ext.training.checkpoint import (AVERAGED, BEST, CHECKPOINT, build_from_checkpoint, load_checkpoint,
                                         load_weights)
from dll_ext.training.errors import TrainingError

# pipeline name -> module defining load_model, inference_module and optionally export_inputs
# (see dll_ext.inference); a new pipeline adds its module and one line here.
EXPORTS: Dict[str, str] = {
    "classify": "dll_ext.inference.classifier",
    "nback": "dll_ext.inference.nback",
    "charlm": "dll_ext.inference.char_lm",
    "math-transformer": "dll_ext.inference.seq2seq",
    "math-lstm": "dll_ext.inference.seq2seq",
}
CHECKPOINTS = {"best": BEST, "checkpoint": CHECKPOINT, "averaged": AVERAGED}
TORCHSCRIPT_FILE = "model.pt"
AOTI_FILE = "model.pt2"
INFO_FILE = "export.json"


def exporter(pipeline: str) -> ModuleType:
    if pipeline not in EXPORTS:
        raise TrainingError(f"models of the {pipeline!r} pipeline cannot be exported (exportable: "
                            f"{', '.join(EXPORTS)})")
    return importlib.import_module(EXPORTS[pipeline])


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir} is not a run folder (the --out of dll-ext train)")
    path = run_dir / CHECKPOINTS[checkpoint]
    if not path.is_file():
        hint = " (averaged.pt is written by runs trained with --average)" if checkpoint == "averaged" else ""
        raise TrainingError(f"no checkpoint at {path}{hint}")
    return path


def load_inference_module(run_dir, checkpoint: str = "best"):
    """(pipeline name, its exporter module, the eager inference module in evaluation mode, the
    task configuration) of a run's checkpoint, read with weights_only."""
    path = _checkpoint_path(Path(run_dir), checkpoint)
    saved = load_checkpoint(path)
    pipeline = saved.get("pipeline")
    spec = exporter(pipeline)
    config, options, state = saved.get("task_config"), saved.get("options"), saved.get("model", {})
    model = build_from_checkpoint(lambda: spec.load_model(config, options), state, path, f"{pipeline} model")
    load_weights(model, state, path)
    return pipeline, spec, spec.inference_module(model.eval(), config).eval(), config


@contextlib.contextmanager
def quiet_torchscript():
    """torch.jit.script and torch.jit.save warn on every call that TorchScript is deprecated; it
    is still the path that carries Python control flow (the generation loops) to C++, and the
    README says so once instead of each export repeating it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated.*")
        # torch.nn's TransformerEncoder lists its optional `norm` submodule as a constant, which
        # TorchScript reports for every Transformer it scripts.
        warnings.filterwarnings("ignore", category=UserWarning, message="'norm' was found in ScriptModule constants")
        yield


def _metadata(module: nn.Module) -> Dict[str, str]:
    """The inference module's annotated attributes as AOTInductor package metadata (strings):
    a list attribute NAME as NAME.count and NAME.0, NAME.1, ..."""
    metadata = {}
    for name in type(module).__annotations__:
        value = getattr(module, name)
        if isinstance(value, list):
            metadata[f"{name}.count"] = str(len(value))
            metadata.update({f"{name}.{i}": str(item) for i, item in enumerate(value)})
        else:
            metadata[name] = str(value)
    return metadata


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def compile_aoti(module: nn.Module, spec: ModuleType, config: Dict[str, Any], path: Path) -> Optional[str]:
    """Write an AOTInductor package of module.forward to `path`; None, or why it could not."""
    if not hasattr(spec, "export_inputs"):
        return getattr(spec, "AOTI_UNSUPPORTED", "this model has no example inputs for torch.export")
    args, dynamic_shapes = spec.export_inputs(config)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # dll_ext.nn.LSTM's _flat_weights list (nn.RNNBase's) is rebuilt in forward; export
            # warns about it, and the weights are traced as the parameters they are.
            warnings.filterwarnings("ignore", message=".*were assigned during export.*")
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(path),
                inductor_configs={"aot_inductor.metadata": _metadata(module)})
    except Exception as e:  # any failure of the compiler stack only costs the .pt2
        path.unlink(missing_ok=True)
        return _first_line(e)
    return None


def _run_and_checkpoint(path: Path, checkpoint: Optional[str]):
    """(run folder, checkpoint name) of export's RUN_DIR, which may name one of the run's
    checkpoint files instead; the name defaults to "best"."""
    if not path.is_file():
        return path, checkpoint or "best"
    named = {file: name for name, file in CHECKPOINTS.items()}.get(path.name)
    if named is None:
        raise TrainingError(f"{path} is neither a run folder nor one of its checkpoints "
                            f"({', '.join(CHECKPOINTS.values())})")
    if checkpoint not in (None, named):
        raise TrainingError(f"{path} is the {named!r} checkpoint, but --checkpoint asks for {checkpoint!r}")
    return path.parent, named


def export_run(run_dir, checkpoint: Optional[str] = None, out=None, aoti: bool = True) -> Dict[str, Any]:
    """Export a run's model (see the module's docstring); the contents of export.json. run_dir
    is the run folder or one of its checkpoint files; checkpoint names one (default "best")."""
    run_dir, checkpoint = _run_and_checkpoint(Path(run_dir), checkpoint)
    pipeline, spec, module, config = load_inference_module(run_dir, checkpoint)
    out = Path(run_dir) / "export" if out is None else Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"cannot create --out {out}: {e}") from e
    # A .pt2 of an earlier export would no longer match the new model.pt.
    (out / AOTI_FILE).unlink(missing_ok=True)
    with quiet_torchscript():
        scripted = torch.jit.script(module)
        atomic_write(out / TORCHSCRIPT_FILE, lambda f: torch.jit.save(scripted, f))
    info: Dict[str, Any] = {
        "pipeline": pipeline, "kind": module.kind, "checkpoint": str(Path(run_dir) / CHECKPOINTS[checkpoint]),
        "torchscript": TORCHSCRIPT_FILE, "methods": _methods(scripted), "aoti": None,
        "torch_version": torch.__version__,
    }
    if hasattr(module, "vocabulary"):
        info["vocabulary_size"] = len(module.vocabulary)
    if not aoti:
        info["aoti_error"] = "skipped (--no-aoti)"
    else:
        error = compile_aoti(module, spec, config, out / AOTI_FILE)
        info["aoti" if error is None else "aoti_error"] = AOTI_FILE if error is None else error
    save_json(info, out / INFO_FILE)
    return {**info, "out": str(out)}


def _methods(scripted: torch.jit.ScriptModule) -> list:
    """The methods a caller can run: forward and the @torch.jit.export ones."""
    return sorted(name for name in scripted._c._method_names() if not name.startswith("_"))
