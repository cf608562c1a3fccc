"""The evaluation's report: its JSON document, the table next to the paper's numbers, and the
figures (the paper's Figure 5; velocity reached against the target for velocity tasks)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meta_train.evaluate import MethodResult, mean_stderr
from meta_train.paper import PAPER_RESULTS
from sim.families import Family
from sim.tasks import Task, task_to_dict


def results_document(
    family: Family,
    tasks: Sequence[Task],
    results: dict[str, MethodResult],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    return {
        "family": family.name,
        "num_tasks": len(tasks),
        "tasks": [task_to_dict(t) for t in tasks],
        "methods": {name: _method_document(r) for name, r in results.items()},
        "gap_closed": gap_closed({name: r.mean for name, r in results.items()}),
        "paper": PAPER_RESULTS.get(family.name, {}),
        "provenance": provenance,
    }


def gap_closed(means: dict[str, list[float]]) -> dict[str, float]:
    """The share of the gap from the pretrained (domain-randomized) policy to the oracle that
    MAML closes with one gradient step, with the pretrained policy as robots use it (step 0, not
    fine-tuned) and fine-tuned by one step of its own: (MAML_1 - P_s) / (oracle - P_s). 1 means
    MAML after one step does as well as the oracle, 0 no better than the pretrained policy.
    Empty unless all three methods were evaluated and MAML took a step."""
    maml, pretrained, oracle = (means.get(name) for name in ("maml", "pretrained", "oracle"))
    if maml is None or pretrained is None or oracle is None or len(maml) < 2:
        return {}
    shares = {}
    for step, label in ((0, "vs_pretrained_step0"), (1, "vs_pretrained_step1")):
        if step < len(pretrained) and oracle[0] != pretrained[step]:
            shares[label] = (maml[1] - pretrained[step]) / (oracle[0] - pretrained[step])
    return shares


def _method_document(result: MethodResult) -> dict[str, Any]:
    document: dict[str, Any] = {
        "mean": result.mean,
        "stderr": result.stderr,
        "per_task": result.returns.tolist(),
    }
    if result.velocity_errors is not None:
        mean, stderr = mean_stderr(result.velocity_errors)
        document["velocity_error"] = {
            "mean": mean,
            "stderr": stderr,
            "per_task": result.velocity_errors.tolist(),
        }
    if result.velocities is not None:
        document["velocity_per_task"] = result.velocities.tolist()
    return document


def format_table(document: dict[str, Any]) -> str:
    """Ours next to the paper's, one row per method, one column per gradient step."""
    methods = document["methods"]
    steps = max(len(m["mean"]) for m in methods.values())
    header = f"{'method':<11}" + "".join(f"{'step ' + str(s):>22}" for s in range(steps))
    lines = [
        f"{document['family']}: mean return over {document['num_tasks']} test tasks "
        "± standard error (paper in brackets)",
        header,
    ]
    for name, m in methods.items():
        paper = document["paper"].get(name, [])
        cells = []
        for s in range(len(m["mean"])):
            ref = f" [{paper[s]:.1f}]" if s < len(paper) else ""
            cells.append(f"{m['mean'][s]:.1f}±{m['stderr'][s]:.1f}{ref}".rjust(22))
        lines.append(f"{name:<11}" + "".join(cells))
    # What each method's steps were: their sizes, and the parameters when not all.
    for key, label in (("step_sizes", "step sizes"), ("adapted_parameters", "steps change only")):
        per_method = {
            name: entry[key]
            for name, entry in document.get("provenance", {}).items()
            if isinstance(entry, dict) and entry.get(key)
        }
        if per_method:
            listed = "; ".join(
                f"{n} {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}"
                for n, values in per_method.items()
            )
            lines.append(f"{label}: {listed}")
    shares = document.get("gap_closed") or {}
    if shares:
        parts = [
            f"{shares[key]:.2f} of it against pretrained at step {key[-1]}"
            for key in ("vs_pretrained_step0", "vs_pretrained_step1")
            if key in shares
        ]
        lines += [
            "",
            "gap from pretrained to oracle closed by MAML's first step: " + "; ".join(parts),
        ]
    with_errors = {
        name: m["velocity_error"] for name, m in methods.items() if "velocity_error" in m
    }
    if with_errors:
        lines += ["", "mean |v - v*| (m/s) over the same episodes ± standard error", header]
        for name, error in with_errors.items():
            cells = [
                f"{mu:.3f}±{se:.3f}".rjust(22)
                for mu, se in zip(error["mean"], error["stderr"], strict=True)
            ]
            lines.append(f"{name:<11}" + "".join(cells))
    return "\n".join(lines)


def plot_results(documents: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Figure 5 of the paper: return against gradient steps, one panel per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(documents), figsize=(4.2 * len(documents), 3.4), squeeze=False)
    styles = {
        "maml": ("tab:red", "o"),
        "pretrained": ("tab:blue", "s"),
        "random": ("tab:gray", "^"),
        "oracle": ("tab:green", None),
    }
    for ax, doc in zip(axes[0], documents, strict=True):
        steps = max(len(m["mean"]) for m in doc["methods"].values())
        for name, m in doc["methods"].items():
            color, marker = styles.get(name, ("black", "x"))
            mean, err = np.array(m["mean"]), np.array(m["stderr"])
            if len(mean) == 1:  # the oracle does not adapt: a horizontal line
                ax.axhline(mean[0], color=color, linestyle="--", label=name)
                for value in doc.get("paper", {}).get(name, [])[:1]:
                    ax.axhline(
                        value, color=color, linestyle=":", alpha=0.5, label=f"{name} (paper)"
                    )
                continue
            x = np.arange(len(mean))
            ax.errorbar(x, mean, yerr=err, color=color, marker=marker, capsize=3, label=name)
            paper = doc.get("paper", {}).get(name, [])
            if len(paper) > 1:  # the paper's curve, faint, for comparison
                ax.plot(
                    range(len(paper)),
                    paper,
                    color=color,
                    linestyle=":",
                    alpha=0.5,
                    label=f"{name} (paper)",
                )
        ax.set_title(doc["family"])
        ax.set_xlabel("number of gradient steps")
        ax.set_xticks(range(steps))
        ax.set_ylabel("average return")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_results(document: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{document['family']}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    plot_results([document], out / f"{document['family']}.png")
    if any("velocity_per_task" in m for m in document["methods"].values()):
        plot_velocity_tracking(document, out / f"{document['family']}_tracking.png")
    return path


def plot_velocity_tracking(document: dict[str, Any], path: str | Path) -> None:
    """Velocity reached against the target, per test task, after each gradient step: one
    panel per method (velocity tasks). Reads better than the return alone: it shows which
    targets a step reaches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = {n: m for n, m in document["methods"].items() if "velocity_per_task" in m}
    targets = np.array([t["velocity"] for t in document["tasks"]])
    order = np.argsort(targets)
    fig, axes = plt.subplots(
        1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False, sharey=True
    )
    for ax, (name, m) in zip(axes[0], methods.items(), strict=True):
        reached = np.array(m["velocity_per_task"])
        colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(reached)))
        for step, (row, color) in enumerate(zip(reached, colors, strict=True)):
            ax.plot(targets[order], row[order], marker=".", color=color, label=f"step {step}")
        ax.plot(targets[order], targets[order], color="tab:red", linestyle="--", label="v = v*")
        ax.set_title(name)
        ax.set_xlabel("target velocity v* (m/s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean forward velocity reached (m/s)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{document['family']}: {document['num_tasks']} test tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
