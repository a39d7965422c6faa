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


def test_model_and_sae_directories_get_the_umask_mode(tmp_path, tiny_chat, tiny_saes):
    import os
    import stat

    from refusal_sae.models import save_hf_directory
    from refusal_sae.sae_training import save_sae

    old = os.umask(0o022)
    try:
        model_dir = save_hf_directory(tiny_chat.model, tiny_chat.tokenizer, tmp_path / "model")
        sae_dir = save_sae(tiny_saes[0], tmp_path / "sae")
    finally:
        os.umask(old)
    for directory in (model_dir, sae_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
        assert all(stat.S_IMODE(f.stat().st_mode) & 0o044 for f in directory.iterdir()), directory
