"""The house rules a future change must not break: import contracts, torch-only titok_core, runnable
entry points, documented packages."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BENCHMARKS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name != "common.py")
JOBS = sorted(p for p in (REPO / "jobs").glob("*.py") if p.name != "__init__.py")
PACKAGES = ["titok_core", "pipelines", "pipelines/encode", "pipelines/evaluate", "pipelines/sample",
            "pipelines/train", "jobs"]


def test_import_contracts_hold():
    """jobs > pipelines > titok_core; titok_core torch-only; encode and train independent; no cycles
    (the contracts are in pyproject.toml, [tool.importlinter])."""
    done = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"Contracts: (\d+) kept, 0 broken", done.stdout), done.stdout[-1000:]


def test_titok_core_never_downloads():
    """Weights come into titok_core by local path; fetching URLs is pipelines.storage's job."""
    calls = re.compile(r"load_state_dict_from_url|download_url_to_file|hf_hub_download|urlopen|urlretrieve")
    offenders = [f"{p.name}:{i}" for p in (REPO / "titok_core").glob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if calls.search(line)]
    assert offenders == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_it_holds_and_may_import(package):
    doc = ast.get_docstring(ast.parse((REPO / package / "__init__.py").read_text()))
    assert doc and "May import" in doc, f"{package}/__init__.py needs a docstring saying what it may import"


# `python <script> --help` for every script, in one interpreter: each runs as __main__ with its own folder
# first on sys.path, as `python <script>` runs it (one torch + Ray import instead of one per script)
HELP_ALL = """
import contextlib, io, json, runpy, sys
results = {}
for script in sys.argv[1:]:
    sys.argv, sys.path[0], out = [script, "--help"], script.rsplit("/", 1)[0], io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        code = "returned without exiting"
    except SystemExit as e:
        code = e.code or 0
    except BaseException as e:
        code = f"{type(e).__name__}: {e}"
    results[script] = [code, out.getvalue()[:200]]
print(json.dumps(results))
"""


def test_benchmarks_and_jobs_run_as_scripts():
    """`python benchmarks/<name>.py --help` and `python jobs/<name>.py --help`, as their docstrings say,
    from the repository root."""
    scripts = [str(p.relative_to(REPO)) for p in BENCHMARKS + JOBS]
    done = subprocess.run([sys.executable, "-c", HELP_ALL, *scripts], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {s: r for s, r in results.items() if r[0] != 0 or "usage:" not in r[1]}
    assert failed == {}, failed


def test_no_script_shadows_a_standard_library_module():
    """A script's folder comes first on sys.path when it runs, so benchmarks/tokenize.py would replace the
    standard library's tokenize (imported by linecache, inspect, torch) and break the script at start-up."""
    clashes = [str(p.relative_to(REPO)) for p in (REPO / "benchmarks").glob("*.py") if p.stem in sys.stdlib_module_names]
    clashes += [str(p.relative_to(REPO)) for p in JOBS if p.stem in sys.stdlib_module_names]
    assert clashes == []


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_job_files_stay_thin(job):
    assert len(job.read_text().splitlines()) <= 160, f"{job.name}: move logic into pipelines/"


def test_make_bench_runs_every_benchmark():
    makefile = (REPO / "Makefile").read_text()
    bench = makefile[makefile.index("\nbench:"):].split("\n\n")[0]
    missing = [p.name for p in BENCHMARKS if p.name not in bench and "benchmarks/*.py" not in bench]
    assert missing == [], f"make bench does not run {missing}"
