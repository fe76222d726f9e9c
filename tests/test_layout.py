"""The package's shape: one import package (peft_bench) from the bench/, methods/ and tasks/
folders, rooms with modules under 400 lines, no import cycle, and an installed wheel that works
from anywhere while `bench`, `methods` and `tasks` are not importable."""

from __future__ import annotations

import pytest

import ast
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"bench": "peft_bench", "methods": "peft_bench.methods", "tasks": "peft_bench.tasks"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p not in ("__init__", "__main__")]
            if f.name == "__main__.py":
                continue
            out[".".join([pkg, *parts])] = f
    return out


def _exports() -> dict[str, str]:
    """``peft_bench``'s lazily imported names -> their modules."""
    tree = ast.parse((ROOT / "bench" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_EXPORTS":
            return {k: f"peft_bench.{v}" for k, v in ast.literal_eval(node.value).items()}
    raise AssertionError("no _EXPORTS in bench/__init__.py")


def import_graph() -> dict[str, set[str]]:
    """Module -> the peft_bench modules it imports (every import statement, at any depth;
    ``from peft_bench import X`` counts as an import of the module X comes from)."""
    mods, exports = _modules(), _exports()
    graph = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else exports.get(a.name, node.module)
                             if node.module == "peft_bench" else node.module)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if not state.get(v) and (cycle := visit(v)):
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if not state.get(m) and (cycle := visit(m)):
            return cycle
    return None


def test_top_level_folders_and_no_module_over_400_lines():
    for folder in ("bench", "methods", "tasks", "tests", "reports"):
        assert (ROOT / folder).is_dir(), folder
    long = {str(f.relative_to(ROOT)): n for folder in FOLDERS for f in (ROOT / folder).rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 400}
    assert not long, long


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["peft_bench.engine.record"] >= {"peft_bench.engine.loop", "peft_bench.core.spec"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the check sees a cycle when there is one
    assert find_cycle({**graph, "peft_bench.core.spec": graph["peft_bench.core.spec"] | {"peft_bench.engine.record"}})


def test_every_package_folder_is_in_the_wheel():
    """pyproject lists the packages (package-dir maps them onto the three folders): a new room
    left out of the list would be missing from every installed copy."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {"peft_bench": "bench", "peft_bench.methods": "methods", "peft_bench.tasks": "tasks"}
    folders = {".".join([FOLDERS[f.relative_to(ROOT).parts[0]], *f.parent.relative_to(ROOT).parts[1:]])
               for folder in FOLDERS for f in (ROOT / folder).rglob("__init__.py")}
    assert set(tool["packages"]) == folders


@pytest.mark.slow
def test_installed_wheel_is_peft_bench_only(tmp_path):
    """Built as a wheel and installed into a fresh venv (the dependencies visible from this
    environment, not its editable install), run from another folder: peft_bench and its API
    import, built-in suites and metric modules ship with it, bench / methods / tasks do not exist."""
    import site

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("peft_bench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # this environment's packages as a plain path entry: its .pth files (the editable finder) are not run
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, env=dict(os.environ, PIP_NO_INDEX="1"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("tasks", "methods"):  # a user's own modules of these names shadow nothing of ours
        (elsewhere / f"{name}.py").write_text("raise RuntimeError('a user module')\n")
    code = textwrap.dedent("""
        import importlib, sys
        import peft_bench
        from peft_bench import run_suite, load_records, summarize, Method, PeftMethod, TaskSpec, register_method
        from peft_bench.core.suite import builtin_suites
        from peft_bench.core.registry import METHODS, load_builtin_plugins
        from peft_bench.interface.task import METRICS_DIR
        assert "site-packages" in peft_bench.__file__, peft_bench.__file__
        assert "quick" in builtin_suites(), builtin_suites()
        assert (METRICS_DIR / "accuracy" / "accuracy.py").is_file()
        from peft_bench.results.html import CHART_JS
        assert CHART_JS.is_file(), CHART_JS  # the report page's embedded plotting library
        load_builtin_plugins()
        assert "lora" in METHODS.names()
        from peft_bench.core.registry import TASKS
        assert "glue_sst2" in TASKS.names()  # task tables shipped as data (tasks/hub_benchmarks.toml)
        for name in ("bench",):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                pass
            else:
                raise SystemExit(f"{name} is importable")
        for name in ("methods", "tasks"):  # only the user's own files answer to these names
            try:
                importlib.import_module(name)
            except RuntimeError as e:
                assert "a user module" in str(e)
            else:
                raise SystemExit(f"{name} is importable")
        print("ok")
    """)
    proc = subprocess.run([py, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
    proc = subprocess.run([venv / "bin" / "peftbench", "list"], cwd=elsewhere, capture_output=True, text=True)
    assert proc.returncode == 0 and "prompt_tuning" in proc.stdout, proc.stderr
