"""The artifact contracts: the checker catches missing, undocumented and mistyped columns and unknown
files, the specific patterns win over the general ones, and docs/artifacts.md documents exactly these."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from refusal_sae.artifacts import CONTRACTS, check_artifacts, contract_for, markdown_table
from refusal_sae.attribution import ATTRIBUTION_COLUMNS, CANDIDATE_COLUMNS
from refusal_sae.direction import DIRECTION_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _write(root: Path, relative: str, frame: pd.DataFrame) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def _training_log() -> pd.DataFrame:
    return pd.DataFrame({"step": [0, 1], "loss": [1.5, 0.5]})


def test_a_conforming_run_has_no_problems(tmp_path):
    _write(tmp_path, "results/m/organism/training.parquet", _training_log())
    assert check_artifacts(tmp_path) == []


def test_missing_undocumented_and_mistyped_columns_are_named(tmp_path):
    _write(tmp_path, "results/m/organism/training.parquet", pd.DataFrame({"step": [0], "extra": [1]}))
    _write(tmp_path, "results/n/organism/training.parquet", pd.DataFrame({"step": [0.5], "loss": [1.0]}))
    problems = check_artifacts(tmp_path)
    assert len(problems) == 3
    assert any("missing columns ['loss']" in p and "results/m/" in p for p in problems)
    assert any("undocumented columns ['extra']" in p for p in problems)
    assert any("column 'step' is double, documented as int" in p and "results/n/" in p for p in problems)


def test_an_artifact_without_a_contract_is_a_problem(tmp_path):
    _write(tmp_path, "results/m/organism/training.parquet", _training_log())
    _write(tmp_path, "results/m/mystery/table.parquet", _training_log())
    (problem,) = check_artifacts(tmp_path)
    assert "mystery/table.parquet" in problem and "no documented schema" in problem


def test_an_empty_root_is_a_problem(tmp_path):
    (problem,) = check_artifacts(tmp_path)
    assert "no Parquet artifacts" in problem


def test_specific_patterns_win_over_general_ones():
    induction = contract_for("results/m/generations/harmless/induction_ours_global.parquet")
    plain = contract_for("results/m/generations/harmless/ours_global.parquet")
    assert induction is not None and "value" in induction.columns
    assert plain is not None and "judge_label" in plain.columns
    assert contract_for("results/m/attribution/faithfulness.parquet").columns.keys() >= {"spearman"}
    assert contract_for("results/m/attribution/train.parquet").columns.keys() >= {"target_id"}
    assert contract_for("results/m/generations/harmless/nested/x.parquet") is None


def test_every_pattern_is_reachable():
    # A contract shadowed by an earlier, more general one could never be checked.
    for contract in CONTRACTS:
        example = contract.pattern.replace("{model}", "m").replace("{dataset}", "d").replace("{method}", "x")
        assert contract_for(example) is contract, contract.pattern


def test_the_docs_document_exactly_these_contracts():
    assert markdown_table() in (ROOT / "docs" / "artifacts.md").read_text()


def test_contracts_agree_with_the_columns_the_producers_declare():
    def columns(pattern: str) -> set[str]:
        return set(contract_for(pattern).columns)

    assert columns("results/m/attribution/train.parquet") == set(ATTRIBUTION_COLUMNS)
    assert columns("results/m/attribution/candidates.parquet") == set(CANDIDATE_COLUMNS)
    assert columns("results/m/direction/candidates.parquet") == {*DIRECTION_COLUMNS, "kl_threshold_used"}
