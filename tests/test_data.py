"""Preference data by source: each format, each bad input, and the report of skipped rows."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from helpers import table_rows, write_jsonl
from valuation.config import DataConfig
from valuation.data.preferences import (HH_SUBSETS, MAX_TEXT_CHARS, DataError, _RowSkipped, load_preferences,
                            parse_transcript)


def test_hh_transcript_becomes_messages():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine."
    assert parse_transcript(text) == [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."}]
    with pytest.raises(_RowSkipped):
        parse_transcript("no speaker markers at all")


def _hh_dir(tmp_path, rows_per_subset: dict[str, list[dict]]):
    folder = tmp_path / "hh-rlhf"
    folder.mkdir()
    for subset in HH_SUBSETS:
        with gzip.open(folder / f"{subset}-test.jsonl.gz", "wt", encoding="utf-8") as handle:
            for row in rows_per_subset.get(subset, []):
                handle.write(json.dumps(row) + "\n")
    return tmp_path


def _hh_pair(i: int, chosen: str = "yes", rejected: str = "no") -> dict:
    prompt = f"\n\nHuman: question {i}\n\nAssistant: ask more\n\nHuman: more {i}\n\nAssistant:"
    return {"chosen": f"{prompt} {chosen} {i}", "rejected": f"{prompt} {rejected} {i}"}


def test_hh_offline_one_source_per_subset_and_bad_rows_counted(tmp_path):
    rows = [_hh_pair(i) for i in range(5)]
    bad = [_hh_pair(9, "same", "same"), {"chosen": "garbage", "rejected": "garbage too"}]
    data_dir = _hh_dir(tmp_path, {s: rows + (bad if s == "helpful-base" else []) for s in HH_SUBSETS})
    data = load_preferences(DataConfig(data_dir=str(data_dir)))
    assert data.sources == sorted(HH_SUBSETS)
    assert all(n == 5 for n in data.report.pairs.values())
    assert data.report.skipped["helpful-base"] == {"chosen identical to rejected": 1, "unparseable transcript": 1}
    pair = data.by_source()["harmless-base"][0]
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert pair.chosen == "yes 0" and pair.rejected == "no 0"
    assert any("skipped 2" in line for line in data.report.summary())


def test_default_offline_data_reads_every_subset():
    data = load_preferences(DataConfig())
    assert data.sources == sorted(HH_SUBSETS)
    assert all(n > 1000 for n in data.report.pairs.values())
    assert data.report.skipped_total() > 0  # the real data has a few dozen bad rows


def test_sources_filter_and_unknown_source(tmp_path):
    data_dir = _hh_dir(tmp_path, {s: [_hh_pair(i) for i in range(3)] for s in HH_SUBSETS})
    data = load_preferences(DataConfig(data_dir=str(data_dir), sources=["helpful-base", "harmless-base"]))
    assert data.sources == ["harmless-base", "helpful-base"]
    with pytest.raises(DataError, match="no source named"):
        load_preferences(DataConfig(data_dir=str(data_dir), sources=["nope"]))


def test_ultrafeedback_schema_pairs_best_against_lower(tmp_path):
    def row(i, source, scores):
        return {"source": source, "instruction": f"instruction {i}", "models": ["m"] * len(scores),
                "completions": [{"model": f"m{k}", "response": f"response {i}.{k}", "overall_score": s,
                                 "fine-grained_score": s, "annotations": {}, "critique": ""}
                                for k, s in enumerate(scores)]}
    rows = [row(i, "sharegpt", [3.0, 8.5, 5.0, 2.0]) for i in range(3)]
    rows += [row(i, "flan_v2_niv2", [6.0, 4.0]) for i in range(3, 6)]
    rows += [row(6, "flan_v2_niv2", [5.0, 5.0])]  # a tie: dropped and counted
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    data = load_preferences(DataConfig(dataset="ultrafeedback", ultrafeedback_file=str(path)))
    assert data.report.pairs == {"sharegpt": 3, "flan_v2_niv2": 3}
    assert data.report.skipped["flan_v2_niv2"]["all completions rated alike"] == 1
    first = data.by_source()["sharegpt"][0]
    assert first.chosen == "response 0.1" and first.rejected in {"response 0.0", "response 0.2", "response 0.3"}
    again = load_preferences(DataConfig(dataset="ultrafeedback", ultrafeedback_file=str(path)))
    assert [p.rejected for p in again.pairs] == [p.rejected for p in data.pairs]  # seeded


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_plain_tables_with_a_source_column(tmp_path, suffix):
    frame = pd.DataFrame(table_rows("vendor-a", 4) + table_rows("vendor-b", 3))
    path = tmp_path / f"pairs.{suffix}"
    {"jsonl": lambda: frame.to_json(path, orient="records", lines=True), "csv": lambda: frame.to_csv(path, index=False),
     "parquet": lambda: frame.to_parquet(path)}[suffix]()
    data = load_preferences(DataConfig(dataset=str(path)))
    assert data.report.pairs == {"vendor-a": 4, "vendor-b": 3}


def test_folder_of_files_one_source_per_file(tmp_path):
    folder = tmp_path / "sources"
    folder.mkdir()
    for name in ("crawl", "vendor"):
        rows = [{k: v for k, v in r.items() if k != "source"} for r in table_rows(name, 3)]
        write_jsonl(folder / f"{name}.jsonl", rows)
    assert load_preferences(DataConfig(dataset=str(folder))).sources == ["crawl", "vendor"]
    write_jsonl(folder / "crawl.csv", [])  # same source name twice
    pd.DataFrame(table_rows("x", 2)).to_csv(folder / "crawl.csv", index=False)
    with pytest.raises(DataError, match="duplicate source name"):
        load_preferences(DataConfig(dataset=str(folder)))


def test_conversational_columns_are_accepted(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}], "source": "s"} for i in range(2)]
    data = load_preferences(DataConfig(dataset=str(write_jsonl(tmp_path / "c.jsonl", rows))))
    assert data.pairs[0].prompt == [{"role": "user", "content": "q0"}] and data.pairs[0].chosen == "a"


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("empty", "holds no rows"),
    ("no_column", "missing column"),
    ("not_utf8", "not valid UTF-8"),
    ("bad_json", "not valid JSON"),
    ("one_pair", "at least 2"),
    ("all_bad", "no usable preference pair"),
    ("empty_source_column", "source column is empty"),
    ("wrong_type", "unsupported file type"),
])
def test_bad_files_are_refused_with_the_file_named(tmp_path, case, message):
    path = tmp_path / ("pairs.txt" if case == "wrong_type" else "pairs.jsonl")
    if case == "empty":
        path.write_text("")
    elif case == "no_column":
        write_jsonl(path, [{"prompt": "p", "chosen": "c"}])
    elif case == "not_utf8":
        path.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    elif case == "bad_json":
        path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{broken\n')
    elif case == "one_pair":
        write_jsonl(path, table_rows("a", 3) + table_rows("lonely", 1))
    elif case == "all_bad":
        write_jsonl(path, [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 3)
    elif case == "empty_source_column":
        write_jsonl(path, [{**r, "source": None} for r in table_rows("a", 3)])
    elif case == "wrong_type":
        path.write_text("whatever")
    with pytest.raises(DataError, match=message) as error:
        load_preferences(DataConfig(dataset=str(path)))
    assert str(path) in str(error.value)


def test_long_rows_are_truncated_and_counted(tmp_path):
    rows = table_rows("a", 3)
    rows[0]["chosen"] = "word " * MAX_TEXT_CHARS
    data = load_preferences(DataConfig(dataset=str(write_jsonl(tmp_path / "long.jsonl", rows))))
    assert len(data.pairs[0].chosen) == MAX_TEXT_CHARS
    assert data.report.truncated == {"a": 1}
