"""Parquet artifacts: atomic writes with the producing settings stored as key-value metadata."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import contract_for_path, type_null_columns

METADATA_KEY = b"refusal_sae"


def publish(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a finished temporary file to ``dest`` atomically, with the mode a new file gets under the
    process umask (``mkstemp`` creates 0600, which nobody else on a shared cluster could read)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def publish_directory(tmp: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move a finished temporary directory (e.g. from ``mkdtemp``, mode 0700) to ``dest``, replacing an
    existing one; it and everything in it get the modes new files and directories get under the process
    umask (``mkdtemp`` and safetensors write 0700 / 0600, which nobody else on a shared cluster could read)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(tmp):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)
    os.chmod(tmp, 0o777 & ~umask)
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``df`` to ``path`` atomically (temporary file, then rename) with JSON metadata.

    When ``path`` is a documented artifact, all-null columns (an empty frame's) get their documented type.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    contract = contract_for_path(path)
    if contract is not None:
        table = type_null_columns(table, contract)
    if metadata is not None:
        meta = dict(table.schema.metadata or {})
        meta[METADATA_KEY] = json.dumps(metadata, default=str, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Read an artifact; a missing file is reported by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: artifact not found")
    return pd.read_parquet(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The settings stored with an artifact by :func:`write_parquet` (empty if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}
