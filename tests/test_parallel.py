"""Data and expert parallelism on 8 fake CPU devices.

The device count is fixed when a JAX backend starts, so the multi-device checks run once per module in a fresh
interpreter (``tests/parallel_worker.py all``) with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` that
reports its numbers as JSON; the tests below assert on them. About 40 s of CPU time for the whole file (one
subprocess, ~12 XLA compilations); on the shared 2-core machine 55-100 s wall depending on the others' load.

Tolerances. One training step on 1, 2 and 8 devices: the loss to rtol 1e-6 and the parameters to atol 2e-6. The
only differences are float32 summation order (per-device partial sums, then ``pmean``), amplified on the first
Adam step, whose update is ~lr * g / (|g| + eps) (lr = 1e-2, so 2e-6 is 0.02% of a step; observed <= 3e-7).
The model is deterministic (MLP experts, no dropout) and ``loss.beta = 0``: the Switch aux loss is a per-device
batch statistic averaged over devices, so that term (and only it) legitimately changes with the device count,
as do the per-device RNG streams of dropout / Gaussian experts. With dropout and beta > 0, pmap and jit on the
*same* 8 devices draw the same streams and must agree exactly (the Gaussian experts' noise stream is exercised
across processes in tests/test_distributed.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jmoe.data import synthetic_mosi
from jmoe.train import batches as batches_lib

WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).resolve().parents[1]


def run_worker(args, devices: int, timeout: int = 600, extra_env=None) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env.update(
    {
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
      "JAX_PLATFORMS": "cpu",
      "PYTHONPATH": str(REPO),
    }
  )
  env.update(extra_env or {})
  proc = subprocess.run(
    [sys.executable, str(WORKER), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
  )
  if proc.returncode:
    raise AssertionError(f"worker {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return proc


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("parallel")
  run_worker(["all", out], devices=8)
  return out


@pytest.fixture(scope="module")
def steps_result(worker_dir):
  return json.loads((worker_dir / "steps.json").read_text())


@pytest.fixture(scope="module")
def experts_result(worker_dir):
  return json.loads((worker_dir / "experts.json").read_text())


# ---------------------------------------------------------------------------------------------------- batches


def test_global_batch_not_divisible_by_devices_is_padded_not_truncated():
  ds = synthetic_mosi(seed=0, dims={"text": 4, "audio": 3}, sizes=(29, 4, 4))
  train = ds.splits["train"]
  seen = []
  for batch in batches_lib.iterate_batches(train, ("text", "audio"), 12, 8, 1, heads=("sentiment",)):
    assert batch["text"].shape == (8, 2, 4) and batch["weight"].shape == (8, 2)  # 12 -> 16 rows: ceil(12/8) each
    w = batch["weight"].reshape(-1)
    assert set(np.unique(w)) <= {0.0, 1.0}
    assert np.all(batch["label/sentiment"].reshape(-1)[w == 0] == 0) and np.all(
      batch["text"].reshape(16, 4)[w == 0] == 0
    )
    real = batch["text"].reshape(16, 4)[w > 0]
    seen.extend(map(tuple, real))
    assert w.sum() == min(12, 29 - (len(seen) - int(w.sum())))
  assert len(seen) == 29 and len(set(seen)) == 29  # every sample exactly once, none dropped or doubled
  assert sorted(seen) == sorted(map(tuple, train.features["text"]))
  assert batches_lib.per_device_batch(12, 8) == 2 and batches_lib.per_device_batch(16, 8) == 2
  with pytest.raises(ValueError, match="must be >= 1"):
    next(batches_lib.iterate_batches(train, ("text",), 0, num_devices=2))


def test_data_parallel_config_errors():
  from jmoe.train import parallel

  with pytest.raises(ValueError, match="parallel must be one of"):
    parallel.DataParallel.create("tpu_magic")
  with pytest.raises(ValueError, match="only 1 local devices"):
    parallel.DataParallel.create("pmap", 4)
  par = parallel.DataParallel.create("jit")
  assert par.num_shards == len(par) == 1 and par.mesh.axis_names == ("batch",) and "jit over 1" in par.describe()


# ---------------------------------------------------------------------------------------------------- data parallel


def test_one_step_same_loss_and_params_on_1_2_8_devices(steps_result):
  det = steps_result["det"]
  ref = det["pmap1"]["loss"]
  for name in ("pmap2", "pmap8", "jit8"):  # jit8: jit + shard_map over a Mesh with a NamedSharding batch axis
    assert det[name]["loss"] == pytest.approx(ref, rel=1e-6), name
    assert det[name]["param_diff"] <= 2e-6, (name, det[name])


def test_jit_mesh_step_equals_pmap_step_with_rng(steps_result):
  sto = steps_result["sto"]  # dropout 0.1 + beta > 0, two steps on 8 devices
  assert sto["pmap8_vs_jit8"] <= 1e-6
  np.testing.assert_allclose(sto["loss_pmap"], sto["loss_jit"], rtol=1e-6)


def test_checkpoint_from_8_devices_restores_on_1_and_reverse(steps_result):
  ck = steps_result["ckpt"]
  assert ck["restored_8_exact"] == 0.0 and ck["opt_state_8_exact"] == 0.0 and ck["meta"] == 8
  assert ck["8_then_1"] <= 2e-6 and ck["1_then_8"] <= 2e-6  # a second step after the restore, either way round
  assert ck["jit8_compilations"] == 1  # replicated/restored states and new batches reuse the compiled jit step


def test_vmapped_members_equal_members_trained_alone(steps_result):
  """3 members with their own seeds, learning rates and loss weights (hparams in the state), one inactive, vmapped
  in one program on 8 devices (pmap and jit) vs each alone: same parameters after two steps (fp32)."""
  for kind, diffs in steps_result["members"].items():
    assert max(diffs) <= 2e-6, (kind, diffs)


def test_expert_parallel_routing_inside_the_data_parallel_step(steps_result):
  ep = steps_result["det"]["pmap8_expert_parallel"]  # 8 experts, one per device, tokens exchanged by all_to_all
  assert ep["loss"] == pytest.approx(steps_result["det"]["pmap1"]["loss"], rel=1e-6)
  assert ep["param_diff"] <= 2e-6


# ---------------------------------------------------------------------------------------------------- expert parallel


@pytest.mark.parametrize("path", ["shard_map", "pmap"])
def test_expert_parallel_equals_single_device_routing(experts_result, path):
  """16 experts over 8 devices (2 each), capacity factor 1.0 (38% of slots dropped): equal to ``sorted`` with one
  group per device — outputs, dropped fraction, gradients w.r.t. every parameter and the tokens."""
  r = experts_result[path]
  assert experts_result["dropped_ref"] > 0.1
  assert r["dropped"] == pytest.approx(experts_result["dropped_ref"], abs=1e-7)
  assert r["y"] <= 1e-5 and r["grad_x"] <= 1e-5 and r["grad_params"] <= 1e-5, r
  if path == "shard_map":
    assert r["experts_per_device"] == 2  # the expert params were stored sharded over the mesh axis


def test_expert_parallel_without_capacity_equals_dense(experts_result):
  assert experts_result["no_drop_vs_dense"]["dropped"] == 0.0
  assert experts_result["no_drop_vs_dense"]["y"] <= 1e-5


def test_expert_count_not_divisible_by_axis_is_a_clear_error(experts_result):
  errors = experts_result["errors"]
  assert "num_experts=12 is not divisible by the size 8 of axis 'expert'" in errors["indivisible"]
  assert "jax.set_mesh" in errors["no_axis"]
