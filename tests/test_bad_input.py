"""Bad input never costs work (issue 19): the bad-input sweep a new user would try, as one matrix.

Each case is caught either when Snakemake plans (``snakemake -n`` fails with one line naming the field or
file, and nothing is written), or, where only reading the file can tell, by the job that reads it (one line
naming the file, raised before its output is written). docs/bad-input.md is this matrix as a table;
``test_the_documented_table_lists_exactly_these_cases`` keeps the two in step.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_config import _set, default_config
from test_data import write_rows

from refusal_sae.data import build_dataset

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One bad input: ``edit`` turns the embedded default config into the bad one (it may write files into
    the working directory it is given); ``message`` is a regular expression the one-line error must match
    (``{tmp}`` stands for the working directory)."""

    name: str
    edit: Callable[[dict, Path], Any]
    message: str


def _local_dataset(config: dict, tmp: Path, path: Path, **spec: Any) -> None:
    config["datasets"]["mine"] = {"source": {"type": "local", "path": str(path)}, "label": "harmful", **spec}


def _local_saes(config: dict, tmp: Path) -> None:
    saes = config["models"]["smollm2-organism"]["saes"]
    saes.update(type="local", path_template=str(tmp / "my_saes" / "layer_{layer}"))


def _results_is_a_file(config: dict, tmp: Path) -> None:
    # As root every directory is writable (os.access says so too), so the unwritable results/ of the sweep
    # is a file where the directory should be: no user can write into it.
    (tmp / "results").write_text("not a directory")


PLAN_CASES = [
    Case("unknown key, top level", lambda c, t: c.update(seeed=1),
         r"config: Additional properties are not allowed \('seeed' was unexpected\)"),
    Case("unknown key, nested (schema)", lambda c, t: c["datasets"]["harmless"].update(lable="harmless"),
         r"config\.datasets\.harmless: Additional properties are not allowed \('lable' was unexpected\)"),
    Case("unknown key, nested (settings)",
         lambda c, t: c["models"]["smollm2-organism"]["saes"].update(widht_multiplier=8),
         r"config\.models\.smollm2-organism\.saes\.widht_multiplier: unknown key \(allowed: "),
    Case("wrong type (schema)", lambda c, t: c.update(seed="zero"), r"config\.seed: 'zero' is not of type 'integer'"),
    Case("wrong type (settings)", lambda c, t: _set(c, "attribution.k0", "ten"),
         r"config\.attribution\.k0: expected an integer, got 'ten'"),
    Case("unknown model in only_models", lambda c, t: c.update(only_models=["gpt"]),
         r"only_models: unknown model\(s\) \['gpt'\]; known: \['smollm2', 'smollm2-organism'\]"),
    Case("undefined evaluation dataset", lambda c, t: _set(c, "evaluation.datasets", ["advbench"]),
         r"config\.evaluation: dataset 'advbench' is not configured"),
    Case("missing file", lambda c, t: _local_dataset(c, t, t / "prompts.csv"),
         r"config\.datasets\.mine\.source\.path: {tmp}/prompts\.csv: file not found"),
    Case("missing local SAE directory", _local_saes,
         r"config\.models\.smollm2-organism\.saes\.path_template: {tmp}/my_saes/layer_2/cfg\.json: file not found "
         r"\(no sae-lens directory for layer\(s\) \[2, 5, 8, 11, 14, 17, 20, 23, 26\]\)$"),
    Case("splits not summing to 1", lambda c, t: _set(c, "datasets.strongreject.splits",
                                                     {"train": 0.6, "val": 0.2, "test": 0.1}),
         r"config\.datasets\.strongreject\.splits: fractions sum to 0\.9, not 1$"),
    Case("misspelt split name", lambda c, t: _set(c, "datasets.strongreject.splits",
                                                 {"tran": 0.6, "val": 0.1, "test": 0.3}),
         r"config\.datasets\.strongreject\.splits: unknown split 'tran' \(allowed: \['train', 'val', 'test'\]\)"),
    Case("harmful dataset as harmless_dataset", lambda c, t: _set(c, "evaluation.harmless_dataset", "strongreject"),
         r"config\.evaluation\.harmless_dataset: 'strongreject' is labelled 'harmful', not harmless"),
    Case("harmless dataset in evaluation.datasets",
         lambda c, t: _set(c, "evaluation.datasets", ["harmbench_test", "harmless"]),
         r"config\.evaluation\.datasets: 'harmless' is labelled 'harmless', not harmful"),
    Case("selection.k_star: 0", lambda c, t: _set(c, "selection.k_star", 0),
         r"config\.selection\.k_star / evaluation\.grid\.k_stars: set sizes must be >= 1"),
    Case("evaluation.max_prompts: 0", lambda c, t: _set(c, "evaluation.max_prompts", 0),
         r"config\.evaluation\.max_prompts: 0 must be >= 1"),
    Case("negative attribution.n_steps", lambda c, t: _set(c, "attribution.n_steps", -2),
         r"config\.attribution\.n_steps: -2 must be >= 1"),
    Case("attribution.k0: 0", lambda c, t: _set(c, "attribution.k0", 0), r"config\.attribution\.k0: 0 must be >= 1"),
    Case("direction.max_train: 0", lambda c, t: _set(c, "direction.max_train", 0),
         r"config\.direction\.max_train: 0 must be >= 1"),
    Case("negative direction.kl_threshold", lambda c, t: _set(c, "direction.kl_threshold", -0.1),
         r"config\.direction\.kl_threshold: -0\.1 must be > 0"),
    Case("device: gpu0", lambda c, t: c.update(device="gpu0"), r"config\.device: 'gpu0' is not auto, cpu, cuda or cuda:N"),
    Case("unwritable results directory", _results_is_a_file,
         r"working directory: {tmp}/results is not a writable directory"),
]


# Every dry run parses the Snakefile in a fresh process; starting Python and importing Snakemake, torch and
# the library dominate its cost, so one driver imports them once and forks a child per case. Each child runs
# Snakemake's own command line (the user's `snakemake -n`, profile and all) in its working directory.
DRIVER = """
import json, os, sys, traceback
import snakemake.cli
import refusal_sae.config, refusal_sae.methods, refusal_sae.runtime  # the Snakefile's imports, done once
results = []
for workdir in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        out = os.open(os.path.join(workdir, "snakemake.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        code = 0
        try:
            snakemake.cli.main(["-n", "--cores", "2", "--quiet", "rules", "--directory", workdir,
                                "--configfile", os.path.join(workdir, "config.yaml"), "--replace-workflow-config"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not sys.exit: the child must not run the parent's loop on
    results.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(results))
"""


def dry_runs(workdirs: list[Path]) -> list[tuple[int, str]]:
    """``snakemake -n`` on ``workdir/config.yaml`` in each working directory: (exit code, output)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([str(w) for w in workdirs])], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    codes = json.loads(result.stdout.strip().splitlines()[-1])
    return [(code, (w / "snakemake.out").read_text()) for code, w in zip(codes, workdirs, strict=True)]


def _plus_dataset(config: dict, tmp: Path) -> None:
    """A good config, not a bad one: a dataset named ``ok+plus`` evaluated by the base model (unescaped in the
    wildcard constraints, ``+`` made the constraint miss its own name: MissingRuleException)."""
    config["only_models"] = ["smollm2"]  # the baseline of one model reads every evaluation dataset: a small DAG
    config["datasets"]["ok+plus"] = {"source": {"type": "local", "path": str(write_rows(tmp, "txt"))},
                                     "format": "txt", "label": "harmful"}
    config["evaluation"]["datasets"].append("ok+plus")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, str]]:
    """Every plan-time case and the ``ok+plus`` config dry-run once (one driver for all):
    name -> (working directory, exit code, output)."""
    cases = [*PLAN_CASES, Case("ok+plus", _plus_dataset, "")]
    workdirs = []
    for case in cases:
        workdir = tmp_path_factory.mktemp("plan")
        config = copy.deepcopy(default_config())
        case.edit(config, workdir)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        workdirs.append(workdir)
    return {case.name: (w, *run) for case, w, run in zip(cases, workdirs, dry_runs(workdirs), strict=True)}


@pytest.mark.parametrize("case", PLAN_CASES, ids=[c.name for c in PLAN_CASES])
def test_bad_config_stops_the_plan_with_one_line_and_writes_nothing(case: Case, planned) -> None:
    workdir, code, output = planned[case.name]
    assert code != 0, output[-3000:]
    errors = [line for line in output.splitlines() if re.match(r"(config error|working directory): ", line)]
    assert len(errors) == 1, output[-3000:]  # one line says what is wrong...
    message = errors[0].split(": ", 1)[1] if errors[0].startswith("config error") else errors[0]
    assert re.search(case.message.replace("{tmp}", re.escape(str(workdir))), message), errors[0]
    assert len(output.splitlines()) < 10 and "$schema" not in output  # ...and no schema or config is dumped
    assert not (workdir / "resources").exists() and not (workdir / "logs").exists()
    assert (workdir / "results").is_file() if case.name == "unwritable results directory" \
        else not (workdir / "results").exists()


def test_dataset_names_are_regex_escaped_in_the_wildcards(planned) -> None:
    workdir, code, output = planned["ok+plus"]
    assert code == 0, output[-3000:]
    assert re.search(r"^baseline\s+4$", output, re.M), output[-3000:]  # harmbench, strongreject, ok+plus, harmless
    assert not (workdir / "results").exists()


# Job-time cases: only reading the file tells. The dataset job builds the table in memory and writes it only
# after build_dataset returns (atomically), so a failure leaves no output; the slow test below runs the jobs.
SHA_OF_NOTHING = hashlib.sha256(b"").hexdigest()


def _write(tmp: Path, name: str, content: bytes) -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


JOB_CASES: dict[str, tuple[Callable[[Path], tuple[Path, dict[str, Any]]], str]] = {
    "missing prompt column": (lambda t: (write_rows(t, "csv"), {"format": "csv", "prompt_column": "Behaviour"}),
                              r"dataset mine: prompt column 'Behaviour' not found in {path} \(columns: "),
    "empty dataset": (lambda t: (_write(t, "empty.txt", b"\n\n"), {"format": "txt"}),
                      r"dataset mine: no prompts left in {path} after filter \{\}"),
    "empty filter result": (lambda t: (write_rows(t, "csv"), {"format": "csv", "prompt_column": "text",
                                                               "filter": {"kind": "copyright"}}),
                            r"dataset mine: no prompts left in {path} after filter \{'kind': 'copyright'\}"),
    "wrong sha256": (lambda t: (write_rows(t, "csv"), {"format": "csv", "prompt_column": "text",
                                                        "source_sha256": SHA_OF_NOTHING}),
                     r"{path}: sha256 mismatch, expected " + SHA_OF_NOTHING + r", got [0-9a-f]{64}"),
    "non-UTF-8": (lambda t: (_write(t, "latin1.csv", "prompt\nÉcris un poème\n".encode("latin-1")), {"format": "csv"}),
                  r"{path}: cannot read as csv: 'utf-8' codec can't decode byte 0xc9"),
    "JSON not a list": (lambda t: (_write(t, "obj.json", json.dumps({"prompt": "hi"}).encode()), {"format": "json"}),
                        r"{path}: expected a JSON list of objects, got dict"),
}


def _job_dataset(tmp: Path, case: str) -> tuple[Path, dict[str, Any]]:
    """The bad file and the dataset block (as written in a config) of a job-time case."""
    make, _ = JOB_CASES[case]
    path, spec = make(tmp)
    sha = spec.pop("source_sha256", None)
    block = {"source": {"type": "local", "path": str(path), **({"sha256": sha} if sha else {})},
             "label": "harmful", **spec}
    return path, block


@pytest.mark.parametrize("case", list(JOB_CASES))
def test_bad_file_fails_its_dataset_job_with_one_line_naming_it(case: str, tmp_path: Path) -> None:
    from refusal_sae.config import DatasetConfig, build

    path, block = _job_dataset(tmp_path, case)
    with pytest.raises(ValueError if case != "wrong sha256" else RuntimeError) as info:
        build_dataset("mine", build(DatasetConfig, block), 0, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(JOB_CASES[case][1].replace("{path}", re.escape(str(path))) + ".*", message), message


def test_sae_width_mismatch_names_the_sae(tmp_path: Path) -> None:
    """Found when the first SAE-reading job loads the SAEs, before it computes anything; jobs before it
    (datasets, organism, direction) do not depend on the SAEs, so nothing they did is lost."""
    from tiny import make_tiny_sae

    from refusal_sae.config import SAESpec
    from refusal_sae.sae_training import save_sae
    from refusal_sae.saes import load_saes

    save_sae(make_tiny_sae(16, 32, seed=0), tmp_path / "layer_0")
    spec = SAESpec(type="local", layers=[0], path_template=str(tmp_path / "layer_{layer}"))
    with pytest.raises(ValueError) as info:
        load_saes(spec, [0], d_model=32)
    assert str(info.value) == f"SAE for layer 0 has d_in=16 but the model has d_model=32 ({tmp_path / 'layer_0'})"


def test_cuda_device_without_a_gpu_fails_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a plan-time check: a cluster's jobs run where the GPUs are, not where Snakemake plans. The first
    job that loads a model fails before it loads anything (earlier jobs never read ``device``)."""
    import torch

    from refusal_sae.config import ConfigError
    from refusal_sae.models import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"^config\.device: '{name}' but this machine has 0 CUDA device\(s\); "
                                              "use auto or cpu$"):
            pick_device(name)
    assert pick_device("auto").type == "cpu" and pick_device("cpu").type == "cpu"


@pytest.mark.slow
def test_bad_files_fail_their_jobs_and_leave_no_output(tmp_path: Path) -> None:
    """The job-time cases as real dataset jobs (one Snakemake run, --keep-going): each fails, the failed
    job's log is shown with its one-line error last, and no dataset file (nor a temporary one) is left."""
    config = default_config()
    config["only_models"] = ["smollm2"]
    names = {case: f"bad{i}" for i, case in enumerate(JOB_CASES)}
    paths = {}
    for case, name in names.items():
        folder = tmp_path / "inputs" / name
        folder.mkdir(parents=True)
        paths[case], config["datasets"][name] = _job_dataset(folder, case)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--keep-going", "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--replace-workflow-config",
           *(f"resources/datasets/{n}.parquet" for n in names.values())]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode != 0
    for case, name in names.items():
        last = (tmp_path / f"logs/datasets/{name}.log").read_text().strip().splitlines()[-1]
        pattern = JOB_CASES[case][1].replace("{path}", re.escape(str(paths[case]))).replace("dataset mine",
                                                                                           f"dataset {name}")
        assert re.search(pattern, last), last
        assert last in result.stdout + result.stderr  # shown by the profile's show-failed-logs
    assert list((tmp_path / "resources/datasets").glob("*")) == []


def _documented_cases() -> list[str]:
    text = (ROOT / "docs" / "bad-input.md").read_text()
    return re.findall(r"^\| `?([^|`]+?)`? \| (?:plan|job)", text, re.M)


def test_the_documented_table_lists_exactly_these_cases() -> None:
    cases = [c.name for c in PLAN_CASES] + list(JOB_CASES) + ["SAE d_in mismatch", "device: cuda without a GPU"]
    assert _documented_cases() == cases


def test_the_default_config_passes_every_check_the_cases_break() -> None:
    # Every case edits the embedded default: were it rejected itself, each case would fail for its reason.
    from refusal_sae.config import load_pipeline_config, missing_local_files

    assert missing_local_files(load_pipeline_config(default_config())) == []
