"""The gate: a pure function from figures and thresholds to a decision with its reasons.

No I/O here, so every decision can be unit-tested and replayed from reports.
Thresholds set to null in params.yaml are not checked (and say so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from distillery.config import GateConfig


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    observed: float | None
    threshold: float | None
    reason: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "reasons": self.reasons}

    @classmethod
    def from_dict(cls, d: dict) -> "GateDecision":
        return cls(passed=bool(d["passed"]), checks=[Check(**c) for c in d["checks"]])


def _check(name: str, observed: float, threshold: float, ok: bool, fmt: str, op: str) -> Check:
    verdict = "ok" if ok else "FAILED"
    return Check(name, ok, float(observed), float(threshold),
                 f"{name}: {observed:{fmt}} {op} {threshold:{fmt}} required: {verdict}")


def evaluate_gate(candidate: dict, teacher: dict, cfg: GateConfig) -> GateDecision:
    """Check the final model's figures against the thresholds in `cfg`.

    candidate / teacher: figure dicts as written by the stages (accuracy, size_mb, ...).
    """
    checks: list[Check] = []

    def floor(name: str, observed: float, threshold: float | None, fmt: str = ".4f") -> None:
        if threshold is not None:
            checks.append(_check(name, observed, threshold, observed >= threshold, fmt, ">="))

    def ceiling(name: str, observed: float, threshold: float | None, fmt: str = ".2f") -> None:
        if threshold is not None:
            checks.append(_check(name, observed, threshold, observed <= threshold, fmt, "<="))

    floor("accuracy", candidate["accuracy"], cfg.min_accuracy)
    floor("macro_f1", candidate.get("macro_f1", 0.0), cfg.min_macro_f1)
    if cfg.min_class_recall is not None:
        # The weakest class, so one collapsed class cannot hide behind a good average.
        floor("min_class_recall", min(candidate["per_class_recall"]), cfg.min_class_recall)
    if cfg.min_retention is not None:
        base = teacher["accuracy"]
        floor("retention_of_teacher_accuracy", candidate["accuracy"] / base if base > 0 else 0.0, cfg.min_retention)
    ceiling("size_mb", candidate["size_mb"], cfg.max_size_mb)
    ceiling("latency_p50_ms", candidate["latency_p50_ms"], cfg.max_latency_p50_ms)
    ceiling("latency_p95_ms", candidate.get("latency_p95_ms", float("inf")), cfg.max_latency_p95_ms)
    ceiling("ece", candidate.get("ece", 1.0), cfg.max_ece, ".4f")
    return GateDecision(passed=all(c.passed for c in checks), checks=checks)


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reason: str


def decide_promotion(gate_passed: bool, metric: str, candidate_value: float,
                     champion_value: float | None, champion_version: str | None = None) -> Promotion:
    """`champion` moves only to a version that passed the gate and is not worse than the champion."""
    if not gate_passed:
        return Promotion(False, "gate failed: the new version stays challenger")
    if champion_value is None:
        return Promotion(True, "gate passed and there is no champion yet")
    if candidate_value >= champion_value:
        return Promotion(True, f"gate passed and {metric} {candidate_value:.4f} >= champion "
                               f"v{champion_version} {champion_value:.4f}")
    return Promotion(False, f"gate passed but {metric} {candidate_value:.4f} < champion "
                            f"v{champion_version} {champion_value:.4f}: champion kept")
