"""Runtime benchmark: act latency, adaptation latency, and acting while hot-swapping.

Measured in one run, so compare the ratios (goals: onnxruntime act p99 <= 50 µs; 20 episodes
x 200 steps to the adapted policy serving <= 30 ms; while the acting thread swaps 1000 times
between installed artifacts as a serving loop does (``begin_swap``/``finish_swap``), act p99.9
<= 2x and max <= 1 ms above the same bench's run without swaps, zero failures). Uses a
freshly initialized HalfCheetah-velocity policy unless given an artifact. The controllers run
without a journal: nothing is recorded here. Run: ``.venv/bin/python -m bench runtime``.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from controller import Controller, ControllerConfig
from controller.artifact import load_artifact
from controller.installing import INSTALLED_KEPT
from controller.policy import mean_action
from controller.serving import ServingPolicy, ServingSession
from controller.verifier import lowest_priority
from meta_train import export
from sim.families import Family, get_family
from sim.tasks import VelocityTask

FAMILY = "cheetah_velocity"
EPISODES, HORIZON = 20, 200  # the paper's K and horizon (Finn et al. 2017, appendix A.2)


def fresh_artifact(path: Path, family: Family, seed: int) -> Path:
    """A freshly initialized 2x100 ReLU policy for ``family`` saved as an artifact."""
    return export.fresh_artifact(
        path,
        family.name,
        seed=seed,
        episodes_per_step=EPISODES,
        horizon=HORIZON,
        training={"note": f"fresh initialization, seed {seed} (benchmark)"},
    )


class GcPauses:
    """Garbage collections (any thread) while active: how many, and the longest, in µs.

    A collection holds the interpreter lock throughout, so one that runs while acting delays
    the act call waiting for the lock by its whole length.
    """

    def __init__(self) -> None:
        self.count = 0
        self.longest_us = 0.0
        self._started: dict[int, int] = {}

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        thread = threading.get_ident()
        if phase == "start":
            self._started[thread] = time.perf_counter_ns()
        elif thread in self._started:
            pause = (time.perf_counter_ns() - self._started.pop(thread)) / 1e3
            self.count += 1
            self.longest_us = max(self.longest_us, pause)


def summary(
    busy: np.ndarray, slow_us: float, failures: float, pauses: GcPauses
) -> dict[str, float]:
    """A row of the acting-while tables: percentiles of ``busy`` (µs), the share of calls
    slower than ``slow_us``, the failures, and the garbage collections meanwhile."""
    return {
        "p99_swapping_us": float(np.percentile(busy, 99)),
        "p999_swapping_us": float(np.percentile(busy, 99.9)),
        "max_swapping_us": float(busy.max()),
        "calls_while_swapping": float(busy.size),
        "share_slow": float(np.mean(busy > slow_us)),
        "failures": float(failures),
        "gc_collections": float(pauses.count),
        "gc_longest_us": pauses.longest_us,
    }


def latencies(call: Callable[[np.ndarray], Any], observations: np.ndarray, n: int) -> np.ndarray:
    """Microseconds of each of ``n`` calls, cycling through ``observations``."""
    out = np.empty(n)
    count = len(observations)
    for i in range(n):
        obs = observations[i % count]
        start = time.perf_counter_ns()
        call(obs)
        out[i] = time.perf_counter_ns() - start
    return out / 1e3


def act_paths(ctl: Controller) -> dict[str, Callable[[np.ndarray], Any]]:
    """The serving path and its alternatives: mean, noise, clip (Controller.act also checks the
    observation and the sample for non-finite values and keeps the sample for record())."""
    artifact, rng = ctl.artifact, np.random.default_rng(0)
    low, high = (
        np.asarray(v, np.float32) for v in (artifact.layout.action_low, artifact.layout.action_high)
    )
    params = {k: v.numpy() for k, v in artifact.params.items()}
    std = np.exp(params["log_std"])
    layers = [(params[f"hidden.{i}.weight"].T.copy(), params[f"hidden.{i}.bias"]) for i in range(2)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(artifact.onnx_model, options, providers=["CPUExecutionProvider"])

    def numpy_act(obs: np.ndarray) -> np.ndarray:
        x = obs
        for weight_t, bias in layers:
            x = np.maximum(x @ weight_t + bias, 0.0)
        mean = x @ params["mean.weight"].T + params["mean.bias"]
        return np.clip(mean + std * rng.standard_normal(6, dtype=np.float32), low, high)

    def torch_act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            mean = mean_action(artifact.spec, artifact.params, torch.from_numpy(obs)).numpy()
        return np.clip(mean + std * rng.standard_normal(6, dtype=np.float32), low, high)

    def session_run(obs: np.ndarray) -> np.ndarray:
        mean = session.run(["mean"], {"observation": obs[None]})[0][0]
        return np.clip(mean + std * rng.standard_normal(6, dtype=np.float32), low, high)

    return {
        "Controller.act (onnxruntime IOBinding, full)": ctl.act,
        "onnxruntime session.run + noise + clip": session_run,
        "numpy forward + noise + clip": numpy_act,
        "torch eager forward + noise + clip": torch_act,
    }


def collect(ctl: Controller, family: Family, velocity: float, seed: int) -> None:
    """K episodes of HORIZON steps in MuJoCo, one stream per simulation, via the Controller."""
    sim = family.make_simulator(EPISODES, 2)
    obs = sim.reset([VelocityTask(velocity)] * EPISODES, np.random.default_rng(seed))
    for _ in range(HORIZON):
        commands = ctl.act(obs)
        result = sim.step(commands)
        rewards = np.sum(list(result.reward_terms.values()), axis=0)
        for stream in range(EPISODES):
            ctl.record(obs[stream], commands[stream], float(rewards[stream]), False, stream)
        obs = result.observations
    for stream in range(EPISODES):
        ctl.end_episode(stream)


def adaptation_latency(path: Path, family: Family, repeats: int) -> dict[str, float]:
    """Median (and worst) time from K episodes in hand to the adapted policy serving."""
    ctl = Controller.load(path, ControllerConfig(seed=0, max_kl=1e6, journal=False))
    runs = []
    for i in range(repeats):
        ctl.reset()
        collect(ctl, family, velocity=0.5 + 0.3 * i, seed=i)
        report = ctl.adapt()
        if not report.accepted or report.timings is None:
            raise RuntimeError(f"adaptation refused in the benchmark: {report.reason}")
        runs.append(report.timings)
    split = {
        f"{k}_ms": float(np.median([getattr(r, k) for r in runs]) * 1e3) for k in runs[0]._fields
    }
    to_serving = [r.to_serving_s * 1e3 for r in runs]
    return {
        "to_serving_ms_median": float(np.median(to_serving)),
        "to_serving_ms_max": max(to_serving),
        **split,
    }


def act_while(
    ctl: Controller,
    work: Callable[[], Any],
    repeats: int,
    observations: np.ndarray,
    slow_us: float,
) -> dict[str, float]:
    """Act in this thread while another runs ``work`` ``repeats`` times back to back.

    ``work`` returns True, or a string saying why it failed; each failure and each act call
    that raised counts. ``share_slow`` is the fraction of act calls slower than ``slow_us``.
    """
    failures: list[str] = []
    done = threading.Event()

    def background() -> None:
        for _ in range(repeats):
            outcome = work()
            if outcome is not True:
                failures.append(str(outcome))
        done.set()

    chunks: list[np.ndarray] = []
    errors = 0
    thread = threading.Thread(target=background)
    with GcPauses() as pauses:
        thread.start()
        while not chunks or not done.is_set():
            try:
                chunks.append(latencies(ctl.act, observations, 200))
            except Exception:  # a failed call is what this benchmark counts
                errors += 1
        thread.join()
    busy = np.concatenate(chunks)
    return summary(busy, slow_us, errors + len(failures), pauses)


def act_and_swap(
    ctl: Controller, paths: list[Path], swaps: int, observations: np.ndarray, slow_us: float
) -> dict[str, float]:
    """One thread acts and swaps ``swaps`` times, as a serving loop does: each iteration acts,
    then begins the next swap or, once the verifier child has answered, finishes it.

    Timed per iteration, the swap's own work included: what a request arriving during it
    waits. The verification runs in the child meanwhile.
    """
    times: list[int] = []
    count, done, failures = len(observations), 0, 0
    pending, target = None, itertools.cycle(range(1, len(paths) + 1))
    clock = time.perf_counter_ns
    with GcPauses() as pauses:
        for i in itertools.count():
            start = clock()
            ctl.act(observations[i % count])
            if pending is None:
                pending = ctl.begin_swap(paths[next(target) % len(paths)])
            elif pending.ready():
                failures += not ctl.finish_swap(pending).accepted
                pending, done = None, done + 1
            times.append(clock() - start)
            if done == swaps:
                break
    busy = np.asarray(times) / 1e3
    return summary(busy, slow_us, failures, pauses)


def _spin(stop: Any) -> None:
    """Child process: busy on one core, in the verifier's scheduling class, until ``stop``."""
    lowest_priority()
    while not stop.is_set():
        pass


def act_beside_busy_process(
    ctl: Controller, observations: np.ndarray, calls: int, slow_us: float
) -> dict[str, float]:
    """Act ``calls`` times while another process only spins in the idle scheduling class.

    No swap and no other thread: the control for the swap rows, whose verifier child works on
    the other core the same way. On a virtual machine a busy neighbouring core can stall the
    acting one by milliseconds although the scheduler never gives it away.
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    spinner = context.Process(target=_spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(1.0)  # its start-up
        with GcPauses() as pauses:
            busy = latencies(ctl.act, observations, calls)
    finally:
        stop.set()
        spinner.join(timeout=10)
    return summary(busy, slow_us, 0, pauses)


def _verify_on_request(connection: Connection) -> None:
    """Child process: load and verify each artifact path received, answer b"ok" (or why not)."""
    while (path := connection.recv()) is not None:
        try:
            load_artifact(path)
            connection.send_bytes(b"ok")
        except ValueError as error:
            connection.send_bytes(str(error).encode())


def act_while_swapping(
    paths: list[Path], fresh: list[Path], swaps: int, observations: np.ndarray
) -> dict[str, Any]:
    """Act while swapping ``swaps`` times; the same without swaps.

    ``swap`` is the serving loop's way (:func:`act_and_swap`): the acting thread begins and
    finishes each swap itself, alternating between ``paths`` (installed: the child answers
    with a digest); ``swap, new artifacts`` cycles through ``fresh``, more than the controller
    keeps, so every swap unpickles and binds a candidate in the acting thread. ``swap from
    another thread`` calls ``Controller.swap`` in a second thread while this one acts. Also acts while the other thread does only one part of a swap, ``swaps`` times each, to
    show where the slow calls come from: loading and verifying the candidate
    (``load_artifact``), and binding its parameters to the shared session
    (``ServingPolicy``, what a swap does once the candidate is verified); and only asking a
    child process to verify the candidate and waiting for its answer over a pipe (``verify in
    a child``): the least a swap that verifies elsewhere does in this process, with nothing
    installed.
    """
    ctl = Controller.load(paths[0], ControllerConfig(seed=0, journal=False))
    assert len(fresh) > INSTALLED_KEPT, "the fresh artifacts must not all stay installed"
    for path in (paths[1], paths[0]):  # start the verifier process, install both artifacts
        report = ctl.swap(path)
        if not report.accepted:
            raise RuntimeError(f"swap refused in the benchmark: {report.reason}")
    with GcPauses() as pauses:
        quiet = latencies(ctl.act, observations, 100_000)
    p99_quiet = float(np.percentile(quiet, 99))
    counter = itertools.count()

    def swap() -> str | bool:
        report = ctl.swap(paths[(next(counter) + 1) % len(paths)])
        return True if report.accepted else report.reason

    candidate = load_artifact(paths[1])
    shared = ServingSession(candidate.spec, ctl.config.intra_op_threads)
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    verifier = context.Process(target=_verify_on_request, args=(theirs,), daemon=True)
    verifier.start()

    def verify_elsewhere() -> str | bool:
        mine.send(str(paths[1]))
        answer = mine.recv_bytes()
        return True if answer == b"ok" else answer.decode()

    verify_elsewhere()  # the child's imports, before the clock runs
    parts: dict[str, Callable[[], Any]] = {
        "swap from another thread": swap,
        "load_artifact only": lambda: bool(load_artifact(paths[1])),
        "ServingPolicy only": lambda: bool(ServingPolicy(shared, candidate.params, 0)),
        "verify in a child": verify_elsewhere,
    }
    result: dict[str, Any] = {
        "p99_quiet_us": p99_quiet,
        "p999_quiet_us": float(np.percentile(quiet, 99.9)),
        "max_quiet_us": float(quiet.max()),
        "gc_collections_quiet": float(pauses.count),
        "gc_longest_quiet_us": pauses.longest_us,
    }
    try:
        slow_us = 2 * p99_quiet
        result["swap"] = act_and_swap(ctl, paths, swaps, observations, slow_us)
        result["swap, new artifacts"] = act_and_swap(ctl, fresh, swaps // 4, observations, slow_us)
        result["beside a busy process"] = act_beside_busy_process(
            ctl, observations, len(quiet), slow_us
        )
        ctl.swap(paths[0])
        for name, work in parts.items():
            result[name] = act_while(ctl, work, swaps, observations, slow_us=2 * p99_quiet)
    finally:
        mine.send(None)
        verifier.join(timeout=10)
        ctl.close()
    return result


def bench_runtime(
    artifact: Path | None = None, calls: int = 100_000, swaps: int = 1000
) -> dict[str, Any]:
    """Run the three measurements, print a table, return the numbers."""
    family = get_family(FAMILY)
    with tempfile.TemporaryDirectory() as scratch:
        paths = [fresh_artifact(Path(scratch) / f"init{i}", family, seed=i) for i in range(2)]
        fresh = [
            fresh_artifact(Path(scratch) / f"new{i}", family, seed=100 + i)
            for i in range(INSTALLED_KEPT + 2)
        ]
        if artifact is not None:
            paths[0] = Path(artifact)
        observations = np.random.default_rng(0).normal(size=(1000, family.observation_size))
        observations = observations.astype(np.float32)
        ctl = Controller.load(paths[0], ControllerConfig(seed=0, journal=False))
        acting = {}
        for name, call in act_paths(ctl).items():
            micros = latencies(call, observations, calls)
            acting[name] = {
                "p50_us": float(np.median(micros)),
                "p99_us": float(np.percentile(micros, 99)),
            }
        adapting = adaptation_latency(paths[0], family, repeats=5)
        swapping = act_while_swapping(paths, fresh, swaps, observations)
    results = {
        "act": acting,
        "adapt": adapting,
        "swap": swapping,
        "torch_threads": torch.get_num_threads(),
    }
    serving_p99 = acting["Controller.act (onnxruntime IOBinding, full)"]["p99_us"]
    swap = swapping["swap"]
    results["goals_met"] = {
        "act_p99_le_50us": serving_p99 <= 50.0,
        "adapt_to_serving_le_30ms": adapting["to_serving_ms_median"] <= 30.0,
        "swap_p999_le_2x_quiet": swap["p999_swapping_us"] <= 2 * swapping["p999_quiet_us"],
        "swap_max_le_quiet_plus_1ms": swap["max_swapping_us"] <= swapping["max_quiet_us"] + 1000,
        "swap_zero_failures": swap["failures"] == 0,
    }
    print_table(
        results, calls, swaps, load_artifact(paths[0]).metadata.family if artifact else FAMILY
    )
    return results


def print_table(results: dict[str, Any], calls: int, swaps: int, family: str) -> None:
    print(f"\nact latency, {calls} single-observation calls ({family}, 1 thread), µs")
    print(f"  {'path':46s} {'p50':>8s} {'p99':>8s}")
    for name, row in results["act"].items():
        print(f"  {name:46s} {row['p50_us']:8.1f} {row['p99_us']:8.1f}")
    adapt = results["adapt"]
    print(
        f"\nadaptation, {EPISODES} episodes x {HORIZON} steps -> serving (torch threads "
        f"{results['torch_threads']}), ms"
    )
    print(
        f"  to serving: median {adapt['to_serving_ms_median']:.1f}, worst {adapt['to_serving_ms_max']:.1f}"
    )
    print(
        "  split (median): "
        + ", ".join(f"{k[:-5]} {v:.2f}" for k, v in adapt.items() if k.endswith("_s_ms"))
    )
    swap = results["swap"]
    print(
        f"\nact while swapping {swaps} times (in the acting thread; new artifacts: "
        f"{swaps // 4}), or while another thread works {swaps} times back to back, µs"
    )
    print(
        f"  {'work':26s} {'p99':>8s} {'p99.9':>8s} {'max':>8s} {'> 2x quiet':>10s} {'calls':>8s} "
        f"{'failures':>8s} {'gc runs':>7s} {'gc max':>7s}"
    )
    print(
        f"  {'nothing (quiet)':26s} {swap['p99_quiet_us']:8.1f} {swap['p999_quiet_us']:8.1f} "
        f"{swap['max_quiet_us']:8.0f} {'':10s} {'':8s} {'':8s} "
        f"{int(swap['gc_collections_quiet']):7d} {swap['gc_longest_quiet_us']:7.0f}"
    )
    for name, row in swap.items():
        if isinstance(row, dict):
            print(
                f"  {name:26s} {row['p99_swapping_us']:8.1f} {row['p999_swapping_us']:8.1f} "
                f"{row['max_swapping_us']:8.0f} {100 * row['share_slow']:9.2f}% "
                f"{int(row['calls_while_swapping']):8d} {int(row['failures']):8d} "
                f"{int(row['gc_collections']):7d} {row['gc_longest_us']:7.0f}"
            )
    whole = swap["swap"]
    print(
        f"\nswap goals, against the quiet run above: p99.9 {whole['p999_swapping_us']:.1f} µs "
        f"<= 2 x {swap['p999_quiet_us']:.1f} = {2 * swap['p999_quiet_us']:.1f} µs; "
        f"max {whole['max_swapping_us']:.0f} µs <= {swap['max_quiet_us']:.0f} + 1000 = "
        f"{swap['max_quiet_us'] + 1000:.0f} µs; failures {int(whole['failures'])} == 0"
    )
    print("goals met: " + ", ".join(f"{k} {v}" for k, v in results["goals_met"].items()))


if __name__ == "__main__":
    bench_runtime()
