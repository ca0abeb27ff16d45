"""Reporting of a ``seqlab bench`` report (the dict :func:`seqlab.bench.harness.run` returns):
the human-readable table with its legends (:func:`format_table`) and the log-log scaling plot
(:func:`plot`). The JSON output is the report itself (``json.dump``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_table", "plot"]


def _ms(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3g}" if s < 10 else f"{s * 1e3:.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a report, with legends for references and peers."""
    p = report["probe"]
    out = [
        f"seqlab bench  {report['date']}  {report['environment']['backend']} "
        f"({report['environment']['device']})",
        f"probe: matmul {p['flops_per_s'] / 1e9:.1f} GFLOP/s (f32, n={p['matmul_n']}), "
        f"bandwidth {p['bytes_per_s'] / 1e9:.1f} GB/s",
        "",
    ]
    header = ["mixer", "L", "fwd ms", "f+b ms", "tok/s", "peak MiB", "f+b MiB", "bound",
              "%bound", "op ms", "ref ms", "op speedup", "peers (op speedup)", "note"]
    rows, legend = [], {}
    for r in report["results"]:
        op, ref = r["op"] or {}, r["reference"] or {}
        speed = ref["s"] / op["s"] if ref.get("s") and op.get("s") else None
        peers = "; ".join(
            f"P{i + 1} {_ratio(pe['op_speedup'])}" for i, pe in enumerate(r["peers"])
        )
        notes = [r["note"]] if r["status"] not in ("ok", "op-only") else []
        notes += [f"{k}: {c['note']}" for k, c in (("op", op), ("ref", ref)) if c.get("note")]
        notes += [f"P{i + 1}: {pe['note']}" for i, pe in enumerate(r["peers"]) if pe["note"]]
        if op or ref:
            legend[r["mixer"]] = (op.get("name"), ref.get("name"), [
                pe["name"] + (f" (same inputs, rel. error {pe['rel_err']:.1e})"
                              if pe.get("rel_err") is not None else "") for pe in r["peers"]])
        bound = f"{r['bound_by']}" + ("*" if r["bound_source"] == "xla-cost-analysis" else "")
        rows.append([
            r["mixer"], str(r["length"]), _ms(r["fwd_s"]), _ms(r["fwd_bwd_s"]),
            "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.3g}",
            _mib(r["peak_bytes"]), _mib(r["fwd_bwd_peak_bytes"]),
            bound if r["bound_by"] else "-",
            "-" if r["frac_of_bound"] is None else f"{100 * r['frac_of_bound']:.1f}%",
            _ms(op.get("s")), _ms(ref.get("s")), _ratio(speed), peers or "-",
            (r["status"] + " " if r["status"] != "ok" else "") + " | ".join(notes)[:110],
        ])
    out.append(_table(header, rows) if rows else "(no results)")
    if legend:
        out += ["", "op = the mixer's core op; ref = its naive reference "
                "(op speedup = ref time / op time); P# = peers (peer time / op time):"]
        for name, (op, ref, prs) in legend.items():
            ps = "; ".join(f"P{i + 1} = {n}" for i, n in enumerate(prs))
            out.append(f"  {name}: op = {op}; ref = {ref}" + (f"; {ps}" if ps else ""))
    out.append("bound: the roofline bound max(FLOPs / measured FLOP/s, bytes / measured "
               "bandwidth) of the forward pass, and which one binds (* = XLA's cost analysis).")
    if report["decode"]:
        out += ["", "decode (one token per step; cache allocated for context + 1):"]
        drows = [[d["mixer"], str(d["context"]), _ms(d["step_s"]),
                  "-" if d["tokens_per_s"] is None else f"{d['tokens_per_s']:.3g}",
                  _mib(d["cache_bytes"]),
                  "-" if d["cache_bytes_per_token"] is None
                  else f"{d['cache_bytes_per_token']:.1f}",
                  "" if d["status"] == "ok" else f"{d['status']}: {d['note']}"[:100]]
                 for d in report["decode"]]
        out.append(_table(["mixer", "context", "step ms", "tok/s", "cache MiB",
                           "cache B/token", "note"], drows))
    return "\n".join(out)


def plot(report: dict[str, Any], path: str) -> None:
    """Log-log time (forward, forward+backward) and peak memory vs length per mixer, with
    O(L), O(L log L) and O(L^2) guide lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    series: dict[str, list[dict]] = {}
    for r in report["results"]:
        if r["status"] == "ok":
            series.setdefault(r["mixer"], []).append(r)
    for ax, key, ylabel in ((axes[0], "fwd_s", "forward time [s]"),
                            (axes[1], "peak_bytes", "forward peak memory [bytes]")):
        all_l, first = [], []
        for name, rs in series.items():
            ls = [r["length"] for r in rs if r[key]]
            ys = [r[key] for r in rs if r[key]]
            if ls:
                (line,) = ax.loglog(ls, ys, "o-", label=name)
                all_l += ls
                first.append(ys[0])
                if key == "fwd_s":
                    lb = [r["fwd_bwd_s"] for r in rs if r[key] and r["fwd_bwd_s"]]
                    if len(lb) == len(ls):
                        ax.loglog(ls, lb, "s--", color=line.get_color(), alpha=0.5)
        if all_l:
            lo, hi = min(all_l), max(all_l)
            y0 = math.exp(sum(math.log(y) for y in first) / len(first))
            grid = [lo * (hi / lo) ** (i / 20) for i in range(21)] if hi > lo else [lo]
            for label, f in (("O(L)", lambda n: n), ("O(L log L)", lambda n: n * math.log2(n)),
                             ("O(L^2)", lambda n: n * n)):
                ax.loglog(grid, [y0 * f(n) / f(lo) for n in grid], ":", color="gray", lw=1)
                ax.annotate(label, (grid[-1], y0 * f(grid[-1]) / f(lo)), fontsize=8,
                            color="gray")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("time (solid: forward, dashed: forward+backward)")
    axes[1].set_title("peak memory (XLA memory analysis)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"seqlab bench, {report['environment']['backend']} "
                 f"({report['environment']['device']}), {report['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
