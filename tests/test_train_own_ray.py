"""A run on the private local Ray it starts (`prefsweep train` without RAY_ADDRESS): Ray Train's controller runs
in the driver (`rayjobs.torch_trainer.DriverTrainController`), not as an actor of its own. Each test is its
own process, as a user's run is: the private Ray is started and stopped by it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import yaml

from tests.conftest import REPO
from tests.script_output import tagged_json
from tests.test_ray_train import config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Two workers on a private Ray; the first attempt fails on rank 0 after both joined the process group, the
# second all-reduces the ranks (0 + 1) over gloo and reports it with a checkpoint. The driver prints the
# result and the classes of the actors Ray created (GCS's table: a private Ray has no dashboard).
FAIL_ONCE = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    import ray
    from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
    from rayjobs.local_ray import ensure_ray
    from rayjobs.torch_trainer import LeanTorchTrainer

    marker = Path(sys.argv[1]) / "failed_once"

    def train_fn():
        import torch
        import torch.distributed as dist
        rank = ray.train.get_context().get_world_rank()
        total = torch.tensor([float(rank)])
        dist.all_reduce(total)
        if rank == 0 and not marker.exists():
            marker.write_text("1")
            raise RuntimeError("first attempt fails")
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "rank_sum.txt").write_text(str(total.item()))
            ray.train.report({"rank_sum": total.item(), "world": dist.get_world_size()},
                             checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)

    how = ensure_ray(dashboard=False)
    trainer = LeanTorchTrainer(train_fn, private_ray=how == "local",
                               scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                               run_config=RunConfig(name="own", storage_path=sys.argv[1],
                                                    failure_config=FailureConfig(max_failures=1)))
    result = trainer.fit()
    classes = sorted({a["ActorClassName"].rsplit(".", 1)[-1] for a in ray._private.state.actors().values()})
    with result.checkpoint.as_directory() as ckpt:
        saved = Path(ckpt, "rank_sum.txt").read_text()
    print("RESULT " + json.dumps({"how": how, "metrics": result.metrics, "saved": saved, "actors": classes}))
""")

# One worker that says where it is, then trains "forever".
SLEEPER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from ray.train import RunConfig, ScalingConfig
    from rayjobs.local_ray import ensure_ray
    from rayjobs.torch_trainer import LeanTorchTrainer

    pid_file = Path(sys.argv[1]) / "worker.pid"  # the driver's argv: the function carries it to the worker

    def train_fn():
        pid_file.write_text(str(os.getpid()))
        time.sleep(600)

    ensure_ray(dashboard=False)
    LeanTorchTrainer(train_fn, private_ray=True, scaling_config=ScalingConfig(num_workers=1),
                     run_config=RunConfig(name="sleeper", storage_path=sys.argv[1])).fit()
""")


# A sweep's private Ray (a single run's has no monitor: LEAN_NODE), a task run on it, then what
# `stop_autoscaler_monitor` (registered at exit) does to its monitor.
MONITOR = textwrap.dedent("""
    import json
    import ray
    import ray._private.worker as ray_worker
    from rayjobs.local_ray import ensure_ray, stop_autoscaler_monitor

    ensure_ray()
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    monitor = ray_worker._global_node.all_processes["monitor"][0].process
    alive_before = monitor.poll() is None
    print("RESULT " + json.dumps({"alive_before": alive_before, "stopped": stop_autoscaler_monitor(),
                                  "exit_code": monitor.poll(), "again": stop_autoscaler_monitor()}))
""")

# A single run's private Ray (`single_run_node`): which of Ray's processes it started, how its dashboard agent
# runs, and that what a run needs still works: a task, an actor's own env vars (the runtime-env agent), a
# worker's print on the driver's console (the log monitor), and Ray's own start-up code as it was.
LEAN_NODE = textwrap.dedent("""
    import json, os, time
    import psutil
    import ray
    import ray._private.worker as ray_worker
    from ray._private import utils as ray_utils
    from ray._private.node import Node
    from rayjobs.local_ray import ensure_ray, stop_autoscaler_monitor

    originals = (Node.start_monitor, Node.start_api_server, ray_utils.get_dashboard_dependency_error)
    ensure_ray(dashboard=False)
    node = ray_worker._global_node

    @ray.remote(num_cpus=0)
    class Env:
        def get(self, key):
            print("LEAN-NODE-WORKER-SAYS-HI", flush=True)
            return os.environ.get(key)

    env = Env.options(runtime_env={"env_vars": {"PREFSWEEP_PROBE": "42"}}).remote()
    value = ray.get(env.get.remote("PREFSWEEP_PROBE"))
    time.sleep(1.5)  # the log monitor forwards the worker's line to this console
    agents = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)
              if "dashboard/agent.py" in " ".join(p.cmdline())]
    print("RESULT " + json.dumps({
        "processes": sorted(node.all_processes), "agents": len(agents),
        "minimal_agent": all("--minimal" in a for a in agents), "env": value,
        "task": ray.get(ray.remote(lambda: 41 + 1).remote()), "monitor_stopped": stop_autoscaler_monitor(),
        "restored": (Node.start_monitor, Node.start_api_server, ray_utils.get_dashboard_dependency_error) == originals,
    }))
""")


# A one-worker run on a private Ray with `yield_cpu` (argv[2]). While it trains, the worker records the nice
# values of every thread of: itself, the raylet (its parent), the raylet's other children (agents, the
# synchronization actor) and the driver; after it, while its Ray still runs, the driver adds the GCS and the
# log monitor.
PRIORITIES = textwrap.dedent("""
    import json, os, sys, time
    import psutil
    import ray._private.worker as ray_worker
    from ray.train import RunConfig, ScalingConfig
    from rayjobs.local_ray import ensure_ray
    from rayjobs.torch_trainer import LeanTorchTrainer

    def nices(pid):
        return sorted({os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")})

    seen = os.path.join(sys.argv[1], "worker.json")  # the driver's argv and pid: the function carries them
    driver = os.getpid()

    def train_fn():
        time.sleep(3)  # the driver lowers the others as soon as this function runs
        raylet = psutil.Process().parent()
        siblings = {p.name(): nices(p.pid) for p in raylet.children() if p.pid != os.getpid()}
        with open(seen, "w") as handle:
            json.dump({"worker": nices(os.getpid()), "raylet": nices(raylet.pid), "raylet_children": siblings,
                       "driver": nices(driver)}, handle)

    ensure_ray(dashboard=False)
    LeanTorchTrainer(train_fn, private_ray=True, yield_cpu=sys.argv[2] == "1", scaling_config=ScalingConfig(num_workers=1),
                     run_config=RunConfig(name="nice", storage_path=sys.argv[1])).fit()
    started = ray_worker._global_node.all_processes
    print("RESULT " + json.dumps({**json.load(open(seen)), "gcs": nices(started["gcs_server"][0].process.pid),
                                  "log_monitor": nices(started["log_monitor"][0].process.pid)}))
""")


def own_ray_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # a private Ray, as on a laptop
    return env


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie is gone for the user
    except psutil.NoSuchProcess:
        return False


def test_the_driver_runs_the_controller_through_a_worker_failure_to_a_checkpoint(tmp_path):
    run = subprocess.run([sys.executable, "-c", FAIL_ONCE, str(tmp_path)], cwd=REPO, env=own_ray_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    result = tagged_json(run.stdout)
    assert result["how"] == "local"
    assert (tmp_path / "failed_once").is_file()  # the first attempt did fail: the second is Ray Train's retry
    assert result["metrics"] == {"rank_sum": 1.0, "world": 2}  # both ranks in one gloo group, 0 + 1
    assert result["saved"] == "1.0"  # the checkpoint the driver's controller registered is rank 0's
    assert "TrainController" not in result["actors"]
    assert {"RayTrainWorker", "SynchronizationActor"} <= set(result["actors"])


def test_ctrl_c_stops_the_workers_and_the_run(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, str(tmp_path)], cwd=REPO, env=own_ray_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid_file = tmp_path / "worker.pid"
        deadline = time.monotonic() + 180
        while not pid_file.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pid_file.is_file(), proc.communicate(timeout=60)[1][-4000:]
        worker = int(pid_file.read_text())
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # well before the worker's 600 s sleep ends
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-3000:]
    deadline = time.monotonic() + 30
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(worker)


def test_the_autoscaler_monitor_is_killed_before_ray_stops_it_the_slow_way(tmp_path):
    run = subprocess.run([sys.executable, "-c", MONITOR], cwd=REPO, env=own_ray_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    result = tagged_json(run.stdout)
    # running until then, killed (SIGKILL: -9) and reaped, and a second call finds nothing left to stop
    assert result == {"alive_before": True, "stopped": True, "exit_code": -9, "again": False}
    assert "autoscaler failed" not in run.stdout + run.stderr  # what a SIGTERM would have printed


def test_a_single_runs_ray_starts_neither_dashboard_nor_monitor_and_still_runs_what_a_run_needs(tmp_path):
    run = subprocess.run([sys.executable, "-c", LEAN_NODE], cwd=REPO, env=own_ray_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    result = tagged_json(run.stdout)
    processes = set(result.pop("processes"))
    assert {"gcs_server", "raylet", "log_monitor"} <= processes  # what a run needs
    assert not {"dashboard", "monitor"} & processes  # what it does not, and Ray would have waited for
    assert result == {"agents": 1, "minimal_agent": True, "env": "42", "task": 42, "monitor_stopped": False,
                      "restored": True}
    assert "LEAN-NODE-WORKER-SAYS-HI" in run.stdout + run.stderr


@pytest.mark.parametrize("yield_cpu", [True, False])
def test_a_run_that_owns_its_ray_trains_while_the_rest_of_that_ray_runs_at_nice_19(tmp_path, yield_cpu):
    run = subprocess.run([sys.executable, "-c", PRIORITIES, str(tmp_path), "1" if yield_cpu else "0"], cwd=REPO,
                         env=own_ray_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    result = tagged_json(run.stdout)
    background = 19 if yield_cpu else 0
    assert result["worker"] == [0]  # every thread of the training worker at the user's priority, always
    assert result["raylet"] == [0]  # it forks the workers: a restarted one would inherit its niceness
    # all the rest: the driver (Ray Train's controller), the GCS, the log monitor, the raylet's agents and the
    # synchronization actor
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::SynchronizationActor"} <= set(result["raylet_children"])
    for name, values in {"driver": result["driver"], "gcs": result["gcs"], "log_monitor": result["log_monitor"],
                         **result["raylet_children"]}.items():
        assert values == [background], name


def test_prefsweep_train_on_its_own_ray_logs_the_in_process_losses(tiny, tmp_path):
    """The README's command on a private Ray and with `use_ray=false`: the same steps, the same losses, and
    the one Ray worker trains as one process does (no DistributedDataParallel around a world of one)."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tiny, tmp_path / "out")))
    losses, modes, marks = {}, {}, {}
    for use_ray in ("true", "false"):
        out = tmp_path / f"out_{use_ray}"
        phases = tmp_path / f"phases_{use_ray}.txt"  # trainer.phases marks, from every process of the run
        run = subprocess.run([sys.executable, "-m", "rayjobs.cli", "train", str(path), f"use_ray={use_ray}",
                              f"output_dir={out}", "--no-mlflow"], cwd=REPO,
                             env={**own_ray_env(), "PREFSWEEP_PHASES": str(phases)},
                             capture_output=True, text=True, timeout=600)
        marks[use_ray] = {name: (float(when), pid) for name, when, pid in map(str.split, phases.read_text().splitlines())}
        assert run.returncode == 0, run.stderr[-4000:]
        state = json.loads((out / "trainer_state.json").read_text())
        losses[use_ray] = [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]
        # the Trainer's parallel mode at the start of training (trainer.phases)
        modes[use_ray] = [name.split("=", 1)[1] for name in marks[use_ray] if name.startswith("parallel_mode=")]
    assert [step for step, _ in losses["true"]] == [step for step, _ in losses["false"]] == [1, 2, 3, 4]
    assert [loss for _, loss in losses["true"]] == pytest.approx([loss for _, loss in losses["false"]], abs=1e-6)
    assert modes == {"true": ["NOT_PARALLEL"], "false": ["NOT_PARALLEL"]}
    # the Ray worker imported the training stack from its set-up hook on (rayjobs.worker_warmup), and the
    # training function began after those imports ended; in-process nothing of it runs
    ray_marks = marks["true"]
    warm = ("warmup_start", "warmup_torch", "warmup_done", "worker_start", "build_start")
    assert [ray_marks[name][0] for name in warm] == sorted(ray_marks[name][0] for name in warm)
    assert {ray_marks[name][1] for name in warm} == {ray_marks["worker_start"][1]}  # one process: the worker
    assert ray_marks["worker_start"][1] != ray_marks["config_parsed"][1]  # ... not the driver
    assert not {name for name in marks["false"] if name.startswith("warmup_")}
    # ... in a process the run's fork server forked (rayjobs.warm_fork): that server, neither the driver nor the
    # worker, had imported the stack beside Ray's start; in-process no server starts
    assert ray_marks["warm_fork_child"][1] == ray_marks["worker_start"][1]
    assert ray_marks["warm_fork_ready"][1] not in (ray_marks["worker_start"][1], ray_marks["config_parsed"][1])
    assert ray_marks["warm_fork_ready"][0] < ray_marks["warm_fork_child"][0] < ray_marks["worker_start"][0]
    assert not {name for name in marks["false"] if name.startswith("warm_fork")}
    # torch was imported before Ray set OMP_NUM_THREADS for the actor; the worker (1 CPU, Ray Train's default)
    # still trains on 1 thread, not one per core
    assert "worker_torch_threads=1" in ray_marks
