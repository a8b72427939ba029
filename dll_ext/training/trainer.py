"""The training loop every pipeline shares.

Files in --out: checkpoint.pt (everything needed to continue: weights, optimiser, schedule, every
rank's RNG states, progress and history), best.pt (the weights of the best validation epoch),
epochs/epoch-NNNN.pt (with --average K: the last K epochs' weights), averaged.pt, history.csv,
tensorboard/, curves.png, metrics.json, and the pipeline's own plots.

A run interrupted at any step and resumed ends with the same weights as an uninterrupted run:
the batch order is a function of (seed, epoch), a resumed epoch skips the batches already done,
and the checkpoint restores every generator, the optimiser, the schedule and the partial sums
of the epoch's metrics.
"""
import dataclasses
import shutil
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from dll_ext.training.atomic import save_json, save_torch
from dll_ext.training.checkpoint import (AVERAGED, BEST, CHECKPOINT, FORMAT, average_state_dicts, load_checkpoint,
                                         load_weights)
from dll_ext.training.data import batches, eval_loader, steps_per_epoch, train_loader
from dll_ext.training.distributed import DistEnv
from dll_ext.training.errors import TrainingError
from dll_ext.training.metrics import MetricSums
from dll_ext.training.monitor import Monitor
from dll_ext.training.optim import Schedule, make_optimizer
from dll_ext.training.options import RUNTIME_OPTIONS
from dll_ext.training.pipeline import Pipeline, Task
from dll_ext.training.plots import plot_curves
from dll_ext.training.seeding import derive_seed, rng_state, seed_everything, set_rng_state
from dll_ext.training.signals import StopSignals, exit_code

EPOCHS_DIR = "epochs"


@dataclasses.dataclass
class Progress:
    epoch: int = 0            # epochs completed
    batch: int = 0            # batches of the current epoch done
    step: int = 0             # optimiser steps in all
    history: List[Dict[str, float]] = dataclasses.field(default_factory=list)  # one row per epoch
    best_epoch: int = 0       # 0 until the first validation
    best_value: Optional[float] = None
    bad_epochs: int = 0       # epochs since the best one
    early_stopped: bool = False
    step_seconds: float = 0.0  # rank 0's time in training steps, and how many steps it timed
    timed_steps: int = 0


def _prefixed(row: Dict[str, float], prefix: str) -> Dict[str, float]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def _metrics_text(metrics: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


class Trainer:
    def __init__(self, pipeline: Pipeline, args, env: DistEnv, saved: Optional[dict]):
        self.pipeline, self.args, self.env = pipeline, args, env
        self.out = Path(args.out)
        seed_everything(args.seed)
        self.task: Task = pipeline.build(args)
        self._check_task(saved)
        self.model = self.task.model.to(env.device)
        self.train_model = self.model
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.steps_per_epoch = steps_per_epoch(self.task.train_set, args.batch_size, env)
        self.optimizer = make_optimizer(args, self.model.parameters())
        self.schedule = Schedule(args, self.optimizer, args.epochs * self.steps_per_epoch,
                                 self.task.higher_is_better)
        if saved is None:
            self.progress = Progress()
            self.partial = MetricSums(env.device)
            # Weights were initialised identically on every rank; dropout should not be.
            seed_everything(derive_seed(args.seed, env.rank))
        else:
            self._restore(saved)
        self.steps_this_process = 0
        self.epoch_start = time.perf_counter()
        self.monitor = Monitor(self.out, env.is_main, None if saved is None else self.progress.step)

    def _check_task(self, saved: Optional[dict]) -> None:
        task, env = self.task, self.env
        splits = (("training", task.train_set), ("validation", task.val_set), ("test", task.test_set))
        for name, dataset in splits:
            if len(dataset) < env.world_size:
                raise TrainingError(f"the {name} set has {len(dataset)} examples, fewer than the "
                                    f"{env.world_size} processes that share it")
        if saved is not None and saved.get("task_config") != task.config:
            raise TrainingError(f"{self.out / CHECKPOINT} was trained on other data: the task's "
                                "configuration (e.g. its vocabulary) differs from the checkpoint's")

    def _restore(self, saved: dict) -> None:
        path = self.out / CHECKPOINT
        load_weights(self.model, saved.get("model", {}), path)
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.load_state_dict(saved["scheduler"])
            self.progress = Progress(**saved["progress"])
            ranks = saved["ranks"]
            # A run resumed on another number of processes continues, but not bit for bit.
            mine = ranks[self.env.rank % len(ranks)]
            set_rng_state(mine["rng"])
            self.partial = MetricSums(self.env.device, mine["partial"])
            self.task.load_state_dict(mine.get("task", {}))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise TrainingError(f"{path} is damaged or incomplete ({type(e).__name__}: {e})") from e

    # --- files ------------------------------------------------------------------------------

    def _header(self, kind: str) -> dict:
        return {"format": FORMAT, "pipeline": self.pipeline.name, "kind": kind,
                "options": vars(self.args), "task_config": self.task.config}

    def _save_weights(self, path: Path, **extra) -> None:
        if self.env.is_main:
            path.parent.mkdir(exist_ok=True)
            save_torch({**self._header("weights"), "model": self.model.state_dict(), **extra}, path)

    def save(self) -> None:
        """checkpoint.pt, from rank 0, with every rank's generators and partial metric sums. Every
        rank waits until it is written, and so are best.pt and the epoch weights, written before
        it: the other ranks read them at the end."""
        ranks = self.env.gather({"rng": rng_state(), "partial": self.partial.state(),
                                 "task": self.task.state_dict()})
        if self.env.is_main:
            save_torch({**self._header("run"), "model": self.model.state_dict(),
                        "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
                        "progress": dataclasses.asdict(self.progress), "ranks": ranks,
                        "world_size": self.env.world_size}, self.out / CHECKPOINT)
        self.env.barrier()

    def _epoch_path(self, epoch: int) -> Path:
        return self.out / EPOCHS_DIR / f"epoch-{epoch:04d}.pt"

    # --- training ---------------------------------------------------------------------------

    def _describe(self) -> str:
        task, env = self.task, self.env
        return (f"{self.pipeline.name}: {len(task.train_set)} train / {len(task.val_set)} validation / "
                f"{len(task.test_set)} test examples, {sum(t.numel() for t in self.model.parameters())} "
                f"parameters ({'torch.nn' if self.args.native else 'dll_ext'} layers), "
                f"{self.steps_per_epoch} steps per epoch, {env.device}, "
                f"{env.world_size} process{'es' if env.distributed else ''}")

    def run(self) -> int:
        """Train to the end (0) or until a stop signal (128 + its number)."""
        p = self.progress
        with StopSignals(self.args.stop_after_steps) as signals:
            # Printed once the handlers are in place: a signal from now on stops the run cleanly.
            self.monitor.print(self._describe())
            if p.step:
                self.monitor.print(f"resuming at epoch {p.epoch + 1}, batch {p.batch}, step {p.step}")
            while p.epoch < self.args.epochs and not p.early_stopped:
                signum = self._train_epoch(signals)
                if signum:
                    self.save()
                    self.monitor.print(
                        f"stopped by {signal.Signals(signum).name} after step {p.step} (epoch {p.epoch + 1}, "
                        f"batch {p.batch}/{self.steps_per_epoch}); saved {self.out / CHECKPOINT}, "
                        "continue with --resume")
                    self.monitor.close()
                    return exit_code(signum)
                self._end_epoch()
        self._finish()
        return 0

    def _train_epoch(self, signals: StopSignals) -> int:
        args, p, task, env = self.args, self.progress, self.task, self.env
        loader = train_loader(task.train_set, args.batch_size, env, args.seed, p.epoch, p.batch,
                              args.workers, task.collate_fn, task.shuffle)
        self.train_model.train()
        self.monitor.start_epoch(p.epoch, args.epochs, self.steps_per_epoch, p.batch)
        self.epoch_start = time.perf_counter()
        for batch in batches(loader):
            loss, grad_norm = self._step(batch)
            p.step += 1
            p.batch += 1
            scalars = None
            if p.step % args.log_every == 0:
                scalars = {"loss": loss.item(), "lr": self.schedule.lr}
                if grad_norm is not None:
                    scalars["grad_norm"] = grad_norm.item()
            self.monitor.step(p.step, scalars)
            if args.save_every and p.step % args.save_every == 0:
                self.save()
            signum = env.max_int(signals.requested(p.step))
            if signum:
                return signum
        return 0

    def _step(self, batch):
        """One optimiser step; returns the batch's loss and (with clipping) the gradient norm."""
        start = time.perf_counter()
        task, args = self.task, self.args
        batch = task.to_device(batch, self.env.device)
        self.optimizer.zero_grad(set_to_none=True)
        out = task.loss(self.train_model, batch)
        out.loss.backward()
        grad_norm = None
        if args.clip_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip_norm)
        self.optimizer.step()
        self.schedule.after_step()
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        self.steps_this_process += 1
        if self.steps_this_process > 1:  # the first step of a process warms caches up
            self.progress.step_seconds += time.perf_counter() - start
            self.progress.timed_steps += 1
        self.partial.add(out)
        return out.loss.detach(), grad_norm

    def evaluate(self, dataset) -> Dict[str, float]:
        task, env = self.task, self.env
        self.model.eval()
        sums = MetricSums(env.device)
        with torch.no_grad():
            loader = eval_loader(dataset, self.args.batch_size, env, self.args.workers, task.collate_fn)
            for batch in batches(loader):
                sums.add(task.loss(self.model, task.to_device(batch, env.device)))
        return task.summarize(sums.means(env))

    def _end_epoch(self) -> None:
        args, p, task = self.args, self.progress, self.task
        train = task.summarize(self.partial.means(self.env))
        val = self.evaluate(task.val_set)
        lr = self.schedule.lr
        self.schedule.after_validation(val[task.monitor])
        p.epoch += 1
        p.batch = 0
        row = {"epoch": p.epoch, "step": p.step, "lr": lr, **{f"train_{k}": v for k, v in train.items()},
               **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - self.epoch_start}
        p.history.append(row)
        value = val[task.monitor]
        if p.best_value is None or (value > p.best_value if task.higher_is_better else value < p.best_value):
            p.best_epoch, p.best_value, p.bad_epochs = p.epoch, value, 0
            self._save_weights(self.out / BEST, epoch=p.epoch)
        else:
            p.bad_epochs += 1
            p.early_stopped = bool(args.patience) and p.bad_epochs >= args.patience
        if args.average:
            self._save_weights(self._epoch_path(p.epoch), epoch=p.epoch)
            if self.env.is_main:
                self._epoch_path(p.epoch - args.average).unlink(missing_ok=True)
        self.partial = MetricSums(self.env.device)
        self.save()
        self.monitor.end_epoch(row, p.history)
        if p.early_stopped:
            self.monitor.print(f"early stop: no validation progress in {args.patience} epochs "
                               f"(best: epoch {p.best_epoch})")

    # --- the end ----------------------------------------------------------------------------

    def _finish(self) -> None:
        """Test the best validation weights, write the pipeline's artefacts, evaluate the averaged
        weights (--average), plot the curves and write metrics.json."""
        args, p, env, out = self.args, self.progress, self.env, self.out
        best = load_checkpoint(out / BEST, self.pipeline.name)
        if best.get("epoch") != p.best_epoch:
            raise TrainingError(f"{out / BEST} is not this run's best epoch ({p.best_epoch})")
        load_weights(self.model, best["model"], out / BEST)
        last = p.history[-1]
        results = {
            "pipeline": self.pipeline.name, "layers": "torch.nn" if args.native else "dll_ext",
            "device": str(env.device), "world_size": env.world_size, "epochs": p.epoch, "steps": p.step,
            "early_stopped": p.early_stopped,
            "train": _prefixed(last, "train_"), "val": _prefixed(last, "val_"),
            "best_epoch": p.best_epoch, "best_val": _prefixed(p.history[p.best_epoch - 1], "val_"),
            "test": self.evaluate(self.task.test_set),
            "step_time_ms": 1000 * p.step_seconds / p.timed_steps if p.timed_steps else None,
            "timed_steps": p.timed_steps,
        }
        if env.is_main:
            results.update(self.task.artefacts(self.model, out))
        if args.average:
            results["averaged"] = self._average()
        if env.is_main:
            plot_curves(p.history, out / "curves.png")
            results["options"] = vars(args)
            save_json(results, out / "metrics.json")
            self._print_summary(results)
        self.monitor.close()

    def _average(self) -> dict:
        """Average the last --average epochs' weights; their validation and test metrics."""
        epochs = list(range(max(1, self.progress.epoch - self.args.average + 1), self.progress.epoch + 1))
        states = [load_checkpoint(self._epoch_path(e), self.pipeline.name)["model"] for e in epochs]
        load_weights(self.model, average_state_dicts(states), self._epoch_path(epochs[-1]))
        self._save_weights(self.out / AVERAGED, epochs=epochs)
        return {"epochs": epochs, "val": self.evaluate(self.task.val_set),
                "test": self.evaluate(self.task.test_set)}

    def _print_summary(self, results: dict) -> None:
        print(f"test: {_metrics_text(results['test'])} (weights of epoch {results['best_epoch']}, "
              "the best on validation)")
        if "averaged" in results:
            avg = results["averaged"]
            print(f"averaged weights of epochs {avg['epochs'][0]}-{avg['epochs'][-1]}: validation "
                  f"{_metrics_text(avg['val'])}; test {_metrics_text(avg['test'])}")
        if results["step_time_ms"] is not None:
            print(f"mean training step: {results['step_time_ms']:.3g} ms over {results['timed_steps']} "
                  f"steps ({results['device']}, {results['layers']} layers)")
        print(f"wrote {self.out / 'metrics.json'}, {self.out / 'curves.png'}, TensorBoard logs in "
              f"{self.out / 'tensorboard'}")


def _open_run(pipeline: Pipeline, args, env: DistEnv) -> Optional[dict]:
    """Check --out against --resume/--overwrite; the checkpoint to resume from, or None. A new run
    never replaces another's checkpoint unless --overwrite says so."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file, not a folder")
    path = out / CHECKPOINT
    if args.resume:
        if not path.exists():
            raise TrainingError(f"--resume: there is no checkpoint to resume in {out}")
        saved = load_checkpoint(path, pipeline.name)
        _restore_options(args, saved.get("options", {}), env)
        return saved
    if path.exists() and not args.overwrite:
        raise TrainingError(f"{out} already holds a run ({path}); pass --resume to continue it or "
                            "--overwrite to start a new one there")
    if env.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainingError(f"cannot create --out {out}: {e}") from e
        # The old run's logs and epoch weights would mix with the new run's.
        for stale in ("tensorboard", EPOCHS_DIR):
            shutil.rmtree(out / stale, ignore_errors=True)
    return None


def _restore_options(args, stored: dict, env: DistEnv) -> None:
    """A resumed run keeps the options it began with; say which given ones are ignored."""
    ignored = []
    for key, value in stored.items():
        if key in RUNTIME_OPTIONS:
            continue
        if hasattr(args, key) and getattr(args, key) != value:
            ignored.append(f"{key}={getattr(args, key)!r} (the run's: {value!r})")
        setattr(args, key, value)
    if ignored and env.is_main:
        print(f"note: --resume continues with the run's options; ignoring {', '.join(ignored)}")


def train(pipeline: Pipeline, args, env: DistEnv) -> int:
    """Run `pipeline` with parsed options in this process (one rank of a distributed run or the
    only process); the exit code: 0 when finished, 128 + signal number when stopped by one."""
    saved = _open_run(pipeline, args, env)
    if args.average and args.epochs < args.average:
        raise TrainingError(f"--average {args.average} needs at least that many --epochs ({args.epochs})")
    env.barrier()  # rank 0 has created --out
    return Trainer(pipeline, args, env, saved).run()
