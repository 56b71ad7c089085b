"""The gate: a pure function from figures and thresholds to a decision with its reasons.

No I/O here, so every decision can be unit-tested and replayed from reports.
Thresholds set to null in params.yaml are not checked. The comparison with the
champion is one more check (`regression_vs_champion`), decided at registration
time when the champion is known; it is recorded as skipped, with the reason,
when there is no champion yet or `gate.max_regression` is null.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from distillery.config import GateConfig
from distillery.stats import PairedComparison


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    observed: float | None
    threshold: float | None
    reason: str
    skipped: bool = False  # not checked (the reason says why); a skipped check does not block
    rule: str | None = None  # for comparisons: which rule decided (non_inferiority | point)
    comparison: dict | None = None  # the paired statistics behind it (distillery.stats.PairedComparison)

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.passed else "fail")


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

    def with_check(self, check: Check) -> "GateDecision":
        """This decision with one more check (the champion comparison, known only at registration)."""
        checks = [*self.checks, check]
        return GateDecision(passed=all(c.passed for c in checks), checks=checks)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [{**asdict(c), "status": c.status} for c in self.checks],
                "reasons": self.reasons}

    @classmethod
    def from_dict(cls, d: dict) -> "GateDecision":
        return cls(passed=bool(d["passed"]),
                   checks=[Check(**{k: v for k, v in c.items() if k != "status"}) for c in d["checks"]])


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


CHAMPION_CHECK = "regression_vs_champion"
# Two figures that are equal on paper can differ in the last bit after a subtraction.
_TOLERANCE_EPS = 1e-9


def comparison_check(name: str, comparison: PairedComparison, margin: float, rule: str, against: str) -> Check:
    """Non-inferiority (or the point rule) of a paired comparison, candidate - baseline, with `margin`.

    observed = how far the candidate may fall behind: the interval's upper end of (baseline -
    candidate) under non_inferiority, the point regression under `point`; passes when it is
    below `margin` (non_inferiority: strictly, as the CI lower bound must lie above -margin).
    """
    c = comparison
    if rule == "non_inferiority":
        observed = -c.ci_low
        ok = c.ci_low > -margin
        test = f"CI lower bound {c.ci_low:+.4f} > -{margin:.4f} required"
    else:
        observed = c.baseline - c.candidate
        ok = observed <= margin + _TOLERANCE_EPS
        test = f"regression {observed:.4f} <= {margin:.4f} required"
    return Check(name, ok, observed, float(margin),
                 f"{name}: {c.metric} {c.candidate:.4f} vs {against} {c.baseline:.4f}: {c.describe()}; "
                 f"{rule.replace('_', '-')} rule: {test}: {'ok' if ok else 'FAILED'}",
                 rule=rule, comparison=c.to_dict())


def champion_check(metric: str, candidate: float, champion: float | None, max_regression: float | None,
                   champion_version: str | None = None, source: str = "",
                   comparison: PairedComparison | None = None, rule: str = "point") -> Check:
    """No regression against the champion (`champion_version`, None when there is none) beyond a tolerance.

    observed = champion's `metric` - candidate's `metric` (how far the candidate falls behind;
    negative when it is better), passing when it is at most `max_regression`. The champion's
    figure should be re-scored on the current eval data (`source` says how it was obtained),
    so a changed eval set cannot promote a worse model.
    """
    if max_regression is None:
        return Check(CHAMPION_CHECK, True, None, None,
                     f"{CHAMPION_CHECK}: skipped: gate.max_regression is null (not checked)", skipped=True)
    if champion_version is None:
        return Check(CHAMPION_CHECK, True, None, float(max_regression),
                     f"{CHAMPION_CHECK}: skipped: no champion yet", skipped=True)
    if champion is None:  # a champion we cannot score is not evidence that the candidate is not worse
        return Check(CHAMPION_CHECK, False, None, float(max_regression),
                     f"{CHAMPION_CHECK}: champion v{champion_version} could not be scored ({source}): FAILED")
    if comparison is not None:  # per-row predictions of both: the paired test decides
        via = f", {source}" if source else ""
        return comparison_check(CHAMPION_CHECK, comparison, float(max_regression), rule,
                                f"champion v{champion_version}{via}")
    if rule == "non_inferiority":  # only figures, no rows: an interval cannot be formed, and we say so
        source = f"{source}; no per-row predictions, point rule used" if source else "point rule used"
    regression = float(champion) - float(candidate)
    ok = regression <= max_regression + _TOLERANCE_EPS
    via = f", {source}" if source else ""
    return Check(CHAMPION_CHECK, ok, regression, float(max_regression),
                 f"{CHAMPION_CHECK}: {metric} {candidate:.4f} vs champion v{champion_version} {champion:.4f}"
                 f"{via}: regression {regression:.4f} <= {max_regression:.4f} required: "
                 f"{'ok' if ok else 'FAILED'}", rule="point")


FIDELITY_CHECK = "fidelity_to_teacher"
SLICE_ACCURACY, SLICE_VS_CHAMPION = "slice_accuracy", "slice_vs_champion"


def fidelity_check(fidelity: float, min_fidelity: float | None) -> list[Check]:
    """Share of eval rows on which the final model predicts the teacher's label (None = not checked)."""
    if min_fidelity is None:
        return []
    return [_check(FIDELITY_CHECK, fidelity, min_fidelity, fidelity >= min_fidelity, ".4f", ">=")]


def slice_accuracy_checks(slices: dict[str, dict], min_accuracy: float | None) -> list[Check]:
    """One check per slice (`slices`: name -> figures with `accuracy` and `rows`)."""
    if min_accuracy is None:
        return []
    return [_check(f"{SLICE_ACCURACY}:{name}", f["accuracy"], min_accuracy, f["accuracy"] >= min_accuracy,
                   ".4f", ">=") for name, f in slices.items()]


def slice_champion_checks(comparisons: dict[str, PairedComparison], max_regression: float | None,
                          champion_version: str) -> list[Check]:
    """No slice worse than the champion on that slice by more than `max_regression`, tested on the
    slice's own paired interval (non-inferiority: its lower bound must lie above -max_regression)."""
    if max_regression is None:
        return []
    return [comparison_check(f"{SLICE_VS_CHAMPION}:{name}", c, max_regression, "non_inferiority",
                             f"champion v{champion_version} on slice {name!r}") for name, c in comparisons.items()]


SUITE_CHECK, SUITE_VS_CHAMPION = "must_pass_suite", "must_pass_vs_champion"


def suite_check(result: dict | None) -> list[Check]:
    """How many must-pass examples and invariance groups the model passes (reported; what blocks is a
    regression against the champion, `suite_champion_check`)."""
    if result is None or result["total"] == 0:
        return []
    failing = f"; failing: {', '.join(result['failed_ids'])}" if result["failed_ids"] else ""
    return [Check(SUITE_CHECK, True, float(result["passed"]), float(result["total"]),
                  f"{SUITE_CHECK}: {result['passed']} of {result['total']} pass{failing} (reported; a regression "
                  "against the champion fails the gate)")]


def suite_champion_check(regressed: list[str] | None, champion_version: str | None) -> list[Check]:
    """Fails when an example (or invariance group) the champion passes fails now, naming each."""
    if regressed is None:
        return []
    if champion_version is None:
        return [Check(SUITE_VS_CHAMPION, True, None, 0.0, f"{SUITE_VS_CHAMPION}: skipped: no champion yet",
                      skipped=True)]
    ok = not regressed
    named = f": {', '.join(regressed)}" if regressed else ""
    return [Check(SUITE_VS_CHAMPION, ok, float(len(regressed)), 0.0,
                  f"{SUITE_VS_CHAMPION}: {len(regressed)} must-pass example(s) champion v{champion_version} passes "
                  f"and this model fails{named}: {'ok' if ok else 'FAILED'}")]


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reason: str


def decide_promotion(decision: GateDecision) -> Promotion:
    """`champion` moves only when every check passed: the thresholds and the champion comparison."""
    if decision.passed:
        champ = next((c for c in decision.checks if c.name == CHAMPION_CHECK), None)
        return Promotion(True, "every check passed: champion moves to this version"
                               + (f" ({champ.reason})" if champ is not None else ""))
    return Promotion(False, "kept as challenger, failed: " + "; ".join(c.reason for c in decision.failed))
