"""What else used the cores while the bench timed something: /proc/stat and /proc/PID/stat deltas, our processes
(the served tree and the bench) told apart from everyone else's, recorded per load level and flagged in report.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.bench.load import (
    CpuSnapshot,
    MachineLoadMeter,
    machine_load,
    read_cpu_ticks,
    read_process_ticks,
    snapshot,
    tree_pids,
)
from runtime.bench.report import latency_table, machine_load_section, summary_table
from runtime.bench.results import LatencyStats, PhaseResult

STAT = "cpu  100 5 50 800 20 3 2 10 7 0\ncpu0 50 2 25 400 10 1 1 5 3 0\nintr 1\n"


def proc_stat(user: int, idle: int) -> str:
    return f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\n"


def pid_stat(comm: str, utime: int, stime: int = 0, cutime: int = 0, start: int = 777) -> str:
    after = ["S", "1", *["0"] * 9, str(utime), str(stime), str(cutime), "0", *["0"] * 4, str(start), "0"]
    return f"42 ({comm}) " + " ".join(after) + "\n"


def test_cpu_ticks_count_every_state_and_busy_leaves_out_idle_and_iowait():
    total, busy = read_cpu_ticks(STAT)
    assert total == 100 + 5 + 50 + 800 + 20 + 3 + 2 + 10  # guest (7) is already inside user
    assert busy == total - 800 - 20


def test_process_ticks_add_threads_and_reaped_children_and_survive_odd_names():
    start, ticks = read_process_ticks(pid_stat("python3 (x) y", utime=30, stime=12, cutime=8, start=991))
    assert (start, ticks) == (991, 50)


def snap(busy: int, total: int, own: dict[tuple[int, int], int], load1: float = 1.0, at: float = 0.0):
    return CpuSnapshot(at=at, total=total, busy=busy, own=own, load1=load1)


def test_other_processes_share_is_the_machines_busy_time_less_ours():
    before = snap(busy=1000, total=5000, own={(1, 5): 100, (2, 6): 50}, load1=0.5)
    after = snap(busy=1800, total=6000, own={(1, 5): 400, (2, 6): 150}, load1=2.0, at=5.0)
    m = machine_load(before, after, cores=2)
    assert m["own_cpu_share"] == 0.4  # 400 of 1000 ticks
    assert m["other_cpu_share"] == 0.4  # 800 busy - 400 ours
    assert (m["load1_start"], m["load1_end"], m["wall_s"], m["cores"]) == (0.5, 2.0, 5.0, 2)


def test_a_child_reaped_during_the_level_counts_as_ours_once():
    # the child (pid 3) had 30 ticks before, 70 in all when its parent (pid 1) reaped it: 40 in the level
    before = snap(busy=0, total=1000, own={(1, 5): 100, (3, 9): 30})
    after = snap(busy=500, total=2000, own={(1, 5): 100 + 70})
    m = machine_load(before, after)
    assert m["own_cpu_share"] == 0.04 and m["other_cpu_share"] == 0.46


def test_an_idle_machine_has_no_other_share_and_never_a_negative_one():
    before = snap(busy=100, total=1000, own={(1, 5): 100})
    after = snap(busy=100, total=1000, own={(1, 5): 300})  # ours rose more than the machine's busy time (rounding)
    m = machine_load(before, after)
    assert m["other_cpu_share"] == 0.0 and m["own_cpu_share"] == 0.0


def test_the_meter_reads_proc_before_and_after(tmp_path):
    (tmp_path / str(os.getpid())).mkdir()
    (tmp_path / "stat").write_text(proc_stat(user=100, idle=900))
    (tmp_path / str(os.getpid()) / "stat").write_text(pid_stat("bench", utime=10))
    with MachineLoadMeter([os.getpid()], proc=tmp_path) as meter:
        (tmp_path / "stat").write_text(proc_stat(user=100 + 150, idle=900 + 50))  # 200 ticks, 150 busy
        (tmp_path / str(os.getpid()) / "stat").write_text(pid_stat("bench", utime=10 + 20))
    assert meter.result["own_cpu_share"] == 0.1 and meter.result["other_cpu_share"] == 0.65


def test_no_proc_stat_gives_no_measurement_not_a_crash(tmp_path):
    with MachineLoadMeter([os.getpid()], proc=tmp_path) as meter:
        pass
    assert meter.result is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc")
def test_our_children_are_ours_and_a_process_outside_the_tree_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        mine = {pid for pid, _ in snapshot([os.getpid()]).own}
        assert {os.getpid(), child.pid} <= mine
        only_child = {pid for pid, _ in snapshot([child.pid]).own}
        assert only_child == {child.pid} and os.getpid() not in only_child
        assert tree_pids([], groups=[child.pid]) == {child.pid}  # a server's session: its group is ours too
    finally:
        child.kill()
        child.wait()


LEVEL = {"completed": 2, "failed": 0, "duration_s": 1.5, "request_throughput": 1.3, "output_throughput": 21.0,
         "total_output_tokens": 32,
         **{f"{s}_{m}_ms": 40.0 for s in ("mean", "median", "p90", "p99") for m in ("ttft", "tpot", "itl", "e2el")}}


def machine(other: float) -> dict:
    return {"wall_s": 12.0, "cores": 2, "load1_start": 2.1, "load1_end": 3.0, "other_cpu_share": other,
            "own_cpu_share": 0.5}


def phase(option: str, others: dict[str, float], agent: float | None = None) -> dict:
    result = PhaseResult.model_validate({
        "deployment": option, "engine": "hf", "models": {}, "cold_start_s": 1.0, "wall_s": 30.0,
        "peak_rss_mb": 900.0, "answers_file": "x.json", "accuracy": {},
        "latency": {level: LEVEL | {"machine_load": machine(o)} for level, o in others.items()},
        "agent_machine_load": machine(agent) if agent is not None else None})
    assert result.latency["1"].machine_load.under_load == (others["1"] > 0.10)
    return result.model_dump(mode="json") | {"mean_accuracy": 1.0}


def test_a_level_measured_while_others_used_the_cores_is_flagged_in_the_report():
    results = [phase("base", {"1": 0.02, "8": 0.43}, agent=0.3), phase("merged", {"1": 0.01, "8": 0.05})]
    table = "\n".join(latency_table(results))
    assert "others' CPU (load avg)" in table and "| 43% (2.1 → 3.0) ⚠ |" in table and "| 5% (2.1 → 3.0) |" in table
    section = "\n".join(machine_load_section(results))
    assert "**Measured under load**" in section and "2 of 5 timed parts" in section
    assert "- base on hf, load 8: other processes used 43% of the cores over 12 s" in section
    assert "- base on hf, agent: other processes used 30%" in section and "merged on hf" not in section
    blip = phase("hybrid", {"1": 0.0}) | {"accuracy_machine_load": machine(0.12) | {"wall_s": 0.3}}
    assert "hybrid" not in "\n".join(machine_load_section([*results, blip]))  # a 0.3 s part is a few ticks: not judged
    report = {"results": results, "n_per_task": {}, "headline_metrics": {}}
    rows = summary_table(report, [], "8")
    assert "21.0 ⚠" in rows[2] and "21.0 ⚠" not in rows[3]
    assert "⚠ throughput measured while other processes used more than 10% of the cores" in rows[-1]
    quiet = summary_table({"results": results[1:], "n_per_task": {}, "headline_metrics": {}}, [], "8")
    assert "⚠" not in "\n".join(quiet)


def test_a_quiet_machine_says_so_and_an_old_report_shows_nothing():
    quiet = [phase("base", {"1": 0.02, "8": 0.04})]
    assert "no timed part ran while other processes used more than 10% of the 2 cores (most: 4%" in "\n".join(
        machine_load_section(quiet))
    old = [phase("base", {"1": 0.0})]
    for level in old[0]["latency"].values():
        level.pop("machine_load")
    assert machine_load_section(old) == [] and "others' CPU" not in "\n".join(latency_table(old))
    assert LatencyStats.model_validate(LEVEL).machine_load is None
