"""What a run shows and records: progress bars and epoch lines on the console, TensorBoard
scalars, and history.csv (one row per epoch). Only rank 0 has a monitor that does anything."""
import csv
import io
import sys
from pathlib import Path
from typing import Dict, List, Optional

from dll_ext.training.atomic import save_text
from dll_ext.training.errors import require


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Monitor:
    def __init__(self, out_dir: Path, enabled: bool, resume_step: Optional[int]):
        self.out_dir, self.enabled = out_dir, enabled
        self.tqdm = require("tqdm", "dll-ext train").tqdm
        self.writer = None
        self.bar = None
        if enabled:
            SummaryWriter = require("torch.utils.tensorboard", "TensorBoard logging").SummaryWriter
            # purge_step hides the events a resumed run logged after its checkpoint.
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def print(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        self.epochs = epochs
        # disable=None: bars only on a terminal, so logs of batch jobs stay readable.
        self.bar = self.tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                             leave=False, dynamic_ncols=True, file=sys.stderr,
                             disable=None if self.enabled else True)

    def step(self, step: int, scalars: Optional[Dict[str, float]]) -> None:
        """One step done; `scalars` (loss, lr, ...) on logging steps, else None."""
        self.bar.update(1)
        if scalars is not None:
            self.bar.set_postfix({k: _fmt(v) for k, v in scalars.items()}, refresh=False)
            if self.writer is not None:
                for name, value in scalars.items():
                    self.writer.add_scalar(f"train/{name}", value, step)

    def end_epoch(self, row: Dict[str, float], history: List[Dict[str, float]]) -> None:
        self.bar.close()
        if not self.enabled:
            return
        shown = "  ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in row.items()
                          if k not in ("epoch", "step", "seconds"))
        self.print(f"epoch {row['epoch']}/{self.epochs}  {shown}  ({row['seconds']:.2g} s)")
        for key, value in row.items():
            if key not in ("epoch", "step"):
                self.writer.add_scalar(f"epoch/{key}", value, row["step"])
        self.writer.flush()
        self.write_csv(history)

    def write_csv(self, history: List[Dict[str, float]]) -> None:
        columns = list(dict.fromkeys(key for row in history for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(history)
        save_text(text.getvalue(), self.out_dir / "history.csv")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
