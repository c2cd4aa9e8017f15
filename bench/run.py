"""Speed and memory of deepcloak, as ratios against baselines measured in the same run.

Every figure compares deepcloak with a baseline timed in the same run, interleaved (A, B, A, B,
...) and best of several, with the thread count fixed and printed, so that other load on the
machine touches both sides alike. The run writes its figures into ``docs/performance.md`` (one
section per device, each with its threads, torch version and date).

1. fit vs its floor: one FGSM forward+backward plus one forward over the same samples, on
   preloaded tensors; the fit goes through the data path a user gets (a DataLoader over an
   in-memory data set).
2. gray-box sweep (100 ratios) vs its floor: crafting plus two forwards (clean and adversarial).
3. fit peak memory at 60k vs 10k samples (each in a fresh process).
4. inference with a folded mask (and with a mask layer) vs the plain model.
5. native PGD vs ART's PGD and vs a hand-written PGD loop.
6. the whole evaluation (``evaluate_cloak``) vs the sum of its own attack passes.

Run: ``make bench``, or ``python bench/run.py [--device cuda] [--threads 1] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from deepcloak import FGSM, PGD, ArtPGD, fit, graybox_sweep
from deepcloak.cloak.mask import find_masks
from deepcloak.data.memory import ImageDataset
from deepcloak.environment import environment
from deepcloak.models.zoo import create_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
SHAPE = (1, 28, 28)  # Fashion-MNIST
BATCH = 256
EPS = 8 / 255


@dataclass(frozen=True)
class Figure:
    """One measured ratio, its target, and the absolute times behind it."""

    name: str
    ratio: float
    target: str  # "<= 1.15" or ">= 1.2"; "-" for a control figure that has none
    detail: str

    @property
    def met(self) -> bool | None:
        if self.target == "-":
            return None
        op, bound = self.target.split()
        return self.ratio <= float(bound) if op == "<=" else self.ratio >= float(bound)

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "no", None: "-"}[self.met]


class Timer:
    """Interleaved best-of-``repeats`` times, synchronised with the device.

    On CPU the clock is the process's CPU time: with one thread it is the wall time the work
    takes on an idle machine, but other jobs on a shared machine do not inflate it. On CUDA it
    is the wall time, as the work runs on the device.
    """

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats = device, repeats
        self.clock = time.perf_counter if device.type == "cuda" else time.process_time

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def best(self, runs: dict[str, Callable[[], object]]) -> dict[str, float]:
        """Run each callable once to warm up, then ``repeats`` rounds in turn; keep the fastest.

        Each round starts with the next callable (A B C, B C A, ...), so that none always runs
        right after the same other one.
        """
        best = dict.fromkeys(runs, float("inf"))
        names = list(runs)
        for round_ in range(self.repeats + 1):
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:
                run = runs[name]
                self.sync()
                start = self.clock()
                run()
                self.sync()
                if round_:  # round 0 warms up caches and lazy initialisation
                    best[name] = min(best[name], self.clock() - start)
        return best


def synthetic_set(n: int, seed: int = 0) -> ImageDataset:
    """An in-memory data set of Fashion-MNIST's shape (uint8 images, 10 classes)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageDataset(images, labels, name="synthetic", classes=[str(i) for i in range(10)])


def bench_model(device: torch.device, name: str = "resnet", width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10, input_size=SHAPE[1], width=width)
    return model.to(device).eval()


def preloaded(data: ImageDataset, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data.tensors()
    return list(zip(x.to(device).split(BATCH), y.to(device).split(BATCH), strict=True))


def fgsm_floor(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The least any FGSM fit can do: one forward+backward, then one forward of the result."""
    for x, y in batches:
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        with torch.no_grad():
            model((x + EPS * grad.sign()).clamp(0, 1))


def fit_figure(timer: Timer, model: nn.Module, n: int) -> Figure:
    data = synthetic_set(n)
    batches = preloaded(data, timer.device)
    loader = DataLoader(data, batch_size=BATCH)
    t = timer.best(
        {
            "fit": lambda: fit(model, loader, attack=FGSM(eps=EPS)),
            "floor": lambda: fgsm_floor(model, batches),
        }
    )
    return Figure(
        f"fit (FGSM, {n} samples) vs floor", t["fit"] / t["floor"], "<= 1.15",
        f"fit {t['fit']:.2f} s, floor {t['floor']:.2f} s",
    )  # fmt: skip


def sweep_figure(timer: Timer, model: nn.Module, n: int) -> Figure:
    data = synthetic_set(n, seed=1)
    batches = preloaded(data, timer.device)
    loader = DataLoader(data, batch_size=BATCH)
    cloak = fit(model, DataLoader(synthetic_set(BATCH, seed=2), batch_size=BATCH))

    def floor() -> None:  # crafting, then a forward of the clean and of the adversarial batch
        with torch.no_grad():
            for x, _ in batches:
                model(x)
        fgsm_floor(model, batches)

    sweep = lambda: graybox_sweep(model, cloak, loader, attack=FGSM(eps=EPS))  # noqa: E731
    t = timer.best({"sweep": sweep, "floor": floor})
    return Figure(
        f"gray-box sweep (100 ratios, 5 random masks each, {n} samples) vs floor",
        t["sweep"] / t["floor"], "<= 1.5",
        f"sweep {t['sweep']:.2f} s, floor {t['floor']:.2f} s",
    )  # fmt: skip


def memory_child(n: int, device: torch.device) -> int:
    """In a fresh process: the fit's peak memory over what data and model already hold."""
    model = bench_model(device, "cnn", width=4)
    loader = DataLoader(synthetic_set(n), batch_size=BATCH)
    fit(model, DataLoader(synthetic_set(BATCH), batch_size=BATCH))  # lazy initialisation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fit(model, loader)
        return torch.cuda.max_memory_allocated(device) - before
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to now
    fit(model, loader)
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}: the memory figure needs Linux")
    return int(match[1])


def memory_figure(args: argparse.Namespace) -> Figure:
    peaks = {}
    for n in (10_000, 60_000):
        command = [sys.executable, __file__, "--memory-child", str(n), "--device", args.device,
                   "--threads", str(args.threads)]  # fmt: skip
        # glibc otherwise keeps freed tensors' memory in its heap, and the peak RSS then drifts
        # by +-10 MiB from run to run; a fixed mmap threshold returns it at once.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        peaks[n] = int(subprocess.check_output(command, text=True, env=env))
    what = "device memory" if args.device.startswith("cuda") else "RSS above data and model"
    return Figure(
        f"fit peak memory, 60k vs 10k samples ({what})", peaks[60_000] / max(peaks[10_000], 1),
        "<= 1.1", f"10k {peaks[10_000] / 2**20:.1f} MiB, 60k {peaks[60_000] / 2**20:.1f} MiB",
    )  # fmt: skip


def folded_figures(timer: Timer, model: nn.Module, batches: int = 4) -> list[Figure]:
    """Inference with a folded mask, a mask layer, and (the noise floor) an unmodified copy.

    The mask layer's own cost is also timed alone, on features of its shape: one multiply per
    feature is far below the noise of timing a whole forward (the control's spread).
    """
    cloak = fit(model, DataLoader(synthetic_set(BATCH, seed=3), batch_size=BATCH))
    masked = cloak.apply(copy.deepcopy(model), 0.1)
    folded = cloak.apply(copy.deepcopy(model), 0.1, fold=True)
    x = synthetic_set(BATCH, seed=4).tensors()[0].to(timer.device)
    layer = next(iter(find_masks(masked).values())).mask
    feats = torch.rand(BATCH, *layer.feature_shape, device=timer.device)

    def infer(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for _ in range(batches):
                    m(x)

        return run

    def mask_alone() -> None:
        with torch.no_grad():
            for _ in range(batches):
                layer(feats)

    rounds = Timer(timer.device, 3 * timer.repeats)  # cheap, and the target is tight: more rounds
    t = rounds.best(
        {"plain": infer(model), "copy": infer(copy.deepcopy(model)), "mask": infer(masked),
         "folded": infer(folded), "alone": mask_alone}
    )  # fmt: skip
    detail = f"plain {t['plain'] * 1e3:.0f} ms for {batches} batches of {BATCH}"
    alone = f"mask layer alone {t['alone'] * 1e6:.0f} us for the same batches"
    return [
        Figure("inference, folded mask vs plain", t["folded"] / t["plain"], "<= 1.02", detail),
        Figure("inference, mask layer vs plain", t["mask"] / t["plain"], "<= 1.05", detail),
        Figure("inference, unmodified copy vs plain (noise floor)", t["copy"] / t["plain"], "-",
               detail),
        Figure("inference, plain plus the mask layer alone vs plain", 1 + t["alone"] / t["plain"],
               "<= 1.05", f"{detail}; {alone}"),
    ]  # fmt: skip


def hand_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """The plainest L-inf PGD with a random start: what the native PGD should cost."""
    alpha = 2.5 * EPS / steps
    x_adv = (x + (2 * torch.rand_like(x) - 1) * EPS).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        with torch.no_grad():
            x_adv = (x + (x_adv + alpha * grad.sign() - x).clamp(-EPS, EPS)).clamp(0, 1)
    return x_adv.detach()


def pgd_figures(timer: Timer, model: nn.Module, steps: int = 10, n: int = 128) -> list[Figure]:
    x, y = synthetic_set(n, seed=5).tensors()
    x, y = x.to(timer.device), y.to(timer.device)
    native, art = PGD(eps=EPS, steps=steps), ArtPGD(eps=EPS, steps=steps)
    t = timer.best(
        {
            "native": lambda: native(model, x, y),
            "art": lambda: art(model, x, y),
            "hand": lambda: hand_pgd(model, x, y, steps),
        }
    )
    detail = (f"native {t['native']:.2f} s, ART {t['art']:.2f} s, hand-written {t['hand']:.2f} s "
              f"(PGD-{steps}, {n} samples)")  # fmt: skip
    return [
        Figure(
            "ART's PGD vs native PGD (native's speed-up)", t["art"] / t["native"], ">= 1.2", detail
        ),
        Figure("native PGD vs a hand-written loop", t["native"] / t["hand"], "<= 1.05", detail),
    ]


def evaluation_figure(timer: Timer, n: int = 64) -> Figure:
    """The whole evaluation against the attack passes it runs (its report's own timings).

    A small CNN, every attack (PGD/APGD at 10 steps, Square at 50 queries) and baseline, batches
    of all ``n`` samples. The ratio is read from the report (``total / attack seconds``, each on
    the process's CPU time, like the other CPU figures); best (fastest) of ``timer.repeats``
    runs after one warm-up run.
    """
    from deepcloak.evaluation import timings
    from deepcloak.evaluation.config import EvaluationConfig
    from deepcloak.evaluation.run import evaluate_cloak

    model = bench_model(timer.device, "cnn", width=4)
    config = EvaluationConfig(eps=EPS, steps=10, max_queries=50, max_samples=n, batch_size=n)
    splits = [DataLoader(synthetic_set(n, seed=s), batch_size=n) for s in (6, 7, 8)]
    previous = timings.use_clock(timer.clock)
    try:
        runs = []
        for _ in range(timer.repeats + 1):
            timer.sync()
            runs.append(evaluate_cloak(model, *splits, config=config).timings)
    finally:
        timings.use_clock(previous)
    best = min(runs[1:], key=lambda t: t.total_seconds)  # run 0 warms up (imports, caches)
    passes = len(best.passes)
    return Figure(
        f"evaluation vs its attack passes ({n} samples, {passes} passes)",
        best.total_seconds / best.attack_seconds, "<= 1.3",
        f"evaluation {best.total_seconds:.2f} s, attack passes {best.attack_seconds:.2f} s",
    )  # fmt: skip


def markdown(figures: list[Figure], env: dict[str, object], args: argparse.Namespace) -> str:
    """The section of ``docs/performance.md`` for this device."""
    lines = [
        f"## {env['device']}: {env['device_name']}",
        "",
        f"torch {env['torch']}, {env['threads']} thread(s), {args.repeats} interleaved rounds "
        f"(best of each), deepcloak {env['deepcloak']}, {env['time']}; "
        f"command: `python bench/run.py --device {args.device} --threads {args.threads} "
        f"--repeats {args.repeats}`",
        "",
        "| figure | ratio | target | met | measured |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for f in figures:
        lines.append(f"| {f.name} | {f.ratio:.2f}x | {f.target} | {f.verdict} | {f.detail} |")
    return "\n".join(lines) + "\n"


HEADER = """# Performance

Generated by `bench/run.py` (`make bench`); do not edit by hand. Every figure is a ratio of two
times (or peak memories) measured in the same run, interleaved and best of several, so that
other load on the machine touches both sides alike; absolute times are given only for context.
On CPU the clock is the process's CPU time with one torch thread (the CPU figures come from a
2-core machine shared with other jobs, where wall times swing threefold); on CUDA it is the wall
time, synchronised with the device. The model is a ResNet-8 (width 8) on random 1x28x28 inputs
(Fashion-MNIST's shape), batches of 256, FGSM and PGD at eps = 8/255. The memory figure fits a
small CNN (width 4) in a fresh process per size; on CPU it is the peak resident memory above
what data and model already hold, with glibc's mmap threshold fixed
(`MALLOC_MMAP_THRESHOLD_=131072`) so that freed tensors leave the RSS at once (else glibc's heap
retention moves the peak by about 10 MiB from run to run); on CUDA it is the peak of
`torch.cuda.max_memory_allocated`.

Each round of the interleaving starts with the next side (A B C, B C A, ...). Inference through
a mask layer differs from the plain model by one multiply per feature, far below what timing a
whole forward can resolve: the "unmodified copy" row (a deep copy of the plain model, timed the
same way) shows that noise floor, and the last inference row times the mask layer alone on
features of its shape, added to the plain forward. The sweep evaluates every mask of every ratio
in a few batched products through the final `nn.Linear` (`src/deepcloak/evaluation/mask_grid.py`).

The evaluation figure runs `evaluate_cloak` on a small CNN (width 4) and reads the ratio from its
own report (`timings.total_seconds / attack_seconds`). The `precision` section comes from
`bench/precision.py`: float32 against bfloat16 forward passes.
"""


def write_doc(section: str, device: str) -> None:
    """Write the document: the header, this device's new section, other devices' sections kept."""
    kept = DOC.read_text() if DOC.exists() else ""
    sections = dict(re.findall(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n", kept, re.DOTALL))
    sections[device] = section
    blocks = [
        f"<!-- bench:{d} -->\n{text}<!-- /bench:{d} -->\n" for d, text in sorted(sections.items())
    ]
    DOC.write_text(HEADER + "\n" + "\n".join(blocks))


Measure = Callable[[Timer, nn.Module, argparse.Namespace], list[Figure]]
MEASURES: dict[str, Measure] = {
    "fit": lambda timer, model, args: [fit_figure(timer, model, args.samples)],
    "sweep": lambda timer, model, args: [sweep_figure(timer, model, args.samples)],
    "memory": lambda timer, model, args: [memory_figure(args)],
    "mask": lambda timer, model, args: folded_figures(timer, model),
    "pgd": lambda timer, model, args: pgd_figures(timer, model),
    "evaluation": lambda timer, model, args: [evaluation_figure(timer)],
}


def _chosen(only: str | None) -> list[str]:
    if only is None:
        return list(MEASURES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = set(names) - set(MEASURES)
    if unknown:
        raise SystemExit(f"unknown figures {sorted(unknown)}; choose from {list(MEASURES)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--samples", type=int, default=512, help="samples of fit and sweep")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument(
        "--only",
        help=f"comma-separated figures to measure (implies --no-doc): {', '.join(MEASURES)}",
    )
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_child:
        print(memory_child(args.memory_child, device))
        return
    env = environment(device)
    print(
        f"device {device} ({env['device_name']}), {env['threads']} thread(s), torch {env['torch']}"
    )
    timer, model = Timer(device, args.repeats), bench_model(device)
    figures = []
    started = time.perf_counter()
    chosen = _chosen(args.only)
    for name in chosen:
        for figure in MEASURES[name](timer, model, args):
            figures.append(figure)
            met = {True: "met", False: "NOT met", None: "control"}[figure.met]
            print(f"  {figure.name}: {figure.ratio:.2f}x ({figure.target}: {met}; {figure.detail})")
        print(f"  ({time.perf_counter() - started:.0f} s so far)", flush=True)
    if not args.no_doc and len(chosen) == len(MEASURES):
        write_doc(markdown(figures, env, args), device.type)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
