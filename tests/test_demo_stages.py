"""The demo's plumbing: cache keys, the stage scheduler and its clocks, the settings and the plan
(utils/stages.py, tools/demo.py). No training runs here."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from tools import demo
from utils import stages as demo_runner
from utils.stages import Stage, run_stages


# ---- cache keys -------------------------------------------------------------------------------

def test_keyed_dir_follows_the_key(tmp_path):
    a = demo_runner.keyed_dir(tmp_path, "source", ["train.py", ["SOLVER.MAX_STEPS=200"]])
    assert a == demo_runner.keyed_dir(tmp_path, "source", ["train.py", ["SOLVER.MAX_STEPS=200"]])
    assert a.parent == tmp_path and a.name.startswith("source-") and len(a.name) == 7 + 16
    assert a != demo_runner.keyed_dir(tmp_path, "source", ["train.py", ["SOLVER.MAX_STEPS=300"]])
    assert a != demo_runner.keyed_dir(tmp_path, "control", ["train.py", ["SOLVER.MAX_STEPS=200"]])
    assert not demo_runner.is_done(a)
    demo_runner.mark_done(a, {"k": 1})
    assert demo_runner.is_done(a)


def test_step_runs_once_per_key_and_again_for_new_settings(tmp_path, capsys):
    script = tmp_path / "count.py"
    script.write_text("import sys, pathlib\n"
                      "p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True, exist_ok=True)\n"
                      "(p / 'out.txt').write_text(sys.argv[2])\n"
                      "with open(sys.argv[3], 'a') as f: f.write('x')\n")
    calls = tmp_path / "calls.txt"
    d = demo.Demo(demo.parse_args(["--out", str(tmp_path / "out")]))
    first = d.step("toy", str(script), ["{dir}/res", "a", calls], "res/out.txt")
    assert first.read_text() == "a" and calls.read_text() == "x"
    again = d.step("toy", str(script), ["{dir}/res", "a", calls], "res/out.txt")
    assert again == first and calls.read_text() == "x"          # cached: not run again
    other = d.step("toy", str(script), ["{dir}/res", "b", calls], "res/out.txt")
    assert other != first and other.read_text() == "b" and calls.read_text() == "xx"


def test_unfinished_step_restarts_from_empty_when_asked(tmp_path):
    script = tmp_path / "list.py"
    script.write_text("import sys, os, pathlib\np = pathlib.Path(sys.argv[1])\n"
                      "p.mkdir(parents=True, exist_ok=True)\n"
                      "(p / 'seen.txt').write_text(' '.join(sorted(os.listdir(p))))\n")
    d = demo.Demo(demo.parse_args(["--out", str(tmp_path / "out")]))
    folder = demo_runner.keyed_dir(d.cache, "toy", [str(script), ["{dir}/res"]])
    (folder / "res").mkdir(parents=True)
    (folder / "res" / "partial.txt").write_text("left by an interrupted run")
    out = d.step("toy", str(script), ["{dir}/res"], "res", restart=True)
    assert out.parent == folder and (out / "seen.txt").read_text() == ""


def test_step_failure_names_the_script_and_log(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('broken input')\nsys.exit(3)\n")
    d = demo.Demo(demo.parse_args(["--out", str(tmp_path / "out")]))
    with pytest.raises(SystemExit, match=r"fail.py failed \(exit code 3\)(.|\n)*broken input"):
        d.step("bad", str(script), [])


# ---- scheduler and clocks ---------------------------------------------------------------------

def _recording(events: list, name: str, seconds: float = 0.0):
    def run():
        events.append(("start", name))
        time.sleep(seconds)
        events.append(("end", name))
        return name
    return run


def test_one_job_runs_the_stages_in_the_order_given():
    events: list = []
    stages = [Stage(n, n, _recording(events, n), needs) for n, needs in
              (("a", ()), ("b", ()), ("c", ("a",)), ("d", ("b", "c")))]
    assert run_stages(stages, jobs=1, report=lambda s: None) == ["a", "b", "c", "d"]
    assert events == [(e, n) for n in "abcd" for e in ("start", "end")]
    assert [s.result for s in stages] == list("abcd") and [s.number for s in stages] == [1, 2, 3, 4]


def test_two_jobs_overlap_independent_stages_and_respect_needs():
    events: list = []
    stages = [Stage("slow", "slow", _recording(events, "slow", 0.3)),
              Stage("fast", "fast", _recording(events, "fast", 0.05)),
              Stage("after_fast", "after", _recording(events, "after_fast"), ("fast",)),
              Stage("last", "last", _recording(events, "last"), ("slow", "after_fast"))]
    run_stages(stages, jobs=2, report=lambda s: None)
    pos = {ev: k for k, ev in enumerate(events)}
    assert pos[("start", "fast")] < pos[("end", "slow")]                 # side by side
    assert pos[("end", "fast")] < pos[("start", "after_fast")] < pos[("end", "slow")]
    assert pos[("start", "last")] > max(pos[("end", "slow")], pos[("end", "after_fast")])


def test_a_failure_stops_new_stages_and_is_raised():
    events: list = []

    def boom():
        raise RuntimeError("stage broke")
    stages = [Stage("a", "a", boom), Stage("b", "b", _recording(events, "b"), ("a",))]
    with pytest.raises(RuntimeError, match="stage broke"):
        run_stages(stages, jobs=2, report=lambda s: None)
    assert events == []


@pytest.mark.parametrize("stages, message", [
    ([Stage("a", "a", lambda: 0, ("b",)), Stage("b", "b", lambda: 0)], "needs"),
    ([Stage("a", "a", lambda: 0), Stage("a", "a", lambda: 0)], "twice"),
])
def test_bad_plans_are_refused(stages, message):
    with pytest.raises(ValueError, match=message):
        demo_runner.check_plan(stages)


def test_stage_clock_counts_child_processes_not_other_threads():
    spin = threading.Event()

    def other_thread():                        # busy in another thread: not this stage's CPU
        while not spin.is_set():
            sum(range(1000))
    t = threading.Thread(target=other_thread)
    t.start()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    try:
        stage = Stage("child", "child", lambda: (demo_runner.run_process(
            [sys.executable, "-c", burn]), demo_runner.last_cpu()))
        run_stages([stage], jobs=1, report=lambda s: None)
    finally:
        spin.set()
        t.join()
    assert stage.result[0] == 0 and stage.result[1] == pytest.approx(stage.clock.child_cpu)
    assert 0.35 <= stage.clock.child_cpu and stage.clock.cpu >= stage.clock.child_cpu
    assert stage.clock.cpu - stage.clock.child_cpu < 0.3        # the spinning thread is not in
    table = demo_runner.stage_table([stage], 1.0, stage.clock.cpu, 2)
    assert "child" in table and "CPU / 2 cores" in table


# ---- settings and the plan --------------------------------------------------------------------

def test_short_and_full_settings_and_overrides():
    short, full = demo.parse_args([]), demo.parse_args(["--full"])
    assert (short.source_steps, short.adapt_steps, short.yunet_steps) == (
        demo.SETTINGS["short"]["source_steps"], demo.SETTINGS["short"]["adapt_steps"],
        demo.SETTINGS["short"]["yunet_steps"])
    assert (full.source_steps, full.adapt_steps, full.teacher_steps, full.yunet_steps) == \
        (300, 60, 30, 40)                                   # the earlier demo's settings
    assert full.levels == ["L1", "L2", "L3", "L4", "L5"] and full.noise_seeds == 3
    mixed = demo.parse_args(["--full", "--source-steps", "50", "--levels", "L5"])
    assert mixed.source_steps == 50 and mixed.adapt_steps == 60 and mixed.levels == ["L5"]
    with pytest.raises(SystemExit):
        demo.parse_args(["--levels", "L9"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--jobs", "0"])


def test_plan_puts_real_faces_first_and_is_valid(tmp_path):
    d = demo.Demo(demo.parse_args(["--out", str(tmp_path)]))
    d.yunet = tmp_path / "yunet_n.pth"
    stages = demo.plan(d)
    demo_runner.check_plan(stages)
    names = [s.name for s in stages]
    assert names[0] == "night_mode" and names.index("data") < names.index("source")
    assert names[-1] == "real_adapted" and "evaluate" in names
    d.yunet = None
    names = [s.name for s in demo.plan(d)]
    assert "night_mode" not in names and "yunet" not in names and names[0] == "data"


def test_threads_per_job():
    assert demo.threads_per_job(2) == 1
    assert demo.threads_per_job(1) >= 1


def test_pseudo_batch_follows_the_labelled_images(tmp_path):
    listing = tmp_path / "pseudo_labels.txt"
    images = "".join(f"# ./DarkFace/images/train/{k}.png 480 320\n"
                     + ("0.1 0.2 0.3 0.4 0.9\n0.5 0.5 0.6 0.6 0.8\n" if k % 4 == 0 else "")
                     for k in range(20))
    listing.write_text("#pseudo-labels 1\n" + images)
    assert demo.Demo.pseudo_opts(listing) == [f"PSEUDO.LIST={listing}", "PSEUDO.BATCH_SIZE=5"]
    listing.write_text("#pseudo-labels 1\n# a.png 10 10\n# b.png 10 10\n")
    assert demo.Demo.pseudo_opts(listing) == []
