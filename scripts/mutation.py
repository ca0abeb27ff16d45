"""Mutation testing of seqlab/ops, seqlab/layers and seqlab/sampling.py (not run in CI).

Mutants come from cosmic-ray (``pip install -e '.[mutation]'``); each is checked only by the
tests that reach its line, found from a per-test coverage map. Everything happens in a scratch
copy of the working tree (WORKDIR/tree); the repository itself is never modified.

    python scripts/mutation.py map                  # copy the tree, per-test line coverage
    python scripts/mutation.py sync                 # new tree, the old map carried over by diff
    python scripts/mutation.py run --budget-min 60  # sampled mutants until the budget is spent
    python scripts/mutation.py rerun --max-tests 99 --with tests/x.py  # survivors again
    python scripts/mutation.py report               # scores per module, the survivors

Steps:
1. ``map`` copies the tracked and untracked (not ignored) files into WORKDIR/tree and runs the
   test files of TEST_PATHS there under pytest-cov with one coverage context per test
   (``--cov-context=test``); ``scripts/mutation_plugin.py`` clears JAX's trace caches before each
   test, so that a test is recorded as reaching every line it traces.
2. ``run`` enumerates the mutants of every module with ``cosmic-ray init``/``dump``, drops those
   that cannot change behaviour or only raise a TypeError on arrays (see ``keep``), shuffles
   them (``--seed``), and takes them round-robin over the three groups (ops, layers, generate).
   Each is applied with ``cosmic-ray apply``, checked by ``pytest -x`` on the tests covering its
   lines (fastest first, at most ``--max-tests``), and the file is restored. A failing or
   erroring run kills the mutant; one past ``--timeout`` counts as killed (timeout); a mutant
   that no test reaches survives ("not reached"). Results append to WORKDIR/results.jsonl,
   so a run can stop and resume; it stops when ``--budget-min`` of wall time is spent.
   ``sync`` replaces a stale map without re-running it (the map costs ~40 min of 2 cores): it
   copies the current tree, carries each test's lines over to the new files by a line diff
   (a module renamed or split is matched against MOVED's old files; a line new since the map
   gets the tests of the nearest old line above it in the same function), drops tests that no
   longer exist, and starts a fresh results.jsonl (the old one is kept as results.old.jsonl).
3. ``rerun`` copies the current tests/ into the scratch tree and re-checks the survivors
   (after tests were added for them); the newer result of a mutant replaces the older. Tests
   newer than the map reach no mutant through it: name them with ``--with`` (run after the
   covering tests of every survivor). With ``--fallback`` a mutant on a line the map does not
   know (code newer than the map, decorators and defaults run at import) is checked by its
   module's own test file, tests/<dir>/test_<module>.py, where there is one; ``rerun
   --fallback`` re-checks only those.

Run it niced on a shared machine: ``nice -n 10 python scripts/mutation.py run ...``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGETS = ["seqlab/ops", "seqlab/layers", "seqlab/sampling.py"]
EXCLUDED = ["seqlab/ops/reference", "__init__.py"]  # the references are test code
TEST_PATHS = ["tests/ops", "tests/layers", "tests/models", "tests/test_generate.py",
              "tests/test_sampling_reference.py"]
# a float array under <<, >>, |, &, ^ raises TypeError at trace time: trivially killed mutants
# modules renamed or split since a map was made: new path -> old paths whose lines it may carry
MOVED = {"seqlab/sampling.py": ["seqlab/generate.py"],
         "seqlab/ops/dsa.py": ["seqlab/ops/attention.py", "seqlab/layers/sparse.py"]}
TRIVIAL = ("_BitOr", "_BitAnd", "_BitXor", "_LShift", "_RShift")


def _env(workdir: Path | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f".{os.pathsep}{REPO / 'scripts'}")
    if workdir is not None:  # programs a mutant leaves unchanged compile once for all mutants
        env.update(JAX_COMPILATION_CACHE_DIR=str(workdir / "jax-cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)  # tests/conftest.py sets its own
    return env


def _modules() -> list[str]:
    out = []
    for t in TARGETS:
        p = REPO / t
        files = [p] if p.is_file() else sorted(p.rglob("*.py"))
        for f in files:
            rel = str(f.relative_to(REPO))
            if not any(e in rel for e in EXCLUDED):
                out.append(rel)
    return out


def group(module: str) -> str:
    return "sampling" if module.endswith(("sampling.py", "generate.py")) else module.split("/")[1]


def _copy_tree(tree: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (tree / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, tree / f)


def cmd_map(args) -> None:
    tree = args.workdir / "tree"
    _copy_tree(tree)
    env = dict(_env(), SEQLAB_MUTATION_DURATIONS=str(args.workdir / "durations"),
               COVERAGE_FILE=str(args.workdir / "coverage.db"))
    cov = [f"--cov={t}" for t in ("seqlab.ops", "seqlab.layers", "seqlab.sampling")]
    subprocess.run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "-p", "mutation_plugin",
                    "--cov-context=test", "--cov-report=", "-n", str(args.jobs), *cov,
                    *TEST_PATHS],
                   cwd=tree, env=env, check=False)
    durations = {}
    for f in args.workdir.glob("durations.*.json"):  # one file per pytest-xdist worker
        durations.update(json.loads(f.read_text()))
    (args.workdir / "durations.json").write_text(json.dumps(durations))
    import coverage

    data = coverage.CoverageData(basename=str(args.workdir / "coverage.db"))
    data.read()
    cover: dict[str, dict[int, list[str]]] = {}
    for path in data.measured_files():
        rel = str(Path(path).relative_to(tree.resolve()))
        by_line = data.contexts_by_lineno(path)
        cover[rel] = {
            line: sorted({c.split("|")[0] for c in ctx if c}) for line, ctx in by_line.items()
        }
    (args.workdir / "coverage.json").write_text(json.dumps(cover))
    print(f"coverage map: {len(cover)} files -> {args.workdir / 'coverage.json'}")


def _functions(source: str) -> list[tuple[int, int]]:
    """(first, last) line of every function, innermost last."""
    return sorted((n.lineno, n.end_lineno) for n in ast.walk(ast.parse(source))
                  if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))


def _carry(old: list[str], old_cover: dict, new: list[str]) -> dict[int, list[str]]:
    """Tests per line of ``new`` from the map of ``old`` (lists of source lines)."""
    import difflib

    out: dict[int, list[str]] = {}
    sm = difflib.SequenceMatcher(None, [x.strip() for x in old], [x.strip() for x in new],
                                 autojunk=False)
    for a, b, size in sm.get_matching_blocks():
        for k in range(size):
            tests = old_cover.get(str(a + k + 1))
            if tests:
                out[b + k + 1] = tests
    return out


def cmd_sync(args) -> None:
    tree, wd = args.workdir / "tree", args.workdir
    old_tree = wd / "tree.old"
    if old_tree.exists():
        shutil.rmtree(old_tree)
    tree.rename(old_tree)
    old_cover = json.loads((wd / "coverage.json").read_text())
    _copy_tree(tree)
    listed = subprocess.run([str(BIN / "pytest"), "--collect-only", "-q", "-p",
                             "no:cacheprovider", *TEST_PATHS], cwd=tree, env=_env(),
                            capture_output=True, text=True).stdout.splitlines()
    alive = {t for t in listed if "::" in t}
    cover = {}
    for module in _modules():
        new_src = (tree / module).read_text()
        new = new_src.splitlines()
        lines: dict[int, list[str]] = {}
        for old_mod in [module, *MOVED.get(module, [])]:
            if (old_tree / old_mod).exists() and old_mod in old_cover:
                old = (old_tree / old_mod).read_text().splitlines()
                for ln, tests in _carry(old, old_cover[old_mod], new).items():
                    lines.setdefault(ln, tests)
        for first, last in _functions(new_src):  # new lines: the nearest old line above
            prev = None
            for ln in range(first, last + 1):
                if ln in lines:
                    prev = lines[ln]
                elif prev is not None and new[ln - 1].strip():
                    lines[ln] = prev
        cover[module] = {str(ln): [t for t in ts if t in alive] for ln, ts in lines.items()}
    shutil.copy2(wd / "coverage.json", wd / "coverage.old.json")
    (wd / "coverage.json").write_text(json.dumps(cover))
    if (wd / "results.jsonl").exists():
        (wd / "results.jsonl").rename(wd / "results.old.jsonl")
    shutil.rmtree(wd / "sessions", ignore_errors=True)
    shutil.rmtree(old_tree)
    n = sum(len(v) for v in cover.values())
    print(f"coverage map carried over: {n} lines of {len(cover)} files, {len(alive)} tests")


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every annotation: with ``from __future__ import annotations``
    they are never evaluated, so their mutants are equivalent."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        ann = []
        if isinstance(node, ast.arg | ast.AnnAssign):
            ann = [node.annotation]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            ann = [node.returns]
        for a in ann:
            if a is not None:
                spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def keep(m: dict, spans) -> bool:
    if m["operator_name"].endswith(TRIVIAL):
        return False
    start = tuple(m["start_pos"])
    return not any(s <= start < e for s, e in spans)


def _mutants(args) -> list[dict]:
    tree = args.workdir / "tree"
    out = []
    for module in _modules():
        session = args.workdir / "sessions" / (module.replace("/", "_") + ".sqlite")
        session.parent.mkdir(exist_ok=True)
        cfg = session.with_suffix(".toml")
        cfg.write_text(f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {args.timeout}\n'
                       'excluded-modules = []\ntest-command = "true"\n'
                       '[cosmic-ray.distributor]\nname = "local"\n')
        if not session.exists():
            subprocess.run([str(BIN / "cosmic-ray"), "init", str(cfg), str(session)], cwd=tree,
                           check=True)
        dump = subprocess.run([str(BIN / "cosmic-ray"), "dump", str(session)], cwd=tree,
                              capture_output=True, text=True, check=True).stdout
        spans = _annotation_spans((tree / module).read_text())
        for line in dump.splitlines():
            item = json.loads(line)[0]
            (m,) = item["mutations"]
            if keep(m, spans):
                out.append(dict(m, job_id=item["job_id"]))
    return out


def _order(mutants: list[dict], seed: int) -> list[dict]:
    """Shuffled per group, then interleaved: a budget cut leaves a uniform sample of each."""
    rng = random.Random(seed)
    groups = defaultdict(list)
    for m in sorted(mutants, key=lambda m: m["job_id"]):
        groups[group(m["module_path"])].append(m)
    for g in groups.values():
        rng.shuffle(g)
    order, i = [], 0
    while any(i < len(g) for g in groups.values()):
        order += [g[i] for g in groups.values() if i < len(g)]
        i += 1
    return order


def _results(workdir: Path, name: str = "results.jsonl") -> dict[str, dict]:
    path = workdir / name
    if not path.exists():
        return {}
    return {r["job_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _check(m: dict, args, cover, durations) -> dict:
    tree = args.workdir / "tree"
    lines = range(m["start_pos"][0], m["end_pos"][0] + 1)
    tests = sorted({t for ln in lines for t in cover.get(m["module_path"], {}).get(str(ln), [])},
                   key=lambda t: durations.get(t, 1e9))[: args.max_tests]
    if not tests and args.fallback:  # lines the map does not know: the module's own test file
        mod = Path(m["module_path"])
        own = Path("tests", *mod.parts[1:-1], f"test_{mod.name}")
        tests = [str(own)] if (tree / own).exists() else []
    tests += [t for t in args.extra if t not in tests]
    src = tree / m["module_path"]
    line = src.read_text().splitlines()[m["start_pos"][0] - 1].strip()
    res = dict(m, line=line, tests=len(tests))
    if not tests:
        return dict(res, outcome="survived", detail="not reached")
    original = src.read_bytes()
    start = time.time()
    try:
        subprocess.run([str(BIN / "cosmic-ray"), "apply", m["module_path"], m["operator_name"],
                        str(m["occurrence"])], cwd=tree, check=True, capture_output=True)
        res["mutated"] = src.read_text().splitlines()[m["start_pos"][0] - 1].strip()
        try:
            p = subprocess.run([str(BIN / "pytest"), "-x", "-q", "-p", "no:cacheprovider",
                                *tests], cwd=tree, env=_env(args.workdir),
                               capture_output=True, text=True, timeout=args.timeout)
            killed = p.returncode != 0
            tail = p.stdout.strip().splitlines()[-1:] if p.stdout else []
            res.update(outcome="killed" if killed else "survived", detail=" ".join(tail))
            failed = [ln for ln in p.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
            if failed:  # the killing test
                res["by"] = failed[0].split()[1]
        except subprocess.TimeoutExpired:
            res.update(outcome="killed", detail="timeout")
    finally:
        src.write_bytes(original)
    res["seconds"] = round(time.time() - start, 1)
    return res


def cmd_run(args, only: set[str] | None = None) -> None:
    cover = json.loads((args.workdir / "coverage.json").read_text())
    durations = json.loads((args.workdir / "durations.json").read_text())
    done = _results(args.workdir)
    mutants = _order(_mutants(args), args.seed)
    if only is not None:
        todo = [m for m in mutants if m["job_id"] in only]
    else:
        todo = [m for m in mutants if m["job_id"] not in done]
    deadline = time.time() + 60 * args.budget_min
    with open(args.workdir / "results.jsonl", "a") as out:
        for m in todo:
            if time.time() > deadline:
                print("budget spent")
                break
            r = _check(m, args, cover, durations)
            out.write(json.dumps(r) + "\n")
            out.flush()
            print(f"{r['outcome']:8s} {r['module_path']}:{r['start_pos'][0]} "
                  f"{r['operator_name']} ({r.get('seconds', 0)} s, {r['tests']} tests)",
                  flush=True)


def cmd_rerun(args) -> None:
    tree = args.workdir / "tree"
    shutil.rmtree(tree / "tests")
    shutil.copytree(REPO / "tests", tree / "tests")
    survivors = {j for j, r in _results(args.workdir).items()
                 if r["outcome"] == "survived" and (r["detail"] == "not reached") == args.fallback}
    cmd_run(args, only=survivors)


def cmd_report(args) -> None:
    res = list(_results(args.workdir, args.results).values())
    total = defaultdict(lambda: [0, 0, 0])  # killed, survived, not reached
    for r in res:
        t = total[r["module_path"]]
        t[0 if r["outcome"] == "killed" else 2 if r["detail"] == "not reached" else 1] += 1
    print("| module | mutants | killed | survived | not reached | score |")
    print("|---|---|---|---|---|---|")
    groups = defaultdict(lambda: [0, 0, 0])
    for mod in sorted(total):
        k, s, n = total[mod]
        groups[group(mod)] = [a + b for a, b in zip(groups[group(mod)], (k, s, n), strict=True)]
        print(f"| {mod} | {k + s + n} | {k} | {s} | {n} | {100 * k / (k + s + n):.0f}% |")
    for g, (k, s, n) in sorted(groups.items()):
        print(f"| **{g}** | {k + s + n} | {k} | {s} | {n} | **{100 * k / (k + s + n):.0f}%** |")
    print("\nSurvivors:")
    for r in sorted(res, key=lambda r: (r["module_path"], r["start_pos"])):
        if r["outcome"] == "survived":
            print(f"- {r['module_path']}:{r['start_pos'][0]} {r['operator_name']} "
                  f"[{r['detail']}]: `{r['line']}` -> `{r.get('mutated', '')}`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("map", "sync", "run", "rerun", "report"))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/seqlab-mutation"))
    ap.add_argument("--budget-min", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    ap.add_argument("--max-tests", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with", dest="extra", nargs="*", default=[],
                    help="tests run for every mutant besides its covering ones")
    ap.add_argument("--fallback", action="store_true",
                    help="unmapped lines: run the module's own test file")
    ap.add_argument("--results", default="results.jsonl", help="the file report reads")
    ap.add_argument("--jobs", type=int, default=2, help="pytest-xdist workers for the map")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    commands = {"map": cmd_map, "sync": cmd_sync, "run": cmd_run, "rerun": cmd_rerun,
                "report": cmd_report}
    commands[args.command](args)


if __name__ == "__main__":
    main()
