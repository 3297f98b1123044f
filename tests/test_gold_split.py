"""A trusted held-out file (a gold set): the sources only train, the gold pairs give the reward and
evaluation parts, and nothing whose prompt the gold set holds trains an adapter."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from helpers import APP, table_rows, write_jsonl
from valuation.cli import main
from valuation.config import DataConfig, RewardConfig, RewardObjective, RunConfig, from_dict
from valuation.runtime.context import RunContext
from valuation.data.preferences import load_preferences
from valuation.errors import UserError
from valuation.runs import Run, create_run
from valuation.data.sources import describe_provenance, record_sources
from valuation.data.splits import load_gold, split_preferences

# What splits.py made of this table before gold files existed (seed 3, 4 evaluation prompts).
BEFORE_GOLD = {
    "train_pairs": {"crawl": 5, "vendor": 5}, "reward_pairs": {"crawl": 3, "vendor": 3},
    "eval_prompts_per_source": {"crawl": 3, "vendor": 1},
    "eval_prompt_ids": ["crawl:9", "vendor:14", "crawl:2", "crawl:7"],
    "pair_ids": {"train": {"crawl": ["crawl:1", "crawl:3", "crawl:4", "crawl:10", "crawl:5"],
                           "vendor": ["vendor:12", "vendor:15", "vendor:16", "vendor:20", "vendor:18"]},
                 "reward": {"crawl": ["crawl:0", "crawl:6", "crawl:11"], "vendor": ["vendor:13", "vendor:19", "vendor:17"]}},
}


def _sources_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", table_rows("crawl", 12) + table_rows("vendor", 9))


def _gold_file(tmp_path, labelled: bool = False):
    """30 trusted pairs of their own, and 3 whose prompts two crawl pairs and a vendor pair also hold."""
    rows = [{"prompt": f"Trusted question {i}?", "chosen": f"careful reply {i}", "rejected": f"sloppy reply {i}"}
            for i in range(30)]
    rows += [{"prompt": prompt, "chosen": "vetted reply", "rejected": "unvetted reply"}
             for prompt in ("crawl question 0?", "CRAWL  question 4?", "vendor question 2?")]
    if labelled:
        for k, row in enumerate(rows):
            row["source"] = "helpful" if k % 2 else "harmless"
    return write_jsonl(tmp_path / "gold.jsonl", rows)


def _config(tmp_path, gold: bool = True, **kwargs) -> DataConfig:
    return DataConfig(dataset=str(_sources_file(tmp_path)), eval_fraction=0.25, reward_fraction=0.3, eval_prompts=4,
                      seed=3, heldout_file=str(_gold_file(tmp_path)) if gold else "", **kwargs)


def test_without_a_gold_file_the_split_is_what_it_was(tmp_path):
    config = _config(tmp_path, gold=False)
    summary = split_preferences(load_preferences(config), config).summary()
    assert summary.pop("provenance") == {"train": "sources", "reward": "sources", "eval": "sources"}
    assert summary == BEFORE_GOLD
    assert from_dict(DataConfig, {"dataset": "x.jsonl", "seed": 3}).heldout_file == ""  # old config.yaml files load


def test_gold_pairs_only_hold_out_and_shared_prompts_leave_training(tmp_path):
    config = _config(tmp_path)
    data, gold = load_preferences(config), load_gold(config)
    split = split_preferences(data, config)
    assert gold.sources == ["gold"] and all(p.pair_id.startswith("gold:gold:") for p in gold.pairs)

    trained = [p for pairs in split.train.values() for p in pairs]
    assert not any(p.pair_id.startswith("gold:") for p in trained)
    assert not {p.prompt_key for p in trained} & {p.prompt_key for p in gold.pairs}
    assert split.removed_from_train == {"crawl": 2, "vendor": 1}
    assert {s: len(p) for s, p in split.train.items()} == {"crawl": 10, "vendor": 8}  # every other source pair

    held = split.reward["gold"] + split.eval_pairs
    assert all(p.pair_id.startswith("gold:") for p in held)
    assert not {p.prompt_key for p in split.reward["gold"]} & {p.prompt_key for p in split.eval_pairs}
    assert [p.prompt_id for p in split.eval_prompts] == [p.pair_id for p in split.eval_pairs]
    assert len(split.eval_prompts) == 4 and len(split.reward["gold"]) > 10

    summary = split.summary()
    assert summary["provenance"] == {"train": "sources", "reward": "gold file gold.jsonl", "eval": "gold file gold.jsonl"}
    assert summary["removed_from_train"] == {"crawl": 2, "vendor": 1}
    assert "3 source pair(s) left out of training" in describe_provenance(summary)


def test_a_gold_split_reads_back_identically_from_split_json(tmp_path, runs_dir):
    config = _config(tmp_path)
    run = create_run("gold", RunConfig(data=config))
    recorded = record_sources(run, config)
    again = RunContext.open(Run.named("gold")).split
    assert again.summary() == recorded.summary() == run.load_split()
    assert [p.pair_id for p in again.eval_pairs] == [p.pair_id for p in recorded.eval_pairs]
    assert [p.chosen for p in again.eval_pairs] == [p.chosen for p in recorded.eval_pairs]


def test_objectives_group_gold_pairs_by_its_source_column_and_name_what_it_lacks(tmp_path, runs_dir):
    config = _config(tmp_path)
    config.heldout_file = str(_gold_file(tmp_path, labelled=True))
    rewards = RewardConfig(objectives=[RewardObjective("helpfulness", ["helpful"]),
                                       RewardObjective("harmlessness", ["harmless-base"])])
    run = create_run("labelled", RunConfig(data=config, rewards=rewards))
    with pytest.raises(UserError, match=r"'harmlessness' names \['harmless-base'\].*\['harmless', 'helpful'\]"):
        record_sources(run, config)
    rewards.objectives[1].sources = ["harmless"]
    run.save_config(RunConfig(data=config, rewards=rewards))
    split = record_sources(run, config)
    assert sorted(split.reward) == ["harmless", "helpful"]


def test_the_sources_command_takes_a_heldout_file(tmp_path, runs_dir, capsys):
    config = _config(tmp_path)
    assert main(["sources", "--data", config.dataset, "--heldout-file", config.heldout_file,
                 "--run", str(runs_dir / "cli"), "--new"]) == 0
    assert "prompts from gold file gold.jsonl" in capsys.readouterr().out
    assert Run.named("cli").load_config().data.heldout_file == config.heldout_file


def test_sources_page_takes_a_heldout_file_and_shows_where_each_part_came_from(tmp_path, runs_dir):
    config = _config(tmp_path)
    create_run("page")
    app = AppTest.from_file(APP, default_timeout=60)
    app.session_state["run_name"] = "page"
    app.run()
    app.radio[0].set_value("A local file or folder").run()
    app.text_input[0].set_value(config.dataset).run()
    next(t for t in app.text_input if t.label.startswith("Trusted held-out file")).set_value(config.heldout_file).run()
    next(b for b in app.button if b.label.startswith("Save")).click().run()
    assert not app.exception and app.success
    assert Run.named("page").load_config().data.heldout_file == config.heldout_file
    shown = " ".join(c.value for c in app.caption)
    assert "train: 18 pairs from sources" in shown and "from gold file gold.jsonl" in shown
    assert "3 source pair(s) left out of training" in shown


def test_adapters_are_judged_on_gold_pairs_not_on_their_own_training_pairs(tmp_path):
    from valuation.data.splits import judging_pairs

    config = _config(tmp_path)
    data = load_preferences(config)
    split = split_preferences(data, config)
    judged = judging_pairs("crawl", data, split, config)
    assert judged == split.eval_pairs and not {p.pair_id for p in judged} & {p.pair_id for p in split.train["crawl"]}
    plain = _config(tmp_path, gold=False)
    assert all(p.source == "crawl" for p in judging_pairs("crawl", data, split_preferences(data, plain), plain))


def test_the_reports_sources_command_names_the_gold_file(tmp_path) -> None:
    from valuation.config import DataConfig, RunConfig
    from valuation.report.reproduce import sources_command
    from valuation.runs import Run

    config = RunConfig(data=DataConfig(heldout_file="/data/gold.jsonl"))
    assert "--heldout-file /data/gold.jsonl" in sources_command(Run(tmp_path / "r"), config)
