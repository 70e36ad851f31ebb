"""Re-train a shipped artifact from its own recorded command and compare it with the shipped one.

    python -m benchmarks.reproduce resnet56_wnll_e2e_tvm_data      # re-train (resumable), compare, page
    python -m benchmarks.reproduce --report-only                   # the page only

Every shipped classifier's json (``purify/weights/<name>.json``) records the command that made it. This
runs that command again with its output and checkpoint moved to ``runs/repro/`` (the shipped files are
never touched; ``--resume`` is added, so an interrupted re-training continues where it stopped), then
compares the test figures of the two artifacts. "Within noise" means the re-trained figure lies inside
the shipped figure's 95 % Wilson interval over the same test images: the sampling noise of the test
estimate, the scale on which a training-to-training difference would matter to a user. The seeded
trainer on the same thread count is expected to land much closer than that (float summation order is
the only freedom left); the page shows the exact difference and the two sha256.

One JSON per artifact in ``benchmarks/results/reproduction/``; ``benchmarks/results/reproduction.md``
lists them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .convergence import wilson
from .harness.report import machine, repo_relative

__all__ = ["repro_command", "compare", "main"]

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "purify" / "weights"
OUT = ROOT / "benchmarks" / "results" / "reproduction"
PAGE = ROOT / "benchmarks" / "results" / "reproduction.md"


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def _set_flag(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        i = args.index(flag)
        return [*args[:i + 1], value, *args[i + 2:]]
    return [*args, flag, value]


def repro_command(shipped: dict[str, Any], work: Path) -> list[str]:
    """The shipped command with ``--out`` / ``--checkpoint`` in ``work`` and ``--resume``, run by this Python.

    >>> cfg = {"name": "m", "command": "python -m purify.training.adversarial --out purify/weights/m --epochs 2"}
    >>> repro_command(cfg, Path("runs/repro"))[3:]
    ['--out', 'runs/repro/m', '--epochs', '2', '--checkpoint', 'runs/repro/m.pt', '--resume']
    """
    args = shlex.split(shipped["command"])
    if args[:2] != ["python", "-m"]:
        raise ValueError(f"{shipped['name']}: its command is not a 'python -m' module run: {shipped['command']!r}")
    args = _set_flag(args[1:], "--out", str(work / shipped["name"]))
    args = _set_flag(args, "--checkpoint", str(work / f"{shipped['name']}.pt"))
    return [sys.executable, *args, *([] if "--resume" in args else ["--resume"])]


def compare(shipped: dict[str, Any], again: dict[str, Any]) -> dict[str, Any]:
    """Per test figure (accuracies, %): shipped, re-trained, difference, and whether the re-trained one lies
    in the shipped one's 95 % Wilson interval over the test images.

    >>> a = {"data": {"test_count": 2000}, "test": {"clean": 98.25, "attack": None}}
    >>> compare(a, {"data": {"test_count": 2000}, "test": {"clean": 98.10}})["figures"]["clean"]["within_noise"]
    True
    """
    n = int(shipped["data"]["test_count"])
    if int(again["data"]["test_count"]) != n:
        raise ValueError(f"the two artifacts were tested on different counts ({n} vs {again['data']['test_count']})")
    figures = {}
    for key, value in shipped["test"].items():
        other = again["test"].get(key)
        if not isinstance(value, (int, float)) or not isinstance(other, (int, float)) or key.startswith("rho"):
            continue            # not an accuracy (e.g. rho2 is a norm ratio; attack names a setting)
        lo, hi = wilson(round(value / 100 * n), n)
        figures[key] = {"shipped": value, "again": other, "diff": other - value, "ci": [100 * lo, 100 * hi],
                        "within_noise": 100 * lo <= other <= 100 * hi}
    return {"test_count": n, "figures": figures, "within_noise": all(f["within_noise"] for f in figures.values())}


def reproduce(name: str, work: Path) -> dict[str, Any]:
    """Re-train ``name`` into ``work`` (resuming a partial run) and compare; the log goes to ``work``."""
    cfg_path = WEIGHTS / f"{name}.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no shipped artifact {cfg_path}")
    shipped = json.loads(cfg_path.read_text())
    cmd = repro_command(shipped, work)
    init = _flag(cmd, "--init-from")
    if init is not None and ("/" in init or init.startswith(".")) and not Path(init + ".json").is_file():
        raise FileNotFoundError(f"{name} starts from {init!r}, which is not there: re-train that reference first "
                                "(its runs/ script names it)")
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(work / f"{name}.nohup", "a") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: the re-training failed (exit {done.returncode}); see {work / (name + '.nohup')}")
    again = json.loads((work / f"{name}.json").read_text())
    threads = _flag(cmd, "--threads")
    if threads is not None:         # the machine line names the re-training's thread count, not this process's
        import torch
        torch.set_num_threads(int(threads))
    return {"name": name, "command": repo_relative(shlex.join(["python", *cmd[1:]])),
            "shipped_sha256": shipped["sha256"],
            "again_sha256": again["sha256"], "wall_s": round(time.perf_counter() - t), "machine": machine(),
            "date": dt.date.today().isoformat(), **compare(shipped, again)}


def build_page(results: list[dict[str, Any]]) -> str:
    lines = ["# Reproduction: shipped artifacts re-trained from their recorded commands", "",
             "- Command: `python -m benchmarks.reproduce <artifact>` (re-runs the artifact's own command into "
             "`runs/repro/`, then compares the test figures).",
             "- Within noise: the re-trained figure lies in the shipped figure's 95 % Wilson interval over the same "
             "test images.", "",
             "| artifact | figure | shipped % [95 %] | re-trained % | difference | within noise | same weights | "
             "wall | machine, date |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for key, f in r["figures"].items():
            lines.append(f"| {r['name']} | {key} | {f['shipped']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}] | "
                         f"{f['again']:.2f} | {f['diff']:+.2f} | {'yes' if f['within_noise'] else 'NO'} | "
                         f"{'yes' if r['shipped_sha256'] == r['again_sha256'] else 'no'} | "
                         f"{r['wall_s'] / 60:.0f} min | {r['machine']}, {r['date']} |")
    if not results:
        lines.append("| (none yet) | | | | | | | | |")
    lines += ["", "Commands of the re-trainings:", ""]
    lines += [f"- {r['name']}: `{repo_relative(r['command'])}`" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="*", help="shipped artifact names (purify/weights/<name>.json)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "repro"), help="where the re-trained artifacts go")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.artifacts and not args.report_only:
        ap.error("name at least one artifact, or --report-only")
    for name in [] if args.report_only else args.artifacts:
        try:
            res = reproduce(name, Path(args.work))
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        print(f"{name}: " + ", ".join(f"{k} {f['shipped']:.2f} -> {f['again']:.2f}" for k, f in res["figures"].items()))
    PAGE.write_text(build_page([json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))] if OUT.is_dir() else []))
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
