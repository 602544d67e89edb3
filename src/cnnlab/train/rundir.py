"""The run folder a training run writes (its layout: :mod:`cnnlab.runs`): config.json, metrics.jsonl (kept up
to the checkpoint's epoch when a run resumes), last.pt and best.pt written atomically, curves.png and
summary.md. Under data parallelism only rank 0 writes (``main``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cnnlab.fileio import atomic_savefig, atomic_write_json, atomic_write_text
from cnnlab.runs import RunInfo, save_checkpoint


@dataclass
class RunFolder:
    path: Path
    main: bool = True  # this process writes (rank 0)

    @classmethod
    def choose(cls, out: str | None, resume: str | None, model: str, data: str, main: bool = True) -> RunFolder:
        """``out``; else the folder of the run being resumed; else runs/MODEL-DATA-TIME."""
        if out:
            path = Path(out)
        elif resume:
            path = Path(resume).parent if Path(resume).is_file() else Path(resume)
        else:
            tag = data.replace(":", "_").replace("/", "_")
            path = Path("runs") / f"{model}-{tag}-{datetime.now():%Y%m%d-%H%M%S}"
        if main:
            path.mkdir(parents=True, exist_ok=True)
        return cls(path, main)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def start(self, config: dict, epoch: int) -> None:
        """Write config.json; keep only the metrics of the epochs the run resumes after."""
        if self.main:
            atomic_write_json(self.path / "config.json", config)
            truncate_metrics(self.metrics, epoch)

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, info: RunInfo, model_state: dict, training: dict, best: bool) -> None:
        if self.main:
            save_checkpoint(self.last, info, model_state, training)
            if best:
                save_checkpoint(self.path / "best.pt", info, model_state, training)

    def curves(self, history: list[dict]) -> None:
        if self.main:
            write_curves(history, self.path / "curves.png")

    def summary(self, config: dict, history: list[dict], best: float, seconds: float) -> None:
        if self.main:
            write_summary(self.path, config, history, best, seconds)


def truncate_metrics(path: Path, epoch: int) -> None:
    """Keep only the lines up to ``epoch`` (a resumed run writes the rest again); drop a torn last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch", 0) <= epoch:  # epoch lines and the step lines of completed epochs
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def write_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["eval_loss"] for h in history], "o-", label=history[-1]["eval_split"])
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(epochs, [h["train_top1"] for h in history], "o-", label="train top-1")
    b.plot(epochs, [h["eval_top1"] for h in history], "o-", label=f"{history[-1]['eval_split']} top-1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy %"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def write_summary(run_dir: Path, cfg: dict, history: list[dict], best: float, seconds: float) -> None:
    last = history[-1] if history else {}
    ips = [h["images_per_s"] for h in history]
    lines = [
        f"# {cfg['model']} on {cfg['data']}", "",
        f"- recipe: {cfg['recipe']} ({cfg['recipe_settings']['source']})",
        f"- {len(history)} epochs, batch {cfg['recipe_settings']['batch_size']}, "
        f"{cfg['recipe_settings']['optimizer']} lr {cfg['recipe_settings']['lr']}, {cfg['precision']}"
        f"{' channels-last' if cfg['channels_last'] else ''}, seed {cfg['seed']}",
        f"- final {last.get('eval_split', 'eval')} top-1 {last.get('eval_top1', float('nan')):.2f}%, "
        f"top-5 {last.get('eval_top5', float('nan')):.2f}%; best top-1 {best:.2f}%",
        f"- training speed: median {sorted(ips)[len(ips) // 2] if ips else 0:,.0f} images/s; "
        f"wall time {seconds:.1f} s (this process)",
        f"- hardware: {cfg['hardware']['device']}, {cfg['hardware']['cpu_count']} CPUs, "
        f"torch {cfg['versions']['torch']}",
        "", "| epoch | train loss | train top-1 | eval loss | eval top-1 | eval top-5 | img/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_top1']:.2f} | {h['eval_loss']:.4f} | "
                     f"{h['eval_top1']:.2f} | {h['eval_top5']:.2f} | {h['images_per_s']:,.0f} |")
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")
