"""Live progress from a stage's child process, and the one-line stage summaries (issue #15)."""
from __future__ import annotations

from components.runtime import progress
from components.runtime.isolation import call_isolated
from components.stages import evaluate, filter as filter_stage, generate


def test_training_in_a_child_reports_its_steps_while_it_runs(tiny_model_dir, tmp_path):
    """SFT through TRL in a child process, as every heavy stage runs: its steps reach the parent as
    they happen (not in one burst at the end), with loss and examples/s, and the plain watcher (logs,
    CI) turns them into lines."""
    got, logs, lines, polls = [], [], [], [0]
    plain = progress.PlainWatcher("sft", lines.append)

    def on_progress(event):  # called with each new event, then with None, at every poll of the child
        plain(event)
        if event is None:
            polls[0] += 1
        else:
            got.append((polls[0], event))

    # 256 steps: ~1 s on a fast machine, several of the parent's polls (4 a second) however fast it is.
    pairs = [(f"{i} + 1 = ", f"{i + 1}\n") for i in range(64)]
    result = call_isolated("components.models.sft:sft", {
        "base_dir": str(tiny_model_dir), "out_dir": str(tmp_path / "model"), "pairs": pairs, "epochs": 16,
        "lr": 1e-3, "batch_size": 4, "seed": 0}, "sft", log_dir=tmp_path / "logs",
        on_start=logs.append, on_progress=on_progress)

    assert result["steps"] == 256
    assert len(logs) == 1 and logs[0].exists() and logs[0].parent == tmp_path / "logs"
    steps = [e for _, e in got if e.what == "steps"]
    assert steps[0].done == 0 and steps[-1].done == steps[-1].total == 256
    assert [e.done for e in steps] == sorted(e.done for e in steps)
    assert "loss" in steps[-1].figures and steps[-1].figures["ex/s"] > 0
    middle = [poll for poll, e in got if 0 < e.done < 256]
    assert middle, "no progress between the first and the last step"
    # Counted in the parent's polls, not seconds: a fast or a loaded machine changes neither.
    assert middle[0] < got[-1][0], "the steps arrived in one burst at the end, not while training ran"
    assert lines[-1].startswith("sft ") and "256/256 steps 100%" in lines[-1] and "loss" in lines[-1]


def test_a_failing_display_never_fails_the_stage(tmp_path):
    def broken(event):
        raise RuntimeError("terminal gone")

    assert call_isolated("json:dumps", {"obj": [1, 2]}, "dumps", log_dir=tmp_path, on_progress=broken) == "[1, 2]"


def test_follow_hands_on_whole_lines_only(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"what": "steps", "done": 1, "total": 4, "elapsed": 0.5, "figures": {}}\n{"what": "st')
    events, offset = progress.follow(str(path), 0)
    assert [(e.what, e.done) for e in events] == [("steps", 1)]
    with open(path, "a") as f:
        f.write('eps", "done": 4, "total": 4, "elapsed": 2.0, "figures": {"loss": 0.5}}\n')
    events, offset = progress.follow(str(path), offset)
    assert [(e.what, e.done, e.finished) for e in events] == [("steps", 4, True)]
    assert progress.follow(str(path), offset) == ([], offset)


def test_stage_summaries_are_one_readable_line():
    line = progress.summary("generate", {"traces": 4800, "accuracy": 0.656, "tokens_per_s": 6012.0},
                            generate.STAGE.summary, 41.2)
    assert line.split() == "generate 4,800 traces 65.6% correct 6.0k tok/s 41 s".split()
    # a figure whose metric the stage did not report is left out, not shown as an error or a 0
    line = progress.summary("evaluate", {"pass1_all": 0.5, "maj_at_k_all": 0.25}, evaluate.STAGE.summary, 75)
    assert line.split() == "evaluate pass@1 50.0% maj@k 25.0% 1m 15s".split()
    line = progress.summary("filter", {"kept": 14, "traces": 120, "kept_flawed_share": 0.143,
                                       "outcome_only_kept": 22, "outcome_only_flawed_share": 0.273},
                            filter_stage.STAGE.summary, 1)
    assert "kept 14 of 120 traces" in line and "14.3% flawed" in line and "would keep 22, 27.3% flawed" in line
