"""Preference pairs by source: one loader for HH-RLHF, UltraFeedback and plain tables.

Every loader yields `PreferencePair`s (prompt as chat messages, chosen reply, rejected reply,
source). A defect of a whole file raises `DataError` naming the file and the problem; a bad row is
skipped and counted in the `LoadReport`, never silently dropped.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from ..config import DataConfig, RewardConfig, RewardObjective
from ..errors import UserError

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
HH_HUB_ID = "Anthropic/hh-rlhf"
ULTRAFEEDBACK_HUB_ID = "openbmb/UltraFeedback"
HELPFUL_HUB_ID = "Ray2333/gpt2-large-helpful-reward_model"  # HH-RLHF's objectives online: Ray2333's reward models
HARMLESS_HUB_ID = "Ray2333/gpt2-large-harmless-reward_model"
TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
MAX_TEXT_CHARS = 8000  # longer prompts or replies are truncated (and counted) to keep memory bounded

Messages = list[dict[str, str]]


class DataError(UserError):
    """A whole input cannot be used; the message names the file and what is wrong."""


@dataclass
class PreferencePair:
    source: str
    prompt: Messages  # the conversation so far, ending with a user turn
    chosen: str
    rejected: str
    row: int  # the row in its source file, for tracing a pair back

    @property
    def pair_id(self) -> str:
        return f"{self.source}:{self.row}"

    @property
    def prompt_key(self) -> str:
        """What makes two prompts 'the same' for splitting: the opening user turn, normalised."""
        return " ".join(self.prompt[0]["content"].lower().split())


@dataclass
class LoadReport:
    origin: str
    pairs: Counter = field(default_factory=Counter)  # source -> pairs kept
    skipped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # source -> reason -> n
    truncated: Counter = field(default_factory=Counter)  # source -> pairs with a text cut to MAX_TEXT_CHARS

    def skipped_total(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.skipped.values())

    def summary(self) -> list[str]:
        lines = []
        for source, reasons in sorted(self.skipped.items()):
            detail = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
            lines.append(f"{source}: skipped {sum(reasons.values())} row(s) ({detail})")
        lines += [f"{s}: truncated {n} long pair(s) to {MAX_TEXT_CHARS} characters" for s, n in sorted(self.truncated.items())]
        return lines


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    report: LoadReport

    @property
    def sources(self) -> list[str]:
        return sorted(self.report.pairs)

    def by_source(self) -> dict[str, list[PreferencePair]]:
        grouped: dict[str, list[PreferencePair]] = defaultdict(list)
        for pair in self.pairs:
            grouped[pair.source].append(pair)
        return dict(grouped)


class _RowSkipped(Exception):
    """A row that cannot be used; its message is the reason counted in the report."""


# ---------------------------------------------------------------------------------------------
# Entry point


def load_preferences(config: DataConfig) -> PreferenceData:
    """Read every pair of the configured dataset, keeping only `config.sources` when given."""
    dataset = config.dataset.strip()
    if dataset == "hh-rlhf":
        data = _collect(_hh_rows(config.resolved_data_dir()), "Anthropic HH-RLHF", _parse_hh_row)
    elif dataset == "ultrafeedback":
        data = _collect(_ultrafeedback_rows(config.ultrafeedback_file), "UltraFeedback", _ultrafeedback_parser(config.seed))
    else:
        data = load_table_path(Path(dataset).expanduser())
    return _select_sources(data, config.sources)


def default_objectives(data: DataConfig) -> list[RewardObjective]:
    """What a dataset is judged on when the run names no reward objectives. HH-RLHF: helpfulness on
    the helpful subsets, harmlessness on harmless-base (with Ray2333's models as the online
    alternative). Any other dataset: one 'preference' objective on all sources."""
    if data.dataset.strip() != "hh-rlhf":
        return [RewardObjective("preference")]
    return [
        RewardObjective("helpfulness", [s for s in HH_SUBSETS if s.startswith("helpful")], HELPFUL_HUB_ID),
        RewardObjective("harmlessness", ["harmless-base"], HARMLESS_HUB_ID),
    ]


def resolved_objectives(config: RewardConfig, data: DataConfig) -> list[RewardObjective]:
    """The configured objectives, or the dataset's defaults when none are configured."""
    return config.objectives or default_objectives(data)


def check_sources(data: PreferenceData, wanted: list[str]) -> None:
    """Refuse source names the data lacks, naming those it has."""
    unknown = sorted(set(wanted) - set(data.sources))
    if unknown:
        raise DataError(f"{data.report.origin}: no source named {unknown}; available: {data.sources}.")


def _select_sources(data: PreferenceData, wanted: list[str]) -> PreferenceData:
    if not wanted:
        return data
    check_sources(data, wanted)
    keep = set(wanted)
    report = data.report
    report.pairs = Counter({s: n for s, n in report.pairs.items() if s in keep})
    report.skipped = defaultdict(Counter, {s: r for s, r in report.skipped.items() if s in keep})
    report.truncated = Counter({s: n for s, n in report.truncated.items() if s in keep})
    return PreferenceData([p for p in data.pairs if p.source in keep], report)


def _collect(rows: Iterable[tuple[str, str, int, dict]], origin: str, parse) -> PreferenceData:
    """Parse (file, source, row index, raw row) tuples into pairs, counting what is skipped."""
    report = LoadReport(origin)
    pairs: list[PreferencePair] = []
    for file, source, index, raw in rows:
        try:
            prompt, chosen, rejected = parse(raw)
            prompt, chosen, rejected, cut = _truncate(prompt, chosen, rejected)
            if not chosen.strip() or not rejected.strip():
                raise _RowSkipped("empty reply")
            if chosen.strip() == rejected.strip():
                raise _RowSkipped("chosen identical to rejected")
        except _RowSkipped as skip:
            report.skipped[source][str(skip)] += 1
            continue
        report.truncated[source] += cut
        report.pairs[source] += 1
        pairs.append(PreferencePair(source, prompt, chosen, rejected, index))
    report.truncated = +report.truncated  # drop zero counts
    for source, n in list(report.pairs.items()):
        if n < 2:
            raise DataError(f"{origin}: source {source!r} has {n} usable pair(s); a source needs at least 2.")
    if not pairs:
        raise DataError(f"{origin}: no usable preference pair found.")
    return PreferenceData(pairs, report)


def _truncate(prompt: Messages, chosen: str, rejected: str) -> tuple[Messages, str, str, int]:
    texts = [m["content"] for m in prompt] + [chosen, rejected]
    if all(len(t) <= MAX_TEXT_CHARS for t in texts):
        return prompt, chosen, rejected, 0
    cut = [t[:MAX_TEXT_CHARS] for t in texts]
    prompt = [{"role": m["role"], "content": c} for m, c in zip(prompt, cut)]
    return prompt, cut[-2], cut[-1], 1


# ---------------------------------------------------------------------------------------------
# Anthropic HH-RLHF: "\n\nHuman: ...\n\nAssistant: ..." transcripts, one source per subset

_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_transcript(text: str) -> Messages:
    """Split an HH-RLHF transcript into alternating user/assistant messages."""
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise _RowSkipped("unparseable transcript")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:  # a repeated speaker continues its turn
            messages[-1]["content"] += "\n\n" + content.strip()
        else:
            messages.append({"role": role, "content": content.strip()})
    if messages[0]["role"] != "user" or messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise _RowSkipped("unparseable transcript")
    return messages


def _parse_hh_row(raw: dict) -> tuple[Messages, str, str]:
    if not isinstance(raw.get("chosen"), str) or not isinstance(raw.get("rejected"), str):
        raise _RowSkipped("missing chosen or rejected text")
    chosen, rejected = parse_transcript(raw["chosen"]), parse_transcript(raw["rejected"])
    if chosen[:-1] != rejected[:-1]:
        raise _RowSkipped("chosen and rejected differ before the last reply")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _hh_rows(data_dir: Path) -> Iterator[tuple[str, str, int, dict]]:
    """Offline copies from `data_dir/hh-rlhf/<subset>-test.jsonl.gz`, else the hub dataset."""
    folder = data_dir / "hh-rlhf"
    local = {s: folder / f"{s}-test.jsonl.gz" for s in HH_SUBSETS}
    if folder.is_dir():
        missing = [str(p) for p in local.values() if not p.exists()]
        if missing:
            raise DataError(f"{folder}: missing HH-RLHF file(s) {missing}.")
        for subset, path in local.items():
            for index, raw in enumerate(_read_jsonl(path)):
                yield str(path), subset, index, raw
        return
    for subset in HH_SUBSETS:
        for index, raw in enumerate(_hub_rows(HH_HUB_ID, split="test", data_dir=subset, local_hint=folder)):
            yield HH_HUB_ID, subset, index, raw


# ---------------------------------------------------------------------------------------------
# UltraFeedback: instruction + rated completions; pair = best overall_score against a lower one


def _ultrafeedback_parser(seed: int):
    def parse(raw: dict) -> tuple[Messages, str, str]:
        instruction, completions = raw.get("instruction"), raw.get("completions")
        if not isinstance(instruction, str) or not instruction.strip() or not isinstance(completions, list):
            raise _RowSkipped("missing instruction or completions")
        rated = [c for c in completions if isinstance(c, dict) and isinstance(c.get("overall_score"), (int, float))
                 and isinstance(c.get("response"), str)]
        if len(rated) < 2:
            raise _RowSkipped("fewer than two rated completions")
        best = max(c["overall_score"] for c in rated)
        chosen = next(c for c in rated if c["overall_score"] == best)
        lower = [c for c in rated if c["overall_score"] < best]
        if not lower:
            raise _RowSkipped("all completions rated alike")
        # The common binarisation: a random lower-rated completion, seeded by the instruction.
        rejected = random.Random(f"{seed}:{instruction}").choice(lower)
        return [{"role": "user", "content": instruction}], chosen["response"], rejected["response"]

    return parse


def _ultrafeedback_rows(local_file: str) -> Iterator[tuple[str, str, int, dict]]:
    if local_file:
        path = Path(local_file).expanduser()
        frame = read_table(path)
        _require_columns(frame, path, ("source", "instruction", "completions"))
        records: Iterable[dict] = frame.to_dict("records")
        origin = str(path)
    else:
        records, origin = _hub_rows(ULTRAFEEDBACK_HUB_ID, split="train"), ULTRAFEEDBACK_HUB_ID
    for index, raw in enumerate(records):
        if isinstance(raw.get("completions"), str):  # a CSV cell holds JSON
            raw = {**raw, "completions": _json_or_none(raw["completions"])}
        yield origin, str(raw.get("source") or "unknown"), index, raw


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# Plain tables: JSONL, CSV or Parquet with prompt, chosen, rejected and a source column


def load_table_path(path: Path, default_source: str = "") -> PreferenceData:
    """A table with a `source` column, a table without one (its file name is the source, or
    `default_source` when given), or a folder of tables, one source per file."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(TABLE_SUFFIXES))
        if not files:
            raise DataError(f"{path}: no {', '.join(TABLE_SUFFIXES)} file in this folder.")
        names = Counter(_stem(p) for p in files)
        twice = sorted(n for n, c in names.items() if c > 1)
        if twice:
            raise DataError(f"{path}: duplicate source name(s) {twice}: two files share a name; rename one.")
        rows = (row for p in files for row in _table_rows(p, default_source=_stem(p)))
        return _collect(rows, str(path), _parse_table_row)
    return _collect(_table_rows(path, default_source=default_source or _stem(path)), str(path), _parse_table_row)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _table_rows(path: Path, default_source: str) -> Iterator[tuple[str, str, int, dict]]:
    frame = read_table(path)
    _require_columns(frame, path, ("prompt", "chosen", "rejected"))
    if "source" in frame.columns and frame["source"].isna().all():
        raise DataError(f"{path}: the source column is empty.")
    for index, raw in enumerate(frame.to_dict("records")):
        source = raw.get("source", default_source)
        yield str(path), str(default_source if _missing(source) else source).strip(), index, raw


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def _parse_table_row(raw: dict) -> tuple[Messages, str, str]:
    """prompt: text or a message list; chosen/rejected: text or a message list ending in the reply."""
    prompt = raw.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        messages = [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in prompt]
    else:
        raise _RowSkipped("missing prompt")
    return messages, _reply_text(raw.get("chosen")), _reply_text(raw.get("rejected"))


def _reply_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise _RowSkipped("missing chosen or rejected text")


# ---------------------------------------------------------------------------------------------
# Reading files, with one clear message per defect


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found.")
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            frame = pd.DataFrame(list(_read_jsonl(path)))
        elif name.endswith(".json"):
            frame = pd.read_json(path)
        elif name.endswith(".csv"):
            frame = pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False)
        elif name.endswith(".parquet"):
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: unsupported file type; use {', '.join(TABLE_SUFFIXES)}.")
    except DataError:
        raise
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 text (byte {error.start}); re-save it as UTF-8.") from None
    except Exception as error:  # pandas/pyarrow raise many types for a corrupt file
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {str(error)[:200]}).") from None
    if frame.empty:
        raise DataError(f"{path}: the file holds no rows.")
    return frame


def _read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(f"{path}: line {line_number} is not valid JSON.") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {line_number} is not a JSON object.")
                yield row
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 text (byte {error.start}); re-save it as UTF-8.") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot be read ({error}).") from None


def _require_columns(frame: pd.DataFrame, path: Path, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}.")


def _hub_rows(dataset_id: str, split: str, local_hint: Path, **kwargs: Any) -> Iterator[dict]:
    """Rows of a hub dataset; offline, a message that says where local copies are looked for."""
    try:
        from datasets import load_dataset

        rows = load_dataset(dataset_id, split=split, **kwargs)
    except Exception as error:
        raise DataError(
            f"{dataset_id}: no local copy in {local_hint} and the hub dataset could not be loaded "
            f"({type(error).__name__}). Set the data directory to a folder with offline copies, or go online."
        ) from None
    yield from rows
