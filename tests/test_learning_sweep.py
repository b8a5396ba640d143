"""benchmarks/learning_sweep.py: merging learning results across commands and settings."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import learning, learning_sweep  # noqa: E402
from mwm.errors import UserError  # noqa: E402

RANDOM = [-1.0, -0.6, -0.8]


def _result(tmp_path, name, agents: dict, size=16, drift=0.0, random=RANDOM, steps=8000, prefill=1000,
            reward_corr: dict = None, first_seed=0):
    """A saved learning.py result of ``agents`` (agent -> final means of seeds ``first_seed``,
    ``first_seed`` + 1, ...); ``reward_corr``: agent -> its world models' open-loop reward
    correlation by seed index (the Dreamer family's)."""
    argv = ["--agents", *agents, "--object-size", str(size), "--drift", str(drift), "--steps", str(steps),
            "--prefill", str(prefill), "--seeds", *map(str, range(first_seed, first_seed + len(random)))]
    args = learning.parse_args(argv)
    runs = [{"agent": agent, "seed": seed, "final_mean": value, "agent_steps_per_s": 10.0, "minutes": 1.0,
             "evals": [[1000, value]], "prefill": prefill,
             "flags": learning.run_flags(learning.train_command(args, agent, seed, tmp_path / "run"))}
            for agent, finals in agents.items() for seed, value in enumerate(finals, start=first_seed)]
    for run in runs:
        if run["agent"] in (reward_corr or {}):
            run["world_model"] = {"reward_corr": reward_corr[run["agent"]][run["seed"] - first_seed]}
    path = tmp_path / name
    path.write_text(json.dumps(learning.summarise(args, runs, random)))
    return str(path)


def test_agents_of_separate_commands_merge_into_the_figures_one_command_gives(tmp_path):
    curl = _result(tmp_path, "curl.json", {"curl": [2.0, 1.8, 4.0]})
    mwm = _result(tmp_path, "mwm.json", {"mwm": [0.0, -2.0, 2.5]})
    both = json.loads(Path(_result(tmp_path, "both.json", {"curl": [2.0, 1.8, 4.0], "mwm": [0.0, -2.0, 2.5]})).read_text())
    swept = learning_sweep.sweep([curl, mwm])
    assert swept["settings"] == ["16 px"]
    merged = swept["results"][0]
    for agent in ("curl", "mwm"):
        assert merged["agents"][agent]["mean"] == pytest.approx(both["agents"][agent]["mean"])
        assert merged["agents"][agent]["ci95"] == pytest.approx(both["agents"][agent]["ci95"])
        assert merged["agents"][agent]["beats_random"] == both["agents"][agent]["beats_random"]
    assert merged["agents"]["curl"]["beats_random"] and not merged["agents"]["mwm"]["beats_random"]


def test_settings_are_columns_from_the_largest_object_to_the_smallest_then_drift(tmp_path):
    files = [_result(tmp_path, "o2.json", {"curl": [-0.9, -0.5, -1.0]}, size=2),
             _result(tmp_path, "d16.json", {"curl": [1.0, 1.2]}, size=16, drift=1.0),
             _result(tmp_path, "o16.json", {"curl": [2.0, 1.8, 4.0]}, size=16),
             _result(tmp_path, "o8.json", {"curl": [1.0, 2.0, 1.5], "mwm": [-1.0, -2.0]}, size=8)]
    swept = learning_sweep.sweep(files)
    assert swept["settings"] == ["16 px", "8 px", "2 px", "16 px, drift 1"]
    table = {row[0]: row[1:] for row in learning_sweep.rows(swept)}
    assert table["curl"][0].endswith(">rnd")  # 16 px: its interval lies above random's
    assert not table["curl"][2].endswith(">rnd")  # 2 px: it does not
    assert table["curl"][3] == "+1.10 (n=2: +1.00, +1.20)"  # no interval from two seeds
    assert table["mwm"] == ["-", "-1.50 (n=2: -1.00, -2.00)", "-", "-"]  # run at one size only
    assert table["random"][0].startswith("-0.80 [")


def test_an_agent_found_twice_at_one_setting_is_refused(tmp_path):
    a = _result(tmp_path, "a.json", {"curl": [2.0, 1.8, 4.0]})
    b = _result(tmp_path, "b.json", {"curl": [1.0, 1.0, 1.0]})
    with pytest.raises(UserError, match="curl at 16 px is in both .*a.json and .*b.json"):
        learning_sweep.sweep([a, b])


def test_seeds_of_separate_commands_merge_into_the_figure_one_command_gives(tmp_path):
    first = _result(tmp_path, "seeds0-3.json", {"mwm": [4.7, 4.9, 5.0, 4.9]}, random=RANDOM + [-0.2])
    later = _result(tmp_path, "seed4.json", {"mwm": [1.0]}, random=RANDOM[:1], first_seed=4)
    one = json.loads(Path(_result(tmp_path, "one.json", {"mwm": [4.7, 4.9, 5.0, 4.9, 1.0]},
                                  random=RANDOM + [-0.2])).read_text())
    merged = learning_sweep.sweep([first, later])["results"][0]
    assert merged["seeds"] == [0, 1, 2, 3, 4]
    assert merged["agents"]["mwm"]["n"] == 5
    assert merged["agents"]["mwm"]["mean"] == pytest.approx(one["agents"]["mwm"]["mean"])
    assert merged["agents"]["mwm"]["ci95"] == pytest.approx(one["agents"]["mwm"]["ci95"])
    # the one-seed command's random group is the first of the four-seed command's: the four are kept
    assert merged["random"]["seed_means"] == pytest.approx(RANDOM + [-0.2])


def test_results_with_different_random_baselines_are_not_merged(tmp_path):
    a = _result(tmp_path, "a.json", {"curl": [2.0, 1.8, 4.0]})
    b = _result(tmp_path, "b.json", {"mwm": [1.0, 1.0, 1.0]}, random=[-1.0, -0.6, -0.5])
    with pytest.raises(UserError, match="different random-policy baselines"):
        learning_sweep.sweep([a, b])


def test_the_figure_plots_each_agents_mean_against_object_size(tmp_path, capsys, monkeypatch):
    files = [_result(tmp_path, f"o{size}.json", {"curl": finals}, size=size)
             for size, finals in ((16, [2.0, 1.8, 4.0]), (4, [0.0, 0.5, -0.5]))]
    fig = learning_sweep.figure(learning_sweep.sweep(files))
    (ax,) = fig.axes
    (line,) = [line for line in ax.get_lines() if line.get_label() == "curl"]
    assert list(line.get_xdata()) == [16, 4] and list(line.get_ydata()) == pytest.approx([2.6, 0.0])  # one agent: not shifted
    assert ax.get_xlim()[0] > ax.get_xlim()[1]  # large objects on the left
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert learning_sweep.main([*files, "--out", str(out), "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 0 and json.loads(out.read_text())["settings"] == ["16 px", "4 px"]
    assert "| curl | +2.60 [" in capsys.readouterr().out
    again = learning_sweep.sweep([str(out)])  # a saved sweep reads back as its settings
    assert again["settings"] == ["16 px", "4 px"] and again["results"][0]["agents"]["curl"]["mean"] == pytest.approx(2.6)
    monkeypatch.chdir(tmp_path)
    assert learning_sweep.main([*files, "--plot", "none"]) == 0  # as in learning.py: no figure, no file 'none'
    assert not (tmp_path / "none").exists()


def test_a_file_that_is_not_a_learning_result_is_one_clear_error(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(UserError, match="not a result of benchmarks/learning.py"):
        learning_sweep.sweep([str(other)])


def test_files_of_another_protocol_are_not_columns_of_one_sweep(tmp_path):
    a = _result(tmp_path, "a.json", {"curl": [2.0, 1.8, 4.0]}, size=16)
    b = _result(tmp_path, "b.json", {"curl": [1.0, 1.0, 1.0]}, size=8, steps=12000)
    with pytest.raises(UserError, match="differ in steps .8000 vs 12000."):
        learning_sweep.sweep([a, b])


def test_agents_that_started_from_different_prefills_are_not_compared(tmp_path):
    """A size preset once shortened the Dreamer agents' prefill to 100 steps while CURL's stayed at
    1000: such files do not make one sweep, in one column or across columns."""
    curl = _result(tmp_path, "curl.json", {"curl": [2.0, 1.8, 4.0]}, size=8)
    short = _result(tmp_path, "mwm.json", {"mwm": [0.0, -2.0, 2.5]}, size=8, prefill=100)
    with pytest.raises(UserError, match="mwm in .*mwm.json started after 100 random-policy steps, curl in "
                                        ".*curl.json after 1000"):
        learning_sweep.sweep([curl, short])
    other_size = _result(tmp_path, "mwm4.json", {"mwm": [0.0, -2.0, 2.5]}, size=4, prefill=100)
    with pytest.raises(UserError, match="started after 100 random-policy steps"):
        learning_sweep.sweep([curl, other_size])
    unrecorded = json.loads(Path(short).read_text())
    unrecorded["agents"]["mwm"].pop("prefill")
    Path(short).write_text(json.dumps(unrecorded))
    with pytest.raises(UserError, match="after an unrecorded number of random-policy steps"):
        learning_sweep.sweep([curl, short])
    same = _result(tmp_path, "mwm8.json", {"mwm": [0.0, -2.0, 2.5]}, size=8)
    assert learning_sweep.sweep([curl, same])["results"][0]["agents"]["mwm"]["prefill"] == 1000


def test_an_agent_that_ran_with_other_flags_at_another_size_is_refused(tmp_path, monkeypatch):
    """The benchmark's MWM setting once standardised the tokens and now does not: files from
    before and after such a change would put two algorithms in one row. Each agent's mwm.train
    flags, but for the object size and drift, must match across a sweep; files that do not
    record them (older ones) are not compared."""
    mwm16 = _result(tmp_path, "mwm16.json", {"mwm": [0.0, -2.0, 2.5]}, size=16)
    mwm8 = _result(tmp_path, "mwm8.json", {"mwm": [0.0, -1.0, 1.5]}, size=8, drift=1.0)
    assert learning_sweep.sweep([mwm16, mwm8])["settings"] == ["16 px", "8 px, drift 1"]
    preset, flags = learning.SETTINGS["cpu"]["mwm"]
    monkeypatch.setitem(learning.SETTINGS["cpu"], "mwm", (preset, [*flags, "--wm.token_norm", "true"]))
    changed = _result(tmp_path, "mwm4.json", {"mwm": [0.0, -1.0, 1.5]}, size=4)
    with pytest.raises(UserError, match=r"mwm ran with other mwm.train flags in .*mwm4.json than in .*mwm16.json "
                                        r"\(--wm.token_norm\)"):
        learning_sweep.sweep([mwm16, changed])
    unrecorded = json.loads(Path(changed).read_text())
    unrecorded["agents"]["mwm"].pop("flags")
    Path(changed).write_text(json.dumps(unrecorded))
    assert learning_sweep.sweep([mwm16, changed])["settings"] == ["16 px", "4 px"]


def test_replace_takes_a_column_retrained_with_other_flags_at_every_size(tmp_path, monkeypatch):
    """A new setting of an agent replaces its old row once it is re-trained at every size; while
    one size still holds the old setting's runs the row would mix two algorithms, and is refused."""
    old = [_result(tmp_path, f"old{size}.json", {"curl": [2.0, 1.8, 4.0], "mwm": [0.0, -2.0, 2.5]}, size=size)
           for size in (16, 8)]
    saved = tmp_path / "sweep.json"
    learning_sweep.main([*old, "--out", str(saved)])
    preset, flags = learning.SETTINGS["cpu"]["mwm"]
    monkeypatch.setitem(learning.SETTINGS["cpu"], "mwm", (preset, [*flags, "--wm.flat_pool", "attend"]))
    new16 = _result(tmp_path, "new16.json", {"mwm": [4.0, 4.4, 5.0]}, size=16)
    new8 = _result(tmp_path, "new8.json", {"mwm": [2.0, -1.1, -0.3]}, size=8)
    with pytest.raises(UserError, match=r"mwm ran with other mwm.train flags .*\(--wm.flat_pool\)"):
        learning_sweep.sweep([str(saved), new16], replace=True)  # 8 px still holds the old mwm
    swept = learning_sweep.sweep([str(saved), new16, new8], replace=True)
    assert [r["agents"]["mwm"]["seed_means"] for r in swept["results"]] == [[4.0, 4.4, 5.0], [2.0, -1.1, -0.3]]
    assert [r["agents"]["curl"]["seed_means"] for r in swept["results"]] == [[2.0, 1.8, 4.0]] * 2


def test_the_world_models_reward_correlation_is_a_second_table_and_panel_row(tmp_path, capsys):
    """Where the Dreamer agents' world models stop predicting reward as the object shrinks is
    the sweep's other question: their open-loop reward correlation by size, its own table
    (no random-policy row, no CURL row: CURL has no world model) and a second row of panels."""
    files = [_result(tmp_path, f"o{size}.json", {"curl": [1.0, 2.0, 3.0], "mwm": [0.0, -1.0, 1.0]}, size=size,
                     reward_corr={"mwm": corr}) for size, corr in ((16, [0.2, 0.3, 0.4]), (8, [0.0, 0.1, -0.1]))]
    swept = learning_sweep.sweep(files)
    table = learning_sweep.rows(swept, "reward_corr")
    assert [row[0] for row in table] == ["mwm"]
    assert table[0][1].startswith("+0.30 [") and table[0][2].startswith("+0.00 [")
    assert [row[0] for row in learning_sweep.rows(swept)] == ["curl", "mwm", "random"]
    fig = learning_sweep.figure(swept)
    assert len(fig.axes) == 2
    (line,) = [line for line in fig.axes[1].get_lines() if line.get_label() == "mwm"]
    assert list(line.get_ydata()) == pytest.approx([0.3, 0.0])
    assert not [line for line in fig.axes[1].get_lines() if line.get_label() == "curl"]
    assert learning_sweep.main(files) == 0
    assert "open-loop reward correlation" in capsys.readouterr().out


def test_replace_keeps_the_agents_of_the_file_named_last(tmp_path):
    old = _result(tmp_path, "old.json", {"curl": [2.0, 1.8, 4.0], "mwm": [0.0, -2.0, 2.5]})
    saved = tmp_path / "sweep.json"
    learning_sweep.main([old, "--out", str(saved)])
    new = _result(tmp_path, "new.json", {"mwm": [3.0, 4.0, 5.0]})
    with pytest.raises(UserError, match="--replace"):
        learning_sweep.sweep([str(saved), new])
    merged = learning_sweep.sweep([str(saved), new], replace=True)["results"][0]
    assert merged["agents"]["mwm"]["seed_means"] == [3.0, 4.0, 5.0]  # the re-trained column
    assert merged["agents"]["curl"]["seed_means"] == [2.0, 1.8, 4.0]  # the other agent stays
    assert sorted((run["agent"], run["final_mean"]) for run in merged["runs"]) == sorted(
        [("curl", 2.0), ("curl", 1.8), ("curl", 4.0), ("mwm", 3.0), ("mwm", 4.0), ("mwm", 5.0)])


def test_replacing_every_agent_of_a_file_drops_its_random_baseline(tmp_path):
    old = _result(tmp_path, "old.json", {"mwm": [0.0, -2.0, 2.5]}, random=[-2.0, -2.0, -2.0])  # other episodes
    new = _result(tmp_path, "new.json", {"mwm": [3.0, 4.0, 5.0, 4.5]}, random=RANDOM + [-0.4])  # 4 seeds
    with pytest.raises(UserError, match="mwm at 16 px is in both .*old.json and .*new.json \\(seed 0, 1, 2\\)"):
        learning_sweep.sweep([old, new])
    merged = learning_sweep.sweep([old, new], replace=True)["results"][0]
    assert merged["random"]["seed_means"] == RANDOM + [-0.4]
    assert merged["agents"]["mwm"]["n"] == 4
