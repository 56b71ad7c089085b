"""Must-pass examples: texts with the label they must get, and invariance groups (texts that must all
get the same label: a name swapped, a typo). Read from a YAML file (`gate.suite`):

    examples:
      - {id: refund-incident, text: "I want my money back, now", label: negative}
    invariance:
      - {id: name-swap, texts: ["Anna loved the film", "Omar loved the film"]}

The gate reports how many pass; what blocks a promotion is a regression: an example or group the
champion passes and the challenger fails, named in the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillery.errors import DistilleryError


class SuiteError(DistilleryError, ValueError):
    """A suite file that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Suite:
    examples: list[dict]    # {id, text, label}
    invariance: list[dict]  # {id, texts}

    @property
    def texts(self) -> list[str]:
        """Every text to predict, examples first, then each group's texts in order."""
        return [e["text"] for e in self.examples] + [t for g in self.invariance for t in g["texts"]]

    def __len__(self) -> int:
        return len(self.examples) + len(self.invariance)


def load_suite(path: str | Path, labels: list[str]) -> Suite:
    """Read and check a suite file against the task's labels (errors name the file and row)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"gate.suite: {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SuiteError(f"gate.suite: {path}: not a readable YAML file: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict) or set(raw) - {"examples", "invariance"}:
        extra = sorted(set(raw) - {"examples", "invariance"}) if isinstance(raw, dict) else type(raw).__name__
        raise SuiteError(f"{path}: expected a mapping with `examples` and/or `invariance`; got {extra}")
    names = [str(x) for x in labels]
    examples, groups, seen = [], [], set()

    def row_id(section: str, i: int, row) -> str:
        if not isinstance(row, dict):
            raise SuiteError(f"{path}: {section}[{i}]: expected a mapping, got {row!r}")
        rid = str(row.get("id", f"{section}[{i}]"))
        if rid in seen:
            raise SuiteError(f"{path}: {section}[{i}]: id {rid!r} is used twice")
        seen.add(rid)
        return rid

    for i, row in enumerate(raw.get("examples") or []):
        rid = row_id("examples", i, row)
        where = f"{path}: examples[{i}] ({rid!r})"
        if set(row) - {"id", "text", "label"}:
            raise SuiteError(f"{where}: unknown key(s) {sorted(set(row) - {'id', 'text', 'label'})}")
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise SuiteError(f"{where}: `text` must be a non-empty string")
        if "label" not in row or str(row["label"]) not in names:
            raise SuiteError(f"{where}: unknown label {row.get('label')!r}; the task's labels are {names}")
        examples.append({"id": rid, "text": row["text"], "label": str(row["label"])})
    for i, row in enumerate(raw.get("invariance") or []):
        rid = row_id("invariance", i, row)
        where = f"{path}: invariance[{i}] ({rid!r})"
        if set(row) - {"id", "texts"}:
            raise SuiteError(f"{where}: unknown key(s) {sorted(set(row) - {'id', 'texts'})}")
        texts = row.get("texts")
        if not isinstance(texts, list) or len(texts) < 2 or not all(isinstance(t, str) and t.strip() for t in texts):
            raise SuiteError(f"{where}: `texts` must be a list of at least two non-empty strings")
        groups.append({"id": rid, "texts": texts})
    return Suite(examples, groups)


def score_suite(suite: Suite, predicted: list[str]) -> dict:
    """Results for one model's predicted labels of `suite.texts`, in order."""
    predicted = [str(p) for p in predicted]
    if len(predicted) != len(suite.texts):
        raise ValueError(f"{len(suite.texts)} suite texts but {len(predicted)} predictions")
    out_ex = [{**e, "predicted": p, "passed": p == e["label"]}
              for e, p in zip(suite.examples, predicted[:len(suite.examples)])]
    out_inv, k = [], len(suite.examples)
    for g in suite.invariance:
        preds = predicted[k:k + len(g["texts"])]
        k += len(g["texts"])
        out_inv.append({**g, "predicted": preds, "passed": len(set(preds)) == 1})
    rows = out_ex + out_inv
    return {"total": len(rows), "passed": sum(r["passed"] for r in rows),
            "failed_ids": [r["id"] for r in rows if not r["passed"]], "examples": out_ex, "invariance": out_inv}


def regressions(candidate: dict, champion: dict) -> list[str]:
    """Ids the champion passes and the candidate fails (both scored on the same suite)."""
    champ_pass = {r["id"] for r in champion["examples"] + champion["invariance"] if r["passed"]}
    rows = candidate["examples"] + candidate["invariance"]
    return [r["id"] for r in rows if not r["passed"] and r["id"] in champ_pass]
