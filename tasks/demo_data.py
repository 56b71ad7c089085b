"""Stage demo_data: write the built-in synthetic demo dataset (the default run's data)."""

from __future__ import annotations

from tasks.common import StageContext

USES_TORCH = False  # the stage runs without importing torch (saves ~3 s)


def run(ctx: StageContext) -> dict:
    from distillery.demo_data import write_demo_dataset

    train, eval_ = write_demo_dataset(ctx.path(ctx.params.paths.demo_dir), ctx.params.data.demo_rows,
                                      ctx.params.base.seed)
    print(f"demo_data: wrote {train} and {eval_}")
    return {"train_path": str(train), "eval_path": str(eval_)}
