"""``python -m bench [name ...]``: run the benches (all, or the named ones) and save the results.

Each ``bench/<name>_bench.py`` module's ``bench_<name>()`` runs in turn; results are merged into
``runs/bench.json`` (``{"benches": {name: result}, ...}``), keeping earlier results of benches
not run this time. A module that cannot be imported is reported and skipped; a bench that fails
is reported, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench

OUTPUT = Path("runs") / "bench.json"
SUFFIX = "_bench"


def discover() -> list[str]:
    """Names of the bench modules, e.g. ``["runtime", "sampler"]``, in alphabetical order."""
    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.endswith(SUFFIX)]
    return sorted(name.removesuffix(SUFFIX) for name in names)


def load(name: str) -> Callable[[], dict[str, Any]]:
    """The bench function ``bench.<name>_bench.bench_<name>``, imported only now."""
    module = importlib.import_module(f"bench.{name}{SUFFIX}")
    function = getattr(module, f"bench_{name}", None)
    if not callable(function):
        raise AttributeError(f"bench/{name}{SUFFIX}.py defines no function bench_{name}()")
    return function


def run(names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Run the named benches; returns (results by name, problems by name)."""
    results: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in names:
        print(f"\n## {name}\n", flush=True)
        try:
            function = load(name)
        except (ImportError, AttributeError) as error:
            problems[name] = f"skipped: {error}"
            print(problems[name], file=sys.stderr)
            continue
        start = time.perf_counter()
        try:
            results[name] = function()
        except Exception as error:  # keep the other benches' results; report and fail at the end
            traceback.print_exc()
            problems[name] = f"failed: {type(error).__name__}: {error}"
            continue
        print(f"({name}: {time.perf_counter() - start:.1f} s)", flush=True)
    return results, problems


def save(results: dict[str, Any], problems: dict[str, str], path: Path = OUTPUT) -> None:
    """Merge this run's results into ``path``."""
    previous: dict[str, Any] = {}
    if path.exists():
        previous = json.loads(path.read_text()).get("benches", {})
    previous.update(results)
    record = {
        "benches": previous,
        "problems": problems,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"\nresults written to {path}")


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benches to run (default: all of {', '.join(available)})"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; available: {', '.join(available)}")
    results, problems = run(args.names or available)
    save(results, problems)
    return 1 if any(p.startswith("failed") for p in problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
