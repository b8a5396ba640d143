"""benchmarks/mae_plateau.py: block means, the exit rule, and a few updates end to end."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import mae_plateau  # noqa: E402
from helpers_runs import write_toy_replay  # noqa: E402

TINY_MAE = "--mae.batch 2 --mae.length 4"


def test_block_means_average_full_blocks_and_drop_a_partial_one():
    assert mae_plateau.block_means([1, 3, 5, 7, 9], 2) == [2.0, 6.0]


def test_the_exit_is_the_end_of_the_first_block_below_the_threshold():
    curve = [0.40, 0.36, 0.30, 0.20, 0.30, 0.10]
    assert mae_plateau.exit_update(curve, 100, 0.25) == 400  # 0.20 is the fourth block: updates 301-400
    assert mae_plateau.exit_update(curve, 100, 0.05) is None
    s = mae_plateau.summary({0: curve, 1: [0.4, 0.4]}, 100, 0.25)
    assert s["exits"] == {0: 400, 1: None} and s["left"] == 1 and s["seeds"] == 2
    assert s["final"] == {0: 0.10, 1: 0.4}


def test_the_pixel_loss_is_found_by_its_name_and_its_absence_is_an_error():
    assert mae_plateau.pixel_loss_key({"mae/loss": 1.0, "mae/pixel_loss": 0.5}) == "mae/pixel_loss"
    with pytest.raises(RuntimeError):
        mae_plateau.pixel_loss_key({"mae/loss": 1.0})


def test_a_few_updates_per_seed_give_one_curve_each_repeatably_and_leave_the_replay_alone(tmp_path):
    write_toy_replay(tmp_path / "replay", 3)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "replay").iterdir())

    def run(out):
        code = mae_plateau.main(["--replay", str(tmp_path / "replay"), "--updates", "4", "--every", "2",
                                 "--seeds", "0", "1", "--below", "100", "--out", str(out), "--plot", "none",
                                 "--variant", f"a: {TINY_MAE}", "--variant", f"b: {TINY_MAE} --mae.lr 3e-3"])
        assert code == 0
        return json.loads(out.read_text())

    first, again = run(tmp_path / "one.json"), run(tmp_path / "two.json")
    assert [v["name"] for v in first["variants"]] == ["a", "b"]
    a = first["variants"][0]
    assert set(a["curves"]) == {"0", "1"} and all(len(c) == 2 and min(c) > 0 for c in a["curves"].values())
    assert a["curves"]["0"] != a["curves"]["1"]  # the seeds differ...
    assert again["variants"][0]["curves"] == a["curves"]  # ... and each one repeats
    assert first["variants"][1]["curves"]["0"] != a["curves"]["0"]  # the variant's flags were applied
    # a threshold above every loss: each seed leaves the plateau in its first block
    assert a["summary"]["left"] == 2 and set(a["summary"]["exits"].values()) == {2}
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "replay").iterdir()) == before


def test_the_plot_draws_every_variant(tmp_path):
    result = {"every": 10, "below": 0.25, "variants": [
        {"name": "a", "curves": {"0": [0.4, 0.3], "1": [0.4, 0.2]}},
        {"name": "b", "curves": {"0": [0.5, 0.1]}}]}
    path = tmp_path / "curves.png"
    mae_plateau.plot(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
