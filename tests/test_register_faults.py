"""Registration as a recoverable transaction: the register step SIGKILLed at each of its writes.

One finished tiny project (`dvc repro`, no registry), then only the register step, run again and
again: a driver process imports the stack once and forks a child per registration, which
snapshots the registry (the state the kill left) and registers, dying where DISTILLERY_FAULT says.
Every registration registers a model of its own (a marker file in the model folder changes its md5).
After each kill, the same model is registered again without a fault: that run settles the pending
version (completed from its recorded decision, or abandoned) and registers exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.register import REGISTER_STEPS
from tests.helpers import copy_project

BIN = Path(sys.executable).parent
NAME = "distillery-student"
ROOT = Path(__file__).resolve().parents[1]
LINEAGE = ("git_commit", "params_hash", "model_md5", "teacher", "prefect_flow_run_id", "metric.accuracy")
# Steps after which the decision is recorded: recovery completes these; earlier ones are abandoned.
DECIDED = {"after_decision", "after_challenger", "after_champion", "after_clear"}


def snapshot(root: Path) -> dict:
    """The registry as a kill left it: versions with their tags, aliases, champion history."""
    from distillery.config import load_params
    from tasks import tracking
    from tasks.promotion import history
    from tasks.register import aliases_by_version

    params = load_params(root / "params.yaml")
    c = tracking.client_for(root, params)
    versions = {str(v.version): dict(v.tags) for v in c.search_model_versions(f"name='{NAME}'")}
    aliases = {v: sorted(a) for v, a in aliases_by_version(c, NAME).items()}
    return {"versions": versions, "aliases": aliases, "history": history(c, NAME)}


def register_once(root: Path, variant: str, fault: str | None, index: int) -> None:
    """In a forked child: snapshot, then one registration of the model marked `variant`."""
    from distillery.config import load_params
    from tasks import tracking
    from tasks.register import FAULT_ENV, register_model

    (root / f"snap-{index}.json").write_text(json.dumps(snapshot(root)))
    if fault:
        os.environ[FAULT_ENV] = f"register:{fault}"
    params = load_params(root / "params.yaml")
    client = tracking.client_for(root, params)
    exp = tracking.experiment_id(client, root, params)
    parent = client.create_run(exp, run_name=f"register-{variant}").info.run_id
    record = register_model(root, params, client, exp, parent, None)
    (root / f"rec-{index}.json").write_text(json.dumps(record, default=str))


def drive(root: Path, plan: list[tuple[str, str | None]]) -> list[int]:
    """Each registration of the plan in a child forked from this process (which never opens the
    registry itself, so no connection crosses a fork). Returns each child's wait status."""
    import tasks.register  # noqa: F401  (imports paid once, before the forks)
    import mlflow.pyfunc  # noqa: F401

    statuses = []
    for i, (variant, fault) in enumerate(plan):
        (root / "models" / "quantized" / "variant.txt").write_text(variant)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                register_once(root, variant, fault, i)
            except BaseException as exc:  # noqa: BLE001 (reported through the exit status)
                print(f"driver: registration {i} failed: {exc!r}", flush=True)
                code = 1
            finally:
                os._exit(code)
        statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    return statuses


@pytest.fixture()
def finished(finished_project, tmp_path):
    return copy_project(finished_project, tmp_path / "p")


def check_invariants(state: dict, where: str) -> None:
    """What must hold whatever was killed, wherever."""
    versions, aliases = state["versions"], state["aliases"]
    for v, tags in versions.items():
        if tags.get("registration") != "abandoned":
            missing = [k for k in LINEAGE if k not in tags]
            assert not missing, f"{where}: version {v} lacks lineage tags {missing}"
        undecided = tags.get("promotion_decided") != "true"
        if undecided or tags.get("registration") == "abandoned":
            assert not aliases.get(v), f"{where}: alias(es) {aliases[v]} on undecided version {v}"
        if "champion" in aliases.get(v, []):
            assert tags.get("promote") == "true" or tags.get("registration") is None, \
                f"{where}: champion v{v} was not decided a promotion"
    champions = [v for v, a in aliases.items() if "champion" in a]
    assert len(champions) <= 1, f"{where}: {champions}"
    moves = state["history"]
    for before, after in zip(moves, moves[1:]):
        assert after["from"] == before["version"], f"{where}: champion history broken: {moves}"


@pytest.mark.slow
def test_register_killed_at_each_write_recovers_and_registers_exactly_once(finished, tmp_path):
    root = finished
    plan: list[tuple[str, str | None]] = [("base", None)]
    for step in REGISTER_STEPS:
        plan += [(step, step), (step, None)]  # killed there; then the same model again
    plan.append(("final", None))
    out = subprocess.run([sys.executable, "-m", "tests.test_register_faults", str(root), json.dumps(plan)],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    statuses = json.loads(out.stdout.strip().splitlines()[-1])
    assert statuses == [-9 if fault else 0 for _, fault in plan], out.stdout[-3000:]

    for i, (variant, fault) in enumerate(plan):
        if i == 0:
            continue
        before = json.loads((root / f"snap-{i}.json").read_text())  # what registration i-1 left
        prev_variant, prev_fault = plan[i - 1]
        check_invariants(before, f"after registration {i - 1} ({prev_variant}, killed {prev_fault})")
        if prev_fault:
            # the champion is the one it was, or the one the killed registration decided
            earlier = json.loads((root / f"snap-{i - 1}.json").read_text())
            was = [v for v, a in earlier["aliases"].items() if "champion" in a]
            now = [v for v, a in before["aliases"].items() if "champion" in a]
            decided_new = [v for v, t in before["versions"].items() if v not in earlier["versions"]
                           and t.get("promote") == "true"]
            assert now == was or now == decided_new, (prev_fault, was, now, decided_new)
        if fault is None and prev_fault:  # this run settled the killed one and registered its model once
            record = json.loads((root / f"rec-{i}.json").read_text())
            after = json.loads((root / f"snap-{i + 1}.json").read_text())
            check_invariants(after, f"after the re-run of {variant}")
            assert not [v for v, t in after["versions"].items() if t.get("registration") == "pending"]
            same = [v for v, t in after["versions"].items()
                    if t["model_md5"] == after["versions"][record["version"]]["model_md5"]]
            live = [v for v in same if after["versions"][v].get("registration") != "abandoned"]
            assert live == [record["version"]], (variant, same, live)
            if prev_fault in DECIDED:  # completed from its recorded decision: the re-run registered nothing
                assert record["new_version"] is False and len(same) == 1, (variant, record)
            elif prev_fault == "after_log_model":  # no version existed yet
                assert record["new_version"] is True and len(same) == 1, (variant, record)
            else:  # created without a decision: abandoned, and the model registered once more
                assert record["new_version"] is True and len(same) == 2, (variant, record)
                abandoned = [v for v in same if v != record["version"]][0]
                assert after["versions"][abandoned]["registration"] == "abandoned"
                assert any(r["outcome"] == "abandoned" for r in record["recovered"])

    final = snapshot(root)
    check_invariants(final, "at the end")
    states = {v: t.get("registration") for v, t in final["versions"].items()}
    assert sorted(states.values()).count("abandoned") == 1  # after_create's only
    assert set(states.values()) == {"complete", "abandoned"}
    assert len(final["versions"]) == 1 + len(REGISTER_STEPS) + 1 + 1  # base, one per step, final; after_create's abandoned one


if __name__ == "__main__":  # the driver: python -m tests.test_register_faults ROOT PLAN_JSON
    print(json.dumps(drive(Path(sys.argv[1]), [tuple(p) for p in json.loads(sys.argv[2])])))


def test_a_champion_move_cut_short_is_finished_once(tmp_path):
    """The alias moved but the kill came before the champion stack and history were written:
    finishing the move writes them once, from the right predecessor; repeating it writes nothing."""
    from mlflow import MlflowClient

    from tasks.promotion import STACK_TAG, _read_tag, ensure_champion, history, move_champion

    uri = f"sqlite:///{tmp_path / 'r.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.create_registered_model(NAME)
    for _ in range(2):
        c.create_model_version(NAME, source=str(tmp_path))
    move_champion(c, NAME, "1", kind="auto_promote", reason="first")
    c.set_registered_model_alias(NAME, "champion", "2")  # ... and killed here
    entry = ensure_champion(c, NAME, "2", kind="auto_promote", reason="recovered")
    assert entry["from"] == "1" and _read_tag(c, NAME, STACK_TAG) == ["1", "2"]
    assert [(m["from"], m["version"]) for m in history(c, NAME)] == [(None, "1"), ("1", "2")]
    assert ensure_champion(c, NAME, "2", kind="auto_promote", reason="again") is None
    assert len(history(c, NAME)) == 2


@pytest.mark.slow
def test_distillery_status_settles_interrupted_registrations(finished):
    """`distillery status`, not only the next run, completes a decided pending version and
    abandons an undecided one, and shows what it did."""
    root = finished
    plan = [("base", None), ("decided", "after_challenger")]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "tests.test_register_faults", str(root), json.dumps(plan)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, -9], out.stdout[-3000:] + out.stderr[-3000:]
    assert snapshot(root)["versions"]["2"]["registration"] == "pending"
    status = subprocess.run([str(BIN / "distillery"), "--project-dir", str(root), "status"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
    assert "version 2 of an interrupted registration completed" in status.stdout
    state = snapshot(root)
    assert state["versions"]["2"]["registration"] == "complete"
    check_invariants(state, "after distillery status")
    assert "challenger" in state["aliases"]["2"]
