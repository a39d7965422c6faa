"""Code fingerprints behind the rules' rerun triggers; what every entry script's start sets up and logs."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refusal_sae.runtime import source_fingerprint


def _script(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

MODULE = '''"""Module docstring."""

LIMIT = 3
"""Attribute docstring."""


def f(x):
    """Function docstring."""
    return x + LIMIT  # a comment
'''


def _fingerprint(tmp_path: Path, text: str) -> str:
    path = tmp_path / "module.py"
    path.write_text(text)
    return source_fingerprint(path)


def test_docstrings_comments_and_layout_do_not_change_the_fingerprint(tmp_path: Path) -> None:
    base = _fingerprint(tmp_path, MODULE)
    reworded = (MODULE.replace("Module docstring.", "Reworded.").replace("Attribute docstring.", "Why 3.")
                .replace("Function docstring.", "Other words.").replace("# a comment", "# why"))
    assert _fingerprint(tmp_path, reworded) == base
    assert _fingerprint(tmp_path, MODULE.replace("\n\n\ndef", "\n\n\n\ndef")) == base


def test_code_edits_change_the_fingerprint(tmp_path: Path) -> None:
    base = _fingerprint(tmp_path, MODULE)
    assert _fingerprint(tmp_path, MODULE.replace("LIMIT = 3", "LIMIT = 4")) != base
    assert _fingerprint(tmp_path, MODULE.replace("x + LIMIT", "x - LIMIT")) != base
    # A function whose body is only a docstring still differs from one that returns.
    assert _fingerprint(tmp_path, MODULE.replace("    return x + LIMIT  # a comment\n", "")) != base


def _child(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, with ``config`` the default config."""
    root = Path(__file__).resolve().parents[1]
    code = f"import yaml\nconfig = yaml.safe_load(open({str(root / 'config' / 'config.yaml')!r}))\n" + code
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=tmp_path)


def test_start_logs_the_exact_cpu_and_span_of_the_job_when_it_exits(tmp_path: Path) -> None:
    # The child burns CPU after start() and prints its own CPU just before exiting: the logged line must
    # hold at least that (and not much more), which a sampled figure taken before the burn would not.
    code = ("import resource, time\n"
            "from refusal_sae.runtime import start\n"
            "start('job.log', 1, config)\n"
            "start('job.log', 1, config)\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 1.0: pass\n"
            "u = resource.getrusage(resource.RUSAGE_SELF)\n"
            "print(u.ru_utime + u.ru_stime, time.time())\n")
    own_cpu, before_exit = (float(v) for v in _child(code, tmp_path).stdout.split())
    assert (tmp_path / "job.log").read_text().count("job resources:") == 1  # however often start() ran
    jobs = _script("utilisation").logged_jobs(tmp_path)
    assert len(jobs) == 1 and jobs["file"].iloc[0] == "job.log"
    job = jobs.iloc[0]
    assert own_cpu >= 1.0 and own_cpu - 0.002 <= job["cpu_s"] <= own_cpu + 0.2  # the line rounds to ms
    # The line rounds end to the nearest ms, so an end taken after the child's last clock reading may read
    # up to half a ms before it (CI saw .8630593 logged as .863).
    assert job["end"] >= before_exit - 6e-4 and job["wall_s"] == pytest.approx(job["end"] - job["start"], abs=1e-3)
    assert _script("utilisation").logged_jobs(tmp_path, since=job["end"] + 1).empty


def test_start_leaves_torch_unloaded_but_sets_its_threads(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from refusal_sae.runtime import start\n"
            "start(None, 1, config)\n"
            "loaded = 'torch' in sys.modules\n"
            "import torch\n"
            "print(loaded, torch.get_num_threads())\n")
    assert _child(code, tmp_path).stdout.split() == ["False", "1"]


def test_the_modules_of_the_table_and_report_jobs_do_not_load_torch(tmp_path: Path) -> None:
    # The judge (without local judge weights), dataset, manifest, report and summary jobs import only
    # these; torch and transformers would be most of their CPU.
    modules = ("runtime", "io", "config", "judges", "data", "report", "saes", "methods")
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module('refusal_sae.' + name)\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    assert _child(code, tmp_path).stdout.split() == ["False", "False"]
