"""Write a benchmark's results: JSON (everything), a markdown table, PNG plots; with the machine,
the date and the exact command."""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shlex
import sys

logger = logging.getLogger(__name__)


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or ""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                key, _, value = ln.partition(":")
                fields.setdefault(key.strip(), value.strip())
        cpu = fields.get("model name", cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    if "flags" in fields:  # what decides CPU matmul speed: vector width and bf16 / AMX units
        flags = set(fields["flags"].split())
        info["cpu_family_model"] = f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}"
        info["cpu_simd"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    try:
        info["load_average_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def header(title: str) -> dict:
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("radixserve", "__main__.py")):
        argv[0:1] = ["python", "-m", "radixserve"]
    return {"title": title, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in argv), "machine": machine_info()}


def head_lines(doc: dict) -> list[str]:
    """The markdown head of a results file whose doc starts with header(): title, date, command, machine."""
    return [f"# {doc['title']}", "", f"- date: {doc['date']}", f"- command: `{doc['command']}`",
            f"- machine: {json.dumps(doc['machine'])}"]


def save(stem: str, doc: dict, markdown: str) -> None:
    """Write <stem>.json (all of doc) and <stem>.md, making <stem>'s folder if needed."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(runs: list[dict]) -> str:
    cols = ["name", "workload", "mode", "completed", "req/s", "in tok/s", "out tok/s", "TTFT p50/p99 s",
            "ITL p50/p99 s", "e2e p50/p90/p99 s", "hit rate", "optimal", "KV peak", "retract"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in runs:
        done = f"{r['completed']}/{r['num_requests']}" + (" (time limit)" if r.get("truncated") else "")
        cells = [r["name"], r["workload"], r["mode"], done, _fmt(r["req_per_s"]), _fmt(r["input_tok_per_s"]),
                 _fmt(r["output_tok_per_s"]),
                 f"{_fmt(r['ttft_s']['p50'])} / {_fmt(r['ttft_s']['p99'])}",
                 f"{_fmt(r['itl_s']['p50'])} / {_fmt(r['itl_s']['p99'])}",
                 f"{_fmt(r['e2e_s']['p50'])} / {_fmt(r['e2e_s']['p90'])} / {_fmt(r['e2e_s']['p99'])}",
                 f"{r['cache_hit_rate']:.1%}", f"{r['optimal_hit_rate']:.1%}",
                 "-" if r.get("kv_usage_peak") is None else f"{r['kv_usage_peak']:.1%}", str(r.get("retractions", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_runs(runs: list[dict], path: str, title: str) -> None:
    """Bars of output tok/s and cache hit rate (vs optimal) per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(runs) + 4), 4.2))
    axes[0].bar(names, [r["output_tok_per_s"] for r in runs], color="tab:blue")
    axes[0].set_ylabel("output tokens / s")
    axes[0].set_title("throughput")
    x = range(len(runs))
    axes[1].bar([i - 0.2 for i in x], [r["cache_hit_rate"] for r in runs], width=0.4, label="achieved")
    axes[1].bar([i + 0.2 for i in x], [r["optimal_hit_rate"] for r in runs], width=0.4, label="optimal")
    axes[1].set_xticks(list(x), names)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("prompt cache hit rate")
    axes[1].legend(fontsize=8, loc="best")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(runs: list[dict], path: str, title: str) -> None:
    """TTFT / ITL / e2e percentiles per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(axes, ("ttft_s", "itl_s", "e2e_s"), ("time to first token", "inter-token", "end to end")):
        for r in runs:
            qs = [q for q in ("p50", "p90", "p99") if r[key].get(q) is not None]
            ax.plot(qs, [r[key][q] for q in qs], marker="o", label=r["name"])
        ax.set_title(label)
        ax.set_ylabel("seconds")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out_dir: str, stem: str, title: str, runs: list[dict], extra: dict | None = None,
          summary_lines: list[str] | None = None, latency_plot: bool = False) -> dict:
    """Write <stem>.json, <stem>.md and <stem>.png (+ <stem>_latency.png) under out_dir."""
    doc = {**header(title), "runs": runs, **(extra or {})}
    md = head_lines(doc) + [""] + [ln for ln in (summary_lines or [])] + [""]
    if runs:
        md += [markdown_table(runs), "", f"![{stem}]({stem}.png)", ""]
        if latency_plot:
            md += [f"![{stem} latency]({stem}_latency.png)", ""]
    save(os.path.join(out_dir, stem), doc, "\n".join(md))
    if runs:
        plot_runs(runs, os.path.join(out_dir, stem + ".png"), title)
        if latency_plot:
            plot_latency(runs, os.path.join(out_dir, stem + "_latency.png"), title)
    logger.info("wrote %s/%s.{json,md,png}", out_dir, stem)
    return doc
