"""Valuing tables, a run's among them, and the `shapley` command, on games written as CSV as the
evaluation job writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import (GLOVE_SHAPLEY, additive_prompt_frame, evaluation_folder, glove_frame, run_table, utilities_csv,
                     write_sampled_evaluation, write_utilities)
from valuation.cli import main
from valuation.commands.shapley import format_table
from valuation.errors import UserError
from valuation.games.utility_table import UtilityError, with_combined
from valuation.games.values import ValuationConfig, read_table, value_sources
from valuation.runs import Run
from valuation.views.caveats import value_caveats
from valuation.views.snapshot import RunSnapshot

SAMPLED = [f"source-{i:02d}" for i in range(13)]  # one more than exact evaluation takes


def write_run(tmp_path: Path, frame: pd.DataFrame, name: str = "r") -> Path:
    return write_utilities(tmp_path / name, frame)


def test_glove_game_values(tmp_path: Path) -> None:
    valuation = value_sources(run_table(write_run(tmp_path, glove_frame())))
    assert (valuation.shapley.method, valuation.shapley.describe()) == ("exact", "exact shapley")
    assert not valuation.has_intervals
    for i, player in enumerate(valuation.players):
        assert valuation.shapley.values[i] == pytest.approx([GLOVE_SHAPLEY[player], 2 * GLOVE_SHAPLEY[player]])
    assert valuation.efficiency_frame().gap.abs().max() < 1e-12
    assert valuation.efficiency_frame().set_index("objective").loc["harmlessness", "v_full"] == 2
    # Banzhaf: L is pivotal in 3 of the 4 coalitions of the others, each right glove in 1
    assert valuation.banzhaf.values[:, 0] == pytest.approx([3 / 4, 1 / 4, 1 / 4])
    # the right gloves substitute for each other; L and a right glove complement
    interactions = valuation.interaction_frame("helpfulness")
    assert interactions.loc["R1", "R2"] < 0 < interactions.loc["L", "R1"]


def test_permutation_method_gives_monte_carlo_intervals(tmp_path: Path) -> None:
    valuation = value_sources(read_table(utilities_csv(write_run(tmp_path, glove_frame()))),
                              ValuationConfig(method="permutation", permutations=400, seed=1))
    assert valuation.shapley.convergence is not None
    assert valuation.shapley.values[:, 0] == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=0.1)
    assert np.all(valuation.shapley.lower <= valuation.shapley.values)
    assert valuation.efficiency_frame().gap.abs().max() < 1e-12  # every permutation sums to v(N) - v(empty)


def test_per_prompt_table_gets_bootstrap_intervals(tmp_path: Path) -> None:
    frame = additive_prompt_frame()
    valuation = value_sources(run_table(write_run(tmp_path, frame)), ValuationConfig(bootstrap=500))
    assert (valuation.shapley.interval, valuation.shapley.prompts) == ("percentile", 30)
    assert "percentile interval over 30 prompts" in valuation.shapley.describe()
    values = valuation.values_frame().set_index(["objective", "player"])
    strong, noise = values.loc[("helpfulness", "strong")], values.loc[("helpfulness", "noise")]
    assert strong.lower > 0.5 and not strong.spans_zero
    assert noise.value == pytest.approx(0, abs=1e-12) and noise.spans_zero
    assert (values.minus >= 0).all() and (values.plus >= 0).all()
    assert "spans zero: not distinguishable from no effect" in format_table(valuation, value_caveats({"": valuation}))


def test_combined_objective_is_linear(tmp_path: Path) -> None:
    table = run_table(write_run(tmp_path, additive_prompt_frame()))
    combined = value_sources(with_combined(table, 0.3, "helpfulness", "harmlessness"))
    phi = combined.shapley.values
    assert combined.objectives == ("helpfulness", "harmlessness", "combined")
    assert phi[:, 2] == pytest.approx(0.3 * phi[:, 0] + 0.7 * phi[:, 1])
    assert combined.shapley.lower[:, 2] != pytest.approx(0.3 * combined.shapley.lower[:, 0]
                                                         + 0.7 * combined.shapley.lower[:, 1])  # its own interval
    with pytest.raises(UtilityError, match="no objective 'quality'"):
        with_combined(table, 0.5, "helpfulness", "quality")


def test_missing_coalition_is_a_clear_user_error(tmp_path: Path) -> None:
    frame = glove_frame()
    table = read_table(utilities_csv(write_run(tmp_path, frame[frame.coalition != "R1+R2"])))
    with pytest.raises(UserError, match=r"lacks 1 of the 8 coalitions exact Shapley needs \('R1\+R2'\)"):
        value_sources(table)
    with pytest.raises(UserError, match="no row for coalition 'R1\\+R2'"):
        value_sources(table, ValuationConfig(method="permutation", permutations=200))


def test_a_sampled_evaluation_is_valued_with_its_own_permutations_and_seed(tmp_path: Path) -> None:
    run = tmp_path / "sampled"
    worth = write_sampled_evaluation(run, SAMPLED, permutations=10, seed=7)
    table = run_table(run)
    assert len(table.values) < 2 ** 13 // 10  # only the coalitions the permutation sample visits
    config = RunSnapshot(Run(run)).valuation_config
    assert (config.method, config.permutations, config.seed) == ("auto", 10, 7)
    valuation = value_sources(table, config)
    assert valuation.shapley.values[:, 0] == pytest.approx([worth[s] for s in valuation.players])
    assert valuation.shapley.convergence.n_evaluations == len(table.values)  # it asked for every one, no other
    # the defaults' 1000 permutations from seed 0 ask for coalitions that were never evaluated; so does the seed alone
    for other in (ValuationConfig(), ValuationConfig(permutations=10)):
        with pytest.raises(UtilityError, match="no row for coalition"):
            value_sources(table, other)


def test_run_valuation_config_without_or_with_broken_settings(tmp_path: Path) -> None:
    assert RunSnapshot(Run(tmp_path / "never-evaluated")).valuation_config == ValuationConfig()
    path = evaluation_folder(tmp_path / "r") / "settings.json"
    path.parent.mkdir(parents=True)
    path.write_text("{")
    with pytest.raises(UtilityError, match=re.escape(str(path))):
        RunSnapshot(Run(tmp_path / "r")).valuation_config
    path.write_text(json.dumps({"method": "permutation", "permutations": "many", "prompts": 16}))
    with pytest.raises(UserError, match="permutations: expected int, got 'many'"):
        RunSnapshot(Run(tmp_path / "r")).valuation_config


@pytest.mark.parametrize("text, message", [
    ("coalition,helpfulness\n,0\na,oops\n", "non-numeric value 'oops' in objective column 'helpfulness'"),
    ("team,helpfulness\n,0\n", "needs a 'coalition' column"),
    ("", "No columns to parse"),
    ("coalition,helpfulness\n,0\na,1\na,2\n", "duplicate coalition 'a'"),
])
def test_bad_csv_is_a_user_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "utilities.csv"
    path.write_text(text)
    with pytest.raises(UtilityError, match=message) as error:
        read_table(path)
    assert str(path) in str(error.value)


def test_run_without_utilities_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UtilityError, match="has no coalition utilities yet"):
        run_table(tmp_path / "empty-run")


def test_cli_table_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path, glove_frame())
    (run / "rewards" / "helpfulness").mkdir(parents=True)
    (run / "rewards" / "helpfulness" / "reward.json").write_text(
        json.dumps({"heldout_accuracy": 0.55, "interval": [0.48, 0.62], "heldout_pairs": 200}))
    assert main(["shapley", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  L\s+\+1\.3333$", out, re.MULTILINE)  # harmlessness: twice the glove game
    assert "efficiency: sum of values +2.0000 vs v(N) - v(empty)" in out
    # helpfulness's reward model is at chance: said in words instead of its values, as on the page and in the report
    assert "helpfulness: not shown. Its reward model is at chance" in out and not re.search(r"^  L\s+\+0\.6667$", out,
                                                                                           re.MULTILINE)
    assert "reward model helpfulness: held-out accuracy 0.550 [0.480, 0.620] on 200 pairs  warning: near chance" in out
    assert "caveats:" in out and "one training seed" in out


def test_cli_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = utilities_csv(write_run(tmp_path, additive_prompt_frame()))
    assert main(["shapley", "--utilities", str(path), "--format", "json", "--bootstrap", "200",
                 "--confidence", "0.9"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["confidence"] == 0.9
    strong = result["shapley"]["helpfulness"]["strong"]
    assert strong["lower"] < strong["value"] < strong["upper"]
    assert abs(result["efficiency"]["harmlessness"]["gap"]) < 1e-12
    assert set(result["banzhaf"]["helpfulness"]) == {"strong", "weak", "noise"}


def test_cli_values_a_run_with_its_evaluation_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "sampled"
    write_sampled_evaluation(run, SAMPLED, permutations=10, seed=7)
    assert main(["shapley", "--run", str(run), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "permutation shapley (antithetic), normal interval from the sampling of orders"
    assert {c["kind"] for c in result["caveats"]} >= {"coverage", "training_noise"}
    assert result["shapley"]["quality"]["source-12"]["value"] == pytest.approx(13)
    assert main(["shapley", "--run", str(run), "--seed", "0"]) == 2  # a flag still overrides the run's setting
    assert "no row for coalition" in capsys.readouterr().err


def test_cli_bad_input_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("coalition,helpfulness\n,0\na,oops\n")
    assert main(["shapley", "--utilities", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert main(["shapley", "--utilities", str(path), "--confidence", "1.5"]) == 2
