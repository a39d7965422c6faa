"""The documented schema of every Parquet artifact a run writes, and a checker for a finished run.

Each :class:`ArtifactContract` names a path pattern (``{model}``, ``{dataset}``, ``{method}`` stand
for one path component) and the exact columns with their kinds. A run conforms when every Parquet
file under ``results/`` and ``resources/datasets/`` matches a contract (first match wins, so the
specific patterns come before the general ones) and holds exactly the contract's columns, each of its
kind. The artifact table of ``docs/artifacts.md`` is :func:`markdown_table`; a test keeps the two identical.

Usage: ``python -m refusal_sae.artifacts [ROOT]`` (ROOT defaults to the working directory) prints
one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

STR, INT, FLOAT, BOOL, VECTOR, NULLABLE_STR = "str", "int", "float", "bool", "list<float>", "str|null"

_METRIC_COLUMNS = {"method": STR, "dataset": STR, "metric": STR, "value": FLOAT, "ci_low": FLOAT,
                   "ci_high": FLOAT, "n": INT}
_DIRECTION_COLUMNS = {"layer": INT, "position": INT, "vector": VECTOR, "ablation_score": FLOAT,
                      "steering_score": FLOAT, "kl": FLOAT, "filtered": BOOL, "reason": STR, "chosen": BOOL,
                      "kl_threshold_used": FLOAT}
_JUDGED_METRIC_COLUMNS = {**_METRIC_COLUMNS, "n_features": FLOAT, "judge": STR, "note": STR, "variant": STR}
_WEIGHT_COLUMNS = {"model": STR, "term": STR, "feature_i": STR, "feature_j": NULLABLE_STR, "weight": FLOAT}
_SET_COLUMNS = {"scope": STR, "layer": INT, "feature": INT, "rank": INT, "score": FLOAT, "method": STR}
_CANDIDATE_COLUMNS = {"layer": INT, "feature": INT, "cosine": FLOAT, "rank": INT}
_ATTRIBUTION_COLUMNS = {"prompt_id": STR, "layer": INT, "feature": INT, "score": FLOAT, "cosine": FLOAT,
                        "target_id": INT}
_AP_GLOBAL_COLUMNS = {"layer": INT, "feature": INT, "score": FLOAT, "rank": INT}
_AP_PROMPT_COLUMNS = {"prompt_id": STR, **_AP_GLOBAL_COLUMNS}
_GENERATION_COLUMNS = {"prompt_id": STR, "method": STR, "setting": STR, "completion": STR, "refusal_score": FLOAT,
                       "refused": BOOL, "judge": STR, "judge_label": NULLABLE_STR}
_PAIR_COLUMNS = {"pair_id": STR, "prompt_id": STR, "dataset": STR, "source": STR, "variant_id": STR, "kind": STR,
                 "explicit": STR, "adversarial": STR}
_JUDGMENT_COLUMNS = {"prompt_id": STR, "method": STR, "judge": STR, "judge_label": NULLABLE_STR, "harmful": BOOL,
                     "note": STR}


@dataclass(frozen=True)
class ArtifactContract:
    """One artifact: its path pattern relative to the run root, its columns and what a row is."""

    pattern: str
    columns: dict[str, str]
    row: str

    def matches(self, relative_path: str) -> bool:
        """Whether ``relative_path`` (POSIX, relative to the run root) is an instance of the pattern."""
        regex = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(self.pattern))
        return re.fullmatch(regex, relative_path) is not None


CONTRACTS: tuple[ArtifactContract, ...] = (
    ArtifactContract("resources/datasets/{dataset}.parquet",
                     {"prompt_id": STR, "prompt": STR, "category": STR, "source": STR, "split": STR, "label": STR},
                     "prompt"),
    ArtifactContract("results/datasets/overlap.parquet",
                     {"prompt": STR, "dataset": STR, "prompt_id": STR, "split": STR, "leak": BOOL},
                     "occurrence of a prompt that several datasets share (leak: fitted on in one, evaluated in another)"),
    ArtifactContract("results/{model}/baseline/{dataset}.parquet",
                     {"prompt_id": STR, "split": STR, "refusal_score": FLOAT, "first_token": STR,
                      "first_token_refusal": BOOL, "completion": STR, "refused": BOOL},
                     "prompt: greedy completion of the unedited model"),
    ArtifactContract("results/{model}/organism/training.parquet", {"step": INT, "loss": FLOAT},
                     "optimiser step of the organism fine-tune"),
    ArtifactContract("results/{model}/saes/corpus.parquet",
                     {"prompt_id": STR, "label": STR, "role": STR, "response": STR, "text": STR},
                     "transcript the SAEs are trained (train role) or evaluated (val role) on"),
    ArtifactContract("results/{model}/saes/quality.parquet",
                     {"layer": INT, "d_sae": INT, "fraction_variance_explained": FLOAT, "l0": FLOAT,
                      "dead_fraction": FLOAT, "ce_clean": FLOAT, "ce_sae": FLOAT, "ce_zero": FLOAT,
                      "ce_recovered": FLOAT},
                     "SAE layer, on held-out transcripts"),
    ArtifactContract("results/{model}/direction/prompts.parquet",
                     {"prompt_id": STR, "prompt": STR, "label": STR, "role": STR, "refusal_score": FLOAT,
                      "first_token_refusal": BOOL, "kept": BOOL},
                     "fitting prompt and whether the refusal filter kept it"),
    ArtifactContract("results/{model}/activations/train_means.parquet",
                     {"label": STR, "layer": INT, "position": INT, "activation": VECTOR},
                     "label x layer x post-instruction position: mean resid_post"),
    ArtifactContract("results/{model}/direction/candidates.parquet", _DIRECTION_COLUMNS,
                     "candidate direction (layer x position) with its selection scores"),
    ArtifactContract("results/{model}/direction/direction.parquet", _DIRECTION_COLUMNS,
                     "the chosen direction (one row)"),
    ArtifactContract("results/{model}/attribution/candidates.parquet", _CANDIDATE_COLUMNS,
                     "cosine candidate (top-K0 per SAE layer)"),
    ArtifactContract("results/{model}/attribution/faithfulness.parquet",
                     {"scope": STR, "spearman": FLOAT, "overlap_at_k": FLOAT, "k": INT, "n": INT, "path": STR},
                     "LA-IG (per integrated-gradients path) vs exact patching, per prompt and pooled"),
    ArtifactContract("results/{model}/attribution/ap_global.parquet", _AP_GLOBAL_COLUMNS,
                     "AP baseline: top feature over all latents, training prompts"),
    ArtifactContract("results/{model}/attribution/ap/{dataset}.parquet", _AP_PROMPT_COLUMNS,
                     "AP baseline: top latent (over all latents) of one evaluation prompt"),
    ArtifactContract("results/{model}/attribution/{dataset}.parquet", _ATTRIBUTION_COLUMNS,
                     "prompt x cosine candidate: LA-IG score (dataset `train` = the fitting prompts)"),
    ArtifactContract("results/{model}/features/peaks.parquet",
                     {"method": STR, "layer": INT, "feature": INT, "region": STR, "share": FLOAT, "mean_peak": FLOAT},
                     "global-set latent x prompt region: share of harmful training prompts on which it peaks there"),
    ArtifactContract("results/{model}/features/{method}.parquet", _SET_COLUMNS,
                     "member of a global feature set (scope `global`)"),
    ArtifactContract("results/{model}/features/{dataset}/{method}.parquet", _SET_COLUMNS,
                     "member of a per-prompt feature set of one evaluation dataset; scope = its prompt_id"),
    ArtifactContract("results/{model}/generations/{dataset}/induction_{method}.parquet",
                     {"prompt_id": STR, "method": STR, "setting": STR, "value": FLOAT, "completion": STR,
                      "refusal_score": FLOAT, "refused": BOOL, "judge": STR},
                     "harmless prompt x induction value: completion with the set's latents held at value (or the "
                     "direction added), and its first token's refusal log-odds"),
    ArtifactContract("results/{model}/generations/{dataset}/{method}.parquet", _GENERATION_COLUMNS,
                     "prompt: completion under the method's intervention, and its first token's refusal log-odds"),
    ArtifactContract("results/{model}/judgments/{dataset}/{method}.parquet", _JUDGMENT_COLUMNS,
                     "prompt x judge: verdict on a completion"),
    ArtifactContract("results/{model}/in_sample/{dataset}/direction.parquet", _DIRECTION_COLUMNS,
                     "in-sample variant: the direction fitted on one evaluation dataset's refused prompts (one row)"),
    ArtifactContract("results/{model}/in_sample/{dataset}/attribution/candidates.parquet", _CANDIDATE_COLUMNS,
                     "in-sample variant: cosine candidate of that dataset's direction"),
    ArtifactContract("results/{model}/in_sample/{dataset}/attribution/la_ig.parquet", _ATTRIBUTION_COLUMNS,
                     "in-sample variant: prompt x cosine candidate, LA-IG with that dataset's direction"),
    ArtifactContract("results/{model}/in_sample/{dataset}/attribution/ap.parquet", _AP_PROMPT_COLUMNS,
                     "in-sample variant: top latent of one prompt over all latents"),
    ArtifactContract("results/{model}/in_sample/{dataset}/attribution/ap_global.parquet", _AP_GLOBAL_COLUMNS,
                     "in-sample variant: top latent over all latents, mean over that dataset's prompts"),
    ArtifactContract("results/{model}/in_sample/{dataset}/features/{method}.parquet", _SET_COLUMNS,
                     "in-sample variant: member of a feature set fitted on that dataset's prompts"),
    ArtifactContract("results/{model}/in_sample/{dataset}/generations/{method}.parquet", _GENERATION_COLUMNS,
                     "in-sample variant: prompt, completion under the method's intervention"),
    ArtifactContract("results/{model}/in_sample/{dataset}/judgments/{method}.parquet", _JUDGMENT_COLUMNS,
                     "in-sample variant: prompt x judge, verdict on a completion"),
    ArtifactContract("results/{model}/greedy/{dataset}.parquet",
                     {"prompt_id": STR, "layer": INT, "feature": INT, "tau": FLOAT, "order": STR, "kept": BOOL,
                      "delta": FLOAT, "p_clean": FLOAT, "p_ablated": FLOAT},
                     "Study B: refused prompt x tau x restore order x active candidate, kept in the minimal set or not"),
    ArtifactContract("results/{model}/interactions/activations/fit.parquet",
                     {"model": STR, "split": STR, "metric": STR, "value": FLOAT},
                     "Study B activations design: FM or linear classifier, split x metric"),
    ArtifactContract("results/{model}/interactions/activations/weights.parquet", _WEIGHT_COLUMNS,
                     "Study B activations design: a weight of the FM (bias, unary, pair) or the linear model"),
    ArtifactContract("results/{model}/interactions/{dataset}/selected.parquet",
                     {"prompt_id": STR, "method": STR, "layer": INT, "feature": INT, "rank": INT, "score": FLOAT},
                     "Study B: member of a prompt's minimal set or of its FM / linear / random extension"),
    ArtifactContract("results/{model}/interactions/{dataset}/weights.parquet", {"prompt_id": STR, **_WEIGHT_COLUMNS},
                     "Study B masks design: a weight of one prompt's FM or linear model"),
    ArtifactContract("results/{model}/interactions/{dataset}/samples.parquet",
                     {"prompt_id": STR, "mask_id": INT, "role": STR, "target": FLOAT, "layer": INT, "feature": INT,
                      "ablated": BOOL},
                     "Study B masks design: latent of one sampled mask, with the mask's refusal log-odds"),
    ArtifactContract("results/{model}/interactions/{dataset}/fit.parquet",
                     {"prompt_id": STR, "model": STR, "metric": STR, "value": FLOAT},
                     "Study B masks design: held-out fit of one prompt's FM or linear model"),
    ArtifactContract("results/{model}/studyb/{dataset}/generations/{method}.parquet",
                     {"prompt_id": STR, "method": STR, "setting": STR, "n_features": INT, "completion": STR,
                      "refusal_score": FLOAT, "refused": BOOL},
                     "Study B: refused prompt x setting, completion with its own set zeroed"),
    ArtifactContract("results/{model}/studyb/capability.parquet",
                     {"prompt_id": STR, "dataset": STR, "method": STR, "n_features": INT, "metric": STR,
                      "value": FLOAT},
                     "Study B CE table: one prompt's jailbreaking set zeroed on the harmless answers or generic text"),
    ArtifactContract("results/{model}/hydra/{dataset}_experiments.parquet",
                     {"prompt_id": STR, "experiment": STR, "refusal_score": FLOAT, "refused": BOOL, "n_hydras": INT,
                      "value": FLOAT},
                     "Study B hydra: a BOS-hold generation (bos_none; bos_clean / bos_woken: the verified hydras "
                     "held; bos_silent_*: every silent latent of the set held; n_hydras: latents held) or a "
                     "stage-3-only deactivation number of one prompt"),
    ArtifactContract("results/{model}/hydra/{dataset}.parquet",
                     {"prompt_id": STR, "layer": INT, "feature": INT, "silent": BOOL, "critical": BOOL,
                      "loo_refusal_logodds": FLOAT, "woken_region": STR, "woken_position": INT,
                      "woken_activation": FLOAT, "woken_regions": STR, "bos_activation": FLOAT,
                      "critical_verified": BOOL},
                     "Study B hydra: latent of a jailbreaking set, silent on the clean prompt or not, critical or not"),
    ArtifactContract("results/{model}/metrics/studyb.parquet",
                     {**_METRIC_COLUMNS, "setting": STR, "n_features": FLOAT, "baseline": NULLABLE_STR,
                      "p_value": FLOAT, "first_only": FLOAT, "second_only": FLOAT},
                     "Study B: a stage-2 or stage-3 number (set sizes, jailbreak rates, fits, FM vs linear)"),
    ArtifactContract("results/{model}/metrics/baseline.parquet", {"model": STR, **_METRIC_COLUMNS},
                     "dataset x metric of the unedited model, with a Wilson interval"),
    ArtifactContract("results/{model}/metrics/capability.parquet", _METRIC_COLUMNS,
                     "method x metric on harmless prompts (CE, first-token KL)"),
    ArtifactContract("results/{model}/metrics/induction.parquet",
                     {**_METRIC_COLUMNS, "set_value": FLOAT, "n_features": FLOAT, "judge": STR},
                     "method x set value: refusal rate induced on harmless prompts"),
    ArtifactContract("results/{model}/metrics/jailbreak.parquet", _JUDGED_METRIC_COLUMNS,
                     "method x dataset x judge: jailbreak rate"),
    ArtifactContract("results/{model}/grid/{dataset}/{method}.parquet",
                     {"prompt_id": STR, "method": STR, "clamp_scale": FLOAT, "k_star": INT, "completion": STR,
                      "refusal_score": FLOAT, "refused": BOOL},
                     "prompt x grid point (clamp scale, set size): completion under the method's clamp"),
    ArtifactContract("results/{model}/metrics/grid.parquet",
                     {**_METRIC_COLUMNS, "clamp_scale": FLOAT, "k_star": INT, "judge": STR},
                     "method x dataset x grid point: jailbreak rate and mean first-token refusal log-odds"),
    ArtifactContract("results/{model}/metrics/paired.parquet",
                     {"method": STR, "baseline": STR, "dataset": STR, "metric": STR, "value": FLOAT,
                      "ci_low": FLOAT, "ci_high": FLOAT, "n": INT, "p_value": FLOAT, "first_only": INT,
                      "second_only": INT, "judge": STR, "variant": STR},
                     "ours (method) vs another method (baseline) on the same prompts: paired difference, "
                     "interval, p-value"),
    ArtifactContract("results/{model}/metrics/grid_paired.parquet",
                     {"method": STR, "baseline": STR, "dataset": STR, "metric": STR, "value": FLOAT,
                      "ci_low": FLOAT, "ci_high": FLOAT, "n": INT, "p_value": FLOAT, "first_only": INT,
                      "second_only": INT, "judge": STR, "clamp_scale": FLOAT, "k_star": INT},
                     "held out, at one point of the clamp x K* grid: ours (method) vs another method (baseline) "
                     "on the same prompts, per dataset and pooled"),
    ArtifactContract("results/analysis/pairs/{dataset}.parquet", _PAIR_COLUMNS,
                     "adversarial pair: an explicit evaluation request and one variant of it (template or suffix)"),
    ArtifactContract("results/{model}/analysis/adversarial/{dataset}.parquet",
                     {**_PAIR_COLUMNS, "explicit_refused": BOOL, "explicit_refusal_score": FLOAT, "completion": STR,
                      "refusal_score": FLOAT, "refused": BOOL, "outcome": STR},
                     "adversarial pair: the variant's completion, verdict and outcome (jailbreak, failed, not_refused)"),
    ArtifactContract("results/{model}/analysis/category_sets.parquet",
                     {"category": STR, "layer": INT, "feature": INT, "rank": INT, "score": FLOAT, "role": STR,
                      "n_categories": INT, "n_prompts": INT, "cosine_to_direction": FLOAT},
                     "harm category x member of its set F*_c: rank, LA-IG score, role (refusal = shared, harm)"),
    ArtifactContract("results/{model}/analysis/categories.parquet",
                     {"category": STR, "condition": STR, "clamped_category": STR, "prompt_id": STR, "completion": STR,
                      "refusal_score": FLOAT, "refused": BOOL, "n_clamped": INT, "n_held": INT},
                     "category x condition (base, all, harm, refusal, transfer) x test prompt: completion, verdict"),
    ArtifactContract("results/{model}/metrics/categories.parquet",
                     {**_METRIC_COLUMNS, "reason": STR, "n_refusal_features": INT},
                     "condition x category: jailbreak rate, normalised jailbreak, upstream refusal-feature drop"),
    ArtifactContract("results/{model}/analysis/suppression.parquet",
                     {"pair_id": STR, "prompt_id": STR, "dataset": STR, "source": STR, "variant_id": STR, "kind": STR,
                      "outcome": STR, "refusal_explicit": FLOAT, "refusal_adversarial": FLOAT, "refusal_drop": FLOAT,
                      "n_features": INT, "harm_explicit": FLOAT, "harm_adversarial": FLOAT, "harm_drop": FLOAT,
                      "n_harm_features": INT},
                     "pair with a refused request: refusal-feature (last prompt tokens) and harm-feature (all tokens) "
                     "activation of both prompts"),
    ArtifactContract("results/{model}/analysis/suffix_words.parquet",
                     {"pair_id": STR, "source": STR, "outcome": STR, "n_words": INT, "word": STR,
                      "refusal_activation": FLOAT, "increment": FLOAT, "top": BOOL},
                     "suffix pair x words of the suffix added: refusal-feature activation and its increment"),
    ArtifactContract("results/{model}/metrics/suppression.parquet", {**_METRIC_COLUMNS, "group": STR},
                     "variant source x dataset x outcome group: jailbreak rate, mean refusal- and harm-feature drop"),
    ArtifactContract("results/{model}/probes/metrics.parquet",
                     {"probe": STR, "split": STR, "metric": STR, "value": FLOAT, "ci_low": FLOAT, "ci_high": FLOAT,
                      "n": INT, "n_features": INT},
                     "probe (refusal / random features, dense) x split x metric (AUROC, accuracy per class)"),
    ArtifactContract("results/{model}/probes/layers.parquet",
                     {"layer": INT, "val_auroc": FLOAT, "val_accuracy": FLOAT, "chosen": BOOL},
                     "layer: the dense probe's validation scores; the chosen layer marked"),
    ArtifactContract("results/{model}/report/summary.parquet", _JUDGED_METRIC_COLUMNS,
                     "every metric row of the model, one table"),
)


def _kind_of(dtype: pa.DataType) -> set[str]:
    if pa.types.is_null(dtype):
        return {NULLABLE_STR}
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return {STR, NULLABLE_STR}
    if pa.types.is_boolean(dtype):
        return {BOOL}
    if pa.types.is_integer(dtype):
        return {INT}
    if pa.types.is_floating(dtype):
        return {FLOAT}
    if (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and pa.types.is_floating(dtype.value_type):
        return {VECTOR}
    return {str(dtype)}


def contract_for(relative_path: str, contracts: Sequence[ArtifactContract] = CONTRACTS) -> ArtifactContract | None:
    """The first contract whose pattern ``relative_path`` matches, or None."""
    return next((c for c in contracts if c.matches(relative_path)), None)


_ARROW_TYPES = {STR: pa.string(), INT: pa.int64(), FLOAT: pa.float64(), BOOL: pa.bool_(),
                VECTOR: pa.list_(pa.float64()), NULLABLE_STR: pa.string()}


def contract_for_path(path: str | Path, contracts: Sequence[ArtifactContract] = CONTRACTS) -> ArtifactContract | None:
    """The contract of a file wherever the run root is: the first one matching a tail of ``path``."""
    parts = Path(path).parts
    return next((c for i in range(len(parts)) if (c := contract_for("/".join(parts[i:]), contracts))), None)


def type_null_columns(table: pa.Table, contract: ArtifactContract) -> pa.Table:
    """``table`` with its all-null columns (an empty frame's object columns) cast to their documented kind,
    so an artifact with no rows still carries its schema."""
    for i, field in enumerate(table.schema):
        kind = contract.columns.get(field.name)
        if pa.types.is_null(field.type) and kind in _ARROW_TYPES:
            table = table.set_column(i, field.name, table.column(i).cast(_ARROW_TYPES[kind]))
    return table


def check_file(path: Path, contract: ArtifactContract) -> list[str]:
    """Problems of one file against its contract (missing / unexpected columns, wrong kinds)."""
    schema = pq.read_schema(path)
    actual = {field.name: field.type for field in schema}
    problems = []
    missing = sorted(set(contract.columns) - set(actual))
    extra = sorted(set(actual) - set(contract.columns))
    if missing:
        problems.append(f"{path}: missing columns {missing}")
    if extra:
        problems.append(f"{path}: undocumented columns {extra}")
    for name, kind in contract.columns.items():
        if name in actual and kind not in _kind_of(actual[name]):
            problems.append(f"{path}: column {name!r} is {actual[name]}, documented as {kind}")
    return problems


def artifact_files(root: Path) -> list[Path]:
    """Every Parquet file a run under ``root`` holds: ``results/**`` and ``resources/datasets/``."""
    return sorted([*root.glob("results/**/*.parquet"), *root.glob("resources/datasets/*.parquet")])


def check_artifacts(root: str | Path, contracts: Sequence[ArtifactContract] = CONTRACTS) -> list[str]:
    """Problems of every Parquet artifact under ``root/results`` and ``root/resources/datasets``.

    An empty list means the run conforms; a file no contract describes is a problem too.
    """
    root = Path(root)
    files = artifact_files(root)
    if not files:
        return [f"{root}: no Parquet artifacts under results/ or resources/datasets/"]
    problems = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        contract = contract_for(relative, contracts)
        if contract is None:
            problems.append(f"{path}: no documented schema matches this artifact")
            continue
        problems.extend(check_file(path, contract))
    return problems


def markdown_table(contracts: Sequence[ArtifactContract] = CONTRACTS) -> str:
    """The artifact table of ``docs/artifacts.md``: pattern, one row is, columns with kinds."""
    lines = ["| artifact | one row is | columns |", "|---|---|---|"]
    for c in contracts:
        columns = ", ".join(f"{name} ({kind})" for name, kind in c.columns.items())
        lines.append(f"| `{c.pattern}` | {c.row} | {columns.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Check a run root; print problems, or a one-line summary when there are none."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(args[0]) if args else Path.cwd()
    problems = check_artifacts(root)
    for line in problems:
        print(line)
    if not problems:
        print(f"{len(artifact_files(root))} artifacts under {root}: every one matches its documented schema")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
