"""Warm starts (components/runtime/warm.py): a stage child forked by the helper that imported the heavy
libraries is still a process of its own, with its own environment, working directory and log; it
runs the code on disk now, not what the helper saw; a failure reads as before; and the plain way
(`VSTAR_WARM_START=0`) still works."""
import os
import textwrap

import psutil
import pytest

from components.runtime import warm
from components.runtime.isolation import StageFailed, call_isolated
from tests.procs import wait_for, warm_helpers

PROBE = '''
import os, sys

def who(tag):
    print("probe says", tag, flush=True)
    return {"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "tag": tag, "version": VERSION,
            "env": os.environ.get("VSTAR_TEST_PROBE"), "tracking": os.environ.get("MLFLOW_TRACKING_URI"),
            "progress": bool(os.environ.get("VSTAR_PROGRESS")),
            "torch_preloaded": "torch" in sys.modules, "vllm_preloaded": "vllm" in sys.modules,
            # transformers is lazy: what the stages name must be loaded, not only its top level
            "stage_imports_preloaded": all(m in sys.modules for m in (
                "transformers.models.auto.modeling_auto", "transformers.trainer", "trl.trainer.sft_trainer",
                "peft", "datasets"))}

def fail():
    raise ValueError("the probe failed on purpose")
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / "mods").mkdir()
    path = tmp_path / "mods" / "warm_probe.py"
    path.write_text("VERSION = 1\n" + textwrap.dedent(PROBE))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))
    monkeypatch.setenv("VSTAR_TEST_PROBE", "from-the-parent")
    monkeypatch.chdir(tmp_path)
    return path


def test_a_warm_child_is_its_own_process_and_runs_the_code_on_disk(probe, tmp_path):
    first = call_isolated("warm_probe:who", {"tag": "a"}, "probe", log_dir=tmp_path / "logs")
    helper = psutil.Process(first["ppid"])
    assert helper.ppid() == os.getpid() and "components.runtime.warm" in " ".join(helper.cmdline())
    # What the warm start is for: a stage child starts with the libraries its stage imports (3-4 s of
    # CPU per child otherwise, with transformers' auto classes and Trainer imported lazily).
    assert first["torch_preloaded"] and first["stage_imports_preloaded"]
    assert first["pid"] != os.getpid() and not psutil.pid_exists(first["pid"])  # a process, and gone
    assert first["cwd"] == str(tmp_path) and first["env"] == "from-the-parent" and first["progress"]
    logs = sorted((tmp_path / "logs").iterdir())
    assert "probe says a" in logs[-1].read_text()

    # Edited between two stages: the next child runs the new code, through the same helper.
    probe.write_text("VERSION = 2\n" + textwrap.dedent(PROBE))
    second = call_isolated("warm_probe:who", {"tag": "b"}, "probe", log_dir=tmp_path / "logs")
    assert second["version"] == 2 and second["ppid"] == first["ppid"] and second["pid"] != first["pid"]

    with pytest.raises(StageFailed, match="(?s)stage probe failed.*ValueError: the probe failed on purpose"):
        call_isolated("warm_probe:fail", {}, "probe", log_dir=tmp_path / "logs")


def test_the_flow_starts_the_helper_early_and_keeps_it(probe, tmp_path, monkeypatch):
    """`warm_up()` (what a loop's flow does once it holds the loop's lock) starts the helper in the
    background, so its imports overlap the flow's own start; a variable a library sets in the flow process as it imports
    (scikit-learn: KMP_DUPLICATE_LIB_OK) does not cost a second helper halfway through the round, nor
    does a service's address set later (a test session starts MLflow, S3, Prefect as tests ask)."""
    from components.runtime.isolation import warm_up

    monkeypatch.setenv("VSTAR_TEST_PROBE", "a-new-environment")  # so this test's helper is a new one
    monkeypatch.delenv("KMP_DUPLICATE_LIB_OK", raising=False)
    warm_up()

    wait_for(lambda: warm_helpers(os.getpid()), 60, "the helper, before any stage asked for it")
    first = call_isolated("warm_probe:who", {"tag": "a"}, "probe", log_dir=tmp_path / "logs")
    assert first["ppid"] in {h.pid for h in warm_helpers(os.getpid())} and first["env"] == "a-new-environment"
    monkeypatch.setenv("KMP_DUPLICATE_LIB_OK", "True")
    second = call_isolated("warm_probe:who", {"tag": "b"}, "probe", log_dir=tmp_path / "logs")
    assert second["ppid"] == first["ppid"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")
    third = call_isolated("warm_probe:who", {"tag": "c"}, "probe", log_dir=tmp_path / "logs")
    assert third["ppid"] == first["ppid"] and third["tracking"] == "http://127.0.0.1:9/"  # its own environment


def test_the_plain_way_when_warm_starts_are_off(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("VSTAR_WARM_START", "0")
    assert warm.helper(dict(os.environ)) is None
    out = call_isolated("warm_probe:who", {"tag": "c"}, "probe", log_dir=tmp_path / "logs")
    assert out["ppid"] == os.getpid() and not out["torch_preloaded"] and out["env"] == "from-the-parent"


def test_the_helper_leaves_vllm_out_when_the_run_uses_no_vllm_engine(probe, tmp_path, monkeypatch):
    """A run on the transformers backend (generation, PRM and ORM scorers) does not pay vLLM's import
    (~9 s of CPU) in every flow process; one that uses a vLLM engine keeps it preloaded."""
    from components.checks import load_config
    from components.runtime.isolation import warm_up

    monkeypatch.setenv("VSTAR_TEST_PROBE", "no-vllm")  # a helper of this test's own
    monkeypatch.setenv(warm.VLLM_ENV, "unset")  # restored after the test
    warm_up(load_config(None, ["generation.backend=transformers"]))
    out = call_isolated("warm_probe:who", {"tag": "t"}, "probe", log_dir=tmp_path / "logs")
    assert out["torch_preloaded"] and not out["vllm_preloaded"], out
    # A helper that has vLLM serves a run without it too (in-process flows of both kinds keep one helper).
    monkeypatch.setenv(warm.VLLM_ENV, "1")
    with_vllm = call_isolated("warm_probe:who", {"tag": "v"}, "probe", log_dir=tmp_path / "logs")
    assert with_vllm["vllm_preloaded"] and with_vllm["ppid"] != out["ppid"]
    monkeypatch.setenv(warm.VLLM_ENV, "0")
    again = call_isolated("warm_probe:who", {"tag": "t2"}, "probe", log_dir=tmp_path / "logs")
    assert again["ppid"] == with_vllm["ppid"]
    for sets in (["generation.backend=vllm"], ["generation.backend=transformers", "prm.scorer=vllm"]):
        monkeypatch.setenv("VSTAR_WARM_START", "0")  # only the flag here: no second helper to start
        warm_up(load_config(None, sets))
        assert os.environ[warm.VLLM_ENV] == "1", sets
