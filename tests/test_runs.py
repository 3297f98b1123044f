"""Run directories and their configs: round trips, strict loading, safe names, broken runs."""

from __future__ import annotations

import pytest

from valuation.cli import main
from valuation.config import ConfigError, DataConfig, RunConfig, from_dict, to_dict
from valuation.runs import Run, RunError, create_run, list_runs
from valuation.views.snapshot import RunSnapshot


def test_config_round_trip_and_strict_loading():
    config = RunConfig(data=DataConfig(sources=["a", "b"], eval_prompts=8))
    assert from_dict(RunConfig, to_dict(config)) == config
    with pytest.raises(ConfigError, match="unknown setting"):
        from_dict(RunConfig, {"data": {"eval_prompt": 3}})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(RunConfig, {"seed": "zero"})
    with pytest.raises(ConfigError, match="no prompts for training"):
        DataConfig(eval_fraction=0.5, reward_fraction=0.5).validate()


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 65, "sp ace"])
def test_run_names_cannot_leave_the_runs_directory(runs_dir, name):
    with pytest.raises(RunError, match="not allowed"):
        Run.named(name)


def test_broken_runs_are_listed_with_their_problem(runs_dir):
    good = create_run("good")
    broken = create_run("broken")
    broken.config_path.write_text("model: [unclosed")
    invalid = create_run("invalid")
    invalid.config_path.write_text("seed: 1\nbogus: 2\n")
    assert [r.name for r in list_runs()] == ["broken", "good", "invalid"]
    assert RunSnapshot(good).problem is None
    assert "corrupt" in RunSnapshot(broken).problem and "unknown setting" in RunSnapshot(invalid).problem
    with pytest.raises(RunError, match="already exists"):
        create_run("good")


def test_cli_sources_lists_and_records(runs_dir, capsys):
    assert main(["sources"]) == 0
    out = capsys.readouterr().out
    assert "harmless-base" in out and "helpful-rejection-sampled" in out
    assert main(["sources", "--run", str(runs_dir / "r"), "--new", "--sources", "helpful-base", "harmless-base",
                 "--eval-prompts", "40"]) == 0
    run = Run.named("r")
    assert run.load_config().data.sources == ["helpful-base", "harmless-base"]
    assert sorted(run.load_split()["train_pairs"]) == ["harmless-base", "helpful-base"]
    assert run.load_config().data.eval_prompts == 40 and len(run.load_split()["eval_prompt_ids"]) == 40


def test_cli_bad_input_is_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["sources", "--data", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.csv'}: file not found."


def test_an_upload_is_kept_in_the_run_written_atomically_once(tmp_path, monkeypatch) -> None:
    import os

    from valuation.runs import Run
    from valuation.data.sources import save_upload

    run = Run(tmp_path / "run")
    path = save_upload(run, "../pairs.jsonl", b"first")
    assert path == run.path / "uploads" / "pairs.jsonl" and path.read_bytes() == b"first"  # no escape from uploads/
    stamp = path.stat().st_mtime_ns
    assert save_upload(run, "pairs.jsonl", b"first").stat().st_mtime_ns == stamp  # a rerun writes nothing

    def killed(*args):  # the process dies between writing and renaming
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    try:
        save_upload(run, "pairs.jsonl", b"second, half-written")
    except KeyboardInterrupt:
        pass
    assert path.read_bytes() == b"first" and [p.name for p in path.parent.iterdir()] == ["pairs.jsonl"]


@pytest.mark.parametrize("command", ["sources", "train", "rewards", "evaluate", "validate", "shapley", "demo"])
def test_every_command_explains_itself(command, capsys) -> None:
    from valuation import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--help"])
    assert stopped.value.code == 0 and "--" in capsys.readouterr().out


HOSTILE = ["a/b", "../../escape", "x@seed2", "__base__", "a+b", "v.1", "<img src=x onerror=alert(1)>"]


def test_source_names_are_checked_once_when_the_run_is_made(runs_dir, tmp_path, capsys) -> None:
    """A source names a folder, an adapter and a coalition member: a name that cannot be all three is
    refused when the sources are chosen, naming it and the rename to make, before the run exists."""
    from helpers import table_rows, write_jsonl
    from valuation.data.sources import SourceNameError, check_source_names, record_sources

    rows = [row for name in [*HOSTILE, "fine one", "вендор"] for row in table_rows(name, 4)]
    data = write_jsonl(tmp_path / "hostile.jsonl", rows)
    assert main(["sources", "--data", str(data), "--run", str(runs_dir / "r"), "--new"]) == 2
    error = capsys.readouterr().err
    for name in HOSTILE:
        assert repr(name) in error
    assert "(say 'a_b')" in error and "(say 'escape')" in error and "Rename them in the data" in error
    assert not (runs_dir / "r").exists()  # nothing to undo: not even an empty run
    # The Sources page's save takes the same check: a run keeps its previous choice.
    run = create_run("page")
    with pytest.raises(SourceNameError, match="'a/b'"):
        record_sources(run, DataConfig(dataset=str(data), sources=["a/b", "fine one"]))
    assert run.load_split() is None and not (run.path / "adapters").exists()
    # Choosing only the sources whose names work is fine: letters of any script, digits, '_', '-' and spaces.
    record_sources(run, DataConfig(dataset=str(data), sources=["fine one", "вендор"]))
    assert sorted(run.load_split()["train_pairs"]) == ["fine one", "вендор"]
    check_source_names(["harmless-base", "flan_v2_niv2", "vendor A", "вендор", "ベンダー"])
    for name in ["", " padded", "a" * 65]:
        with pytest.raises(SourceNameError):
            check_source_names([name])
