"""Markdown tables from the JSON files of scripts/gpu_check.sh (``seqlab bench`` + the peers).

    python3 scripts/bench/gpu_report.py OUT_DIR   # reads OUT_DIR/bench_*.json, OUT_DIR/peers.json
"""

from __future__ import annotations

import json
import pathlib
import sys


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def main(out: pathlib.Path) -> str:
    lines = ["# GPU check", ""]
    reports = [json.loads(f.read_text()) for f in sorted(out.glob("bench_*.json"))]
    if reports:
        rep = reports[0]
        env = rep.get("environment", {})
        lines += [f"`seqlab bench` {rep.get('date')} on {env.get('device')} "
                  f"({env.get('backend')}), probe: matmul "
                  f"{rep['probe']['flops_per_s'] / 1e12:.1f} TFLOP/s, bandwidth "
                  f"{rep['probe']['bytes_per_s'] / 1e9:.0f} GB/s", "",
                  "| mixer | L | fwd ms | fwd+bwd ms | tok/s | %bound (fwd) | bound | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for rep in reports for r in rep["results"]):
            frac = r.get("frac_of_bound")
            lines.append(f"| {r['mixer']} | {r['length']} | {fmt(r['fwd_s'] and r['fwd_s'] * 1e3)}"
                         f" | {fmt(r['fwd_bwd_s'] and r['fwd_bwd_s'] * 1e3)} | "
                         f"{fmt(r['tokens_per_s'])} | {fmt(frac and 100 * frac, '.1f')} | "
                         f"{r.get('bound_by') or '-'} | {r['status']} |")
    else:
        lines.append("(no bench_*.json: no mixer of the `seqlab bench` step finished)")
    peers = out / "peers.json"
    lines.append("")
    if peers.exists():
        rep = json.loads(peers.read_text())
        lines += [f"Peers ({rep['dtype']}, {rep['device']}, {rep['date']})", "",
                  "| op | L | fwd ms | fwd+bwd ms | fwd tok/s | fwd+bwd tok/s | note |",
                  "|---|---|---|---|---|---|---|"]
        for r in rep["rows"]:
            lines.append(f"| {r['name']} | {r['length']} | {fmt(r['fwd_ms'])} | "
                         f"{fmt(r['fwd_bwd_ms'])} | {fmt(r['fwd_tok_s'])} | "
                         f"{fmt(r['fwd_bwd_tok_s'])} | {r['note']} |")
    else:
        lines.append("(no peers.json: the peers step did not finish)")
    text = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(pathlib.Path(sys.argv[1])))
