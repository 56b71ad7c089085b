"""Stage validate: the Great Expectations suite over train and eval data.

Writes the validated splits (text + class index, Parquet) and the label map for the
later stages. Failure stops here, before any training, with the failed
expectations, their files and sample rows printed and kept in the report.
"""

from __future__ import annotations

import json

from distillery.config import Params
from tasks.common import StageContext, StageIO, report_rel, write_report


def io(p: Params) -> StageIO:
    return StageIO(deps=[p.data.train_path, p.data.eval_path], outs=[p.paths.validated_dir],
                   metrics=[report_rel(p, "validate")], params=["data", "validate"])


def run(ctx: StageContext) -> dict:
    from distillery.data import LabelMap, read_table, save_split
    from distillery.validation import ValidationFailed, validate_frame

    p = ctx.params
    splits = {"train": p.data.train_path, "eval": p.data.eval_path}
    frames = {name: read_table(ctx.path(path), p.data.text_column, p.data.label_column)
              for name, path in splits.items()}
    declared = [str(x) for x in p.data.labels] if p.data.labels is not None else None
    results = [validate_frame(frames[name], name, splits[name], p.data, p.validate_cfg, declared)
               for name in splits]
    report = {"success": all(r.success for r in results),
              "rows": {name: len(df) for name, df in frames.items()},
              "results": [r.to_dict() for r in results]}
    if not report["success"]:
        write_report(ctx, "validate", report)
        raise ValidationFailed(results)
    labels = LabelMap.from_labels(p.data.labels, frames["train"]["label"])
    out = ctx.path(p.paths.validated_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        save_split(df.assign(label=labels.encode(df["label"])), out / f"{name}.parquet")
    (out / "labels.json").write_text(json.dumps(labels.to_json(), indent=2))
    report["labels"] = labels.names
    write_report(ctx, "validate", report)
    print(f"validate: train {len(frames['train'])} rows, eval {len(frames['eval'])} rows, labels {labels.names}: passed")
    return report
