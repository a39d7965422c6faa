"""Artifact writes: an empty frame still carries its documented column types."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from refusal_sae.artifacts import check_file, contract_for_path
from refusal_sae.io import write_parquet


def test_an_empty_artifact_keeps_its_documented_schema(tmp_path):
    path = tmp_path / "results" / "m" / "interactions" / "d" / "weights.parquet"
    write_parquet(pd.DataFrame(columns=["prompt_id", "model", "term", "feature_i", "feature_j", "weight"]), path)
    assert check_file(path, contract_for_path(path)) == []
    assert pq.read_schema(path).field("weight").type == pa.float64()


def test_artifacts_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.parquet").stat().st_mode) == 0o644
