"""Two-process ``jax.distributed`` training on localhost (CPU, gloo collectives) against one process.

Each of 2 processes owns 2 fake CPU devices (4 global devices); process 0 is the coordinator on a free localhost
port. The multi-process run uses the ``'jit'`` path (a Mesh over the 4 global devices, NamedSharding batch axis);
the reference is one process with 4 devices on the ``'pmap'`` path. The model is stochastic (Gaussian experts, dropout, beta > 0): the
per-device RNG streams depend only on the global device index, so the results must agree to float32 rounding.

Both tests are marked ``slow`` (run them with ``pytest -m slow tests/test_distributed.py``):

* ``test_two_processes_train_like_one`` — 3 steps through :mod:`jmoe.train.parallel`; three interpreters at once
  (the two ranks and the reference), ~25 s of CPU in all: 32-53 s wall measured on the shared 2-core machine.
* ``test_two_process_training_app`` — the whole app (2 epochs, orbax checkpoints, metrics, plots) in 2 processes
  vs 1; ~73 s wall measured there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = dict(os.environ)
  env.update(
    {
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
      "JAX_PLATFORMS": "cpu",
      "PYTHONPATH": str(REPO),
    }
  )
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None)
  env.update(extra)
  return env


def _launch(args, env):
  return subprocess.Popen(
    [sys.executable, str(WORKER), *map(str, args)],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _run_two_and_one(args_two, args_one, timeout=600):
  """Start ranks 0 and 1 (2 devices each) and the 1-process reference (4 devices) at once; return their logs."""
  address = f"localhost:{_free_port()}"
  procs = [
    _launch(args_two, _env(2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank)))
    for rank in (0, 1)
  ]
  procs.append(_launch(args_one, _env(4)))
  logs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=timeout)
      logs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, f"worker failed ({p.returncode}):\n{log[-6000:]}"
  return logs


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  logs = _run_two_and_one(["train", tmp_path / "two.npz", "jit"], ["train", tmp_path / "one.npz", "pmap"])
  two_meta = json.loads((tmp_path / "two.json").read_text())
  one_meta = json.loads((tmp_path / "one.json").read_text())
  assert two_meta["process_count"] == 2 and two_meta["devices"] == 4 and two_meta["local"] == 2
  assert two_meta["distributed"] is True
  assert one_meta["process_count"] == 1 and one_meta["devices"] == 4
  assert "process 0/2 done" in logs[0] and "process 1/2 done" in logs[1]
  two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
  assert set(two.files) == set(one.files) and len(two.files) > 10
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6)
  assert two["losses"][-1] < two["losses"][0]  # it trains
  for k in two.files:
    np.testing.assert_allclose(two[k], one[k], atol=2e-6, err_msg=k)


@pytest.mark.slow
def test_two_process_training_app(tmp_path):
  """The app under jax.distributed: same results as one process; files and logs written by process 0 only."""
  logs = _run_two_and_one(["app", tmp_path / "two", "jit"], ["app", tmp_path / "one", "pmap"])
  assert "app done" in logs[0] and "app done" in logs[1]
  assert "Non0_acc_2" in logs[0] and "Non0_acc_2" not in logs[1]  # only process 0 prints the table
  two = json.loads((tmp_path / "two" / "results.json").read_text())
  one = json.loads((tmp_path / "one" / "results.json").read_text())
  seed_one, seed_two = one["folds"][0]["seeds"][0], two["folds"][0]["seeds"][0]
  for split in ("valid", "test"):
    for k, v in seed_one[split]["sentiment"].items():
      assert seed_two[split]["sentiment"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (split, k)
  run = tmp_path / "two" / "fold_0" / "seed_0"
  lines = (run / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["epoch"] for l in lines] == [0, 1]  # one writer: no duplicated epochs
  assert (run / "latest").is_dir() and (run / "best").is_dir()
