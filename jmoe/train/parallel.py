"""Data parallelism for the training app: ``jax.pmap`` over local devices, or ``jax.jit`` over a global ``Mesh``.

Both paths compile the *same* per-device step (:func:`jmoe.train.steps.train_step_fn`, one loss function
:func:`jmoe.train.steps.loss_terms`, gradients ``lax.pmean``-ed over the batch axis ``steps.AXIS``), optionally
vmapped over a member axis:

* ``'pmap'`` (default; the design the users asked for): ``jax.pmap`` over the local devices of one process.
* ``'jit'``: ``jax.jit`` of ``jax.shard_map(train_step)`` over a 1-D ``Mesh`` of *all global* devices (every process
  after ``jax.distributed.initialize``); the state is replicated (``NamedSharding(mesh, P())``) and the batch
  [P, B/P, ...] is sharded on its leading axis (``NamedSharding(mesh, P('batch'))``). This is the multi-host path.

``shard_map`` runs with ``check_vma=False`` so that, as under ``pmap``, a per-device gradient is the gradient of the
per-device loss only and the explicit ``lax.pmean`` does the averaging (with ``check_vma=True`` JAX would already
``psum`` gradients of replicated inputs). The tests check pmap == jit on the same devices.

Multi-host data: every process iterates the *same* global batch (same shuffle seed) and :func:`shard_batch` hands
each local device its rows, so no sample is dropped or seen twice; fine for sentiment datasets (thousands of
samples), wasteful for huge ones (each host then reads everything).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jmoe.train import steps as steps_lib

AXIS = steps_lib.AXIS
KINDS = ("pmap", "jit")


def maybe_initialize_distributed(distributed: bool = False) -> bool:
  """Call ``jax.distributed.initialize`` when asked (``distributed=True``) or when ``JAX_COORDINATOR_ADDRESS`` is set.

  Must run before anything touches a JAX device. Reads ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set; otherwise JAX auto-detects the cluster (SLURM, Open MPI,
  Kubernetes, TPU pods). On CPU, cross-process collectives use gloo. Returns True when this process is part of a
  multi-process run. Idempotent.
  """
  if jax.distributed.is_initialized():
    return True
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not (distributed or address):
    return False
  kwargs: dict[str, Any] = {}
  if address:
    kwargs["coordinator_address"] = address
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by the CPU backend
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(devices=None, axis: str = AXIS) -> Mesh:
  """1-D mesh over ``devices`` (default: every device of every process, ``jax.devices()``)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (axis,))


def _global_array(x, sharding: NamedSharding) -> jax.Array:
  """Host value (identical on every process) -> global ``jax.Array``; each process fills its own devices only."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate_on_mesh(tree, mesh: Mesh):
  """Host pytree -> global arrays replicated on every device of ``mesh`` (``NamedSharding(mesh, P())``)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: _global_array(x, sharding), tree)


def shard_batch(batch, mesh: Mesh, axis: str = AXIS):
  """Host batch [P, B/P, ...] (the same global batch on every process) -> global arrays sharded on axis 0."""
  sharding = NamedSharding(mesh, P(axis))
  size = mesh.shape[axis]
  for k, v in batch.items():
    if np.shape(v)[0] != size:
      raise ValueError(
        f"batch[{k!r}] has leading axis {np.shape(v)[0]}, expected the mesh size {size} "
        f"(iterate_batches(..., num_devices={size}))"
      )
  return jax.tree.map(lambda x: _global_array(x, sharding), batch)


def to_host(tree):
  """Global (replicated) arrays -> host numpy on every process (fully replicated arrays need no transfer)."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def make_pmap_steps(model, tasks, devices, members: bool = False):
  """(train_step, eval_step) ``jax.pmap``-ed over ``AXIS`` on ``devices`` (one process).

  train(state [P, ...], batch [P, b, ...], rng) -> (state, metrics [P]); with ``members``:
  train(states [P, M, ...], batches [P, M, b, ...], rngs [M], active [M]). eval(params, batch) -> outputs [P, b, ...]
  (members: params [P, M, ...] -> [P, M, b, ...]).
  """
  train = steps_lib.train_step_fn(model, tasks, AXIS)
  evaluate = steps_lib.eval_step_fn(model)
  if members:
    train, evaluate = steps_lib.members_train_step(train), steps_lib.members_eval_step(evaluate)
  in_axes = (0, 0, None, None) if members else (0, 0, None)
  return (
    jax.pmap(train, axis_name=AXIS, in_axes=in_axes, devices=devices, donate_argnums=(0,)),
    jax.pmap(evaluate, axis_name=AXIS, devices=devices),
  )


def make_jit_steps(model, tasks, mesh: Mesh, axis: str = AXIS, members: bool = False):
  """Returns (train_step, eval_step) under ``jax.jit`` + ``jax.shard_map`` over ``mesh``.

  train_step(state, batch, rng_data[, active]) -> (state, metrics): state replicated on ``mesh``, batch [P, b, ...]
  sharded on ``axis``, ``rng_data`` the replicated uint32 data of a PRNG key (``jax.random.key_data``; [M, ...] for
  members); metrics replicated with a leading axis of size 1 (so ``metric[0]`` reads them as under pmap, where it is
  of size P). eval_step(params, batch) -> outputs [P, b, ...], replicated (readable on every process).
  """
  train_step = steps_lib.train_step_fn(model, tasks, axis)
  eval_step = steps_lib.eval_step_fn(model)
  if members:
    train_step, eval_step = steps_lib.members_train_step(train_step), steps_lib.members_eval_step(eval_step)
  squeeze = lambda b: jax.tree.map(lambda a: a[0], b)  # [1, b, ...] -> [b, ...]

  def train_shard(state, batch, rng_data, *active):
    state, metrics = train_step(state, squeeze(batch), jax.random.wrap_key_data(rng_data), *active)
    return state, jax.tree.map(lambda m: m[None], metrics)  # [1, ...]: read metric[0] as under pmap

  def eval_shard(params, batch):
    return jax.tree.map(lambda a: a[None], eval_step(params, squeeze(batch)))

  specs = (P(), P(axis), P(), P()) if members else (P(), P(axis), P())
  train = jax.jit(
    jax.shard_map(train_shard, mesh=mesh, in_specs=specs, out_specs=(P(), P()), check_vma=False),
    donate_argnums=(0,),
  )
  evaluate = jax.jit(
    jax.shard_map(eval_shard, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis), check_vma=False),
    out_shardings=NamedSharding(mesh, P()),
  )
  return train, evaluate


@dataclasses.dataclass
class DataParallel:
  """The data-parallel setup of a run: which path, which devices, and how to move state and batches.

  Attributes:
    kind: ``'pmap'`` (local devices, one process) or ``'jit'`` (a mesh over global devices, any process count).
    devices: the devices the batch is split over (pmap: local; jit: the mesh's, possibly on several processes).
    mesh: the 1-D mesh (``'jit'`` only).
  """

  kind: str
  devices: list
  mesh: Mesh | None = None

  @classmethod
  def create(cls, kind: str = "pmap", num_devices: int = 0) -> "DataParallel":
    """``num_devices`` 0 = all (pmap: all local devices; jit: all global devices), N = the first N."""
    if kind not in KINDS:
      raise ValueError(f"parallel must be one of {KINDS}, got {kind!r}")
    if num_devices < 0:
      raise ValueError(f"devices must be >= 0 (0 = all), got {num_devices}")
    if kind == "pmap":
      if jax.process_count() > 1:
        raise ValueError(
          f"parallel='pmap' maps over one process's local devices, but this run has "
          f"{jax.process_count()} processes: use parallel='jit' for multi-host training"
        )
      devices = jax.local_devices()
      if num_devices > len(devices):
        raise ValueError(f"devices={num_devices} but only {len(devices)} local devices")
      return cls("pmap", devices[:num_devices] if num_devices else devices)
    devices = jax.devices()
    if num_devices and num_devices != len(devices):
      if jax.process_count() > 1:
        raise ValueError(
          f"devices={num_devices}: a multi-process jit run uses all {len(devices)} global devices (set devices=0)"
        )
      if num_devices > len(devices):
        raise ValueError(f"devices={num_devices} but only {len(devices)} devices")
      devices = devices[:num_devices]
    return cls("jit", list(devices), make_mesh(devices))

  @classmethod
  def from_config(cls, cfg) -> "DataParallel":
    """From a run config: ``cfg.parallel`` ('pmap' | 'jit', default 'pmap') and ``cfg.devices`` (0 = all)."""
    return cls.create(cfg.get("parallel", "pmap") or "pmap", int(cfg.get("devices", 0) or 0))

  @property
  def num_shards(self) -> int:
    """P: the leading axis of every batch (``iterate_batches(..., num_devices=P)``)."""
    return len(self.devices)

  def describe(self) -> str:
    procs = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"{self.kind} over {self.num_shards} x {self.devices[0].platform}{procs}"

  def __len__(self) -> int:  # a DataParallel is also the sequence of devices the batch is split over
    return len(self.devices)

  def __getitem__(self, i):
    return self.devices[i]

  def make_steps(self, model, tasks, members: bool = False) -> tuple[Callable, Callable]:
    """(train_step(state_r, host batch, rng[s][, active]) -> (state_r, metrics), eval_step(params_r, host batch)).

    ``metrics`` leaves have a leading device axis (pmap: P identical copies; jit: one replicated copy): read
    ``metric[0]``. Outputs are [P, b, ...] (members: [P, M, b, ...]). Both readable with ``np.asarray`` on every
    process. ``members``: the steps are vmapped over a member axis (:func:`jmoe.train.steps.members_train_step`).
    """
    if self.kind == "pmap":
      return make_pmap_steps(model, tasks, self.devices, members)
    j_train, j_eval = make_jit_steps(model, tasks, self.mesh, members=members)
    rep = NamedSharding(self.mesh, P())

    def train(state, batch, rng, *active):
      rng_data = _global_array(jax.device_get(jax.random.key_data(rng)), rep)
      extra = tuple(_global_array(np.asarray(a), rep) for a in active)
      return j_train(state, shard_batch(batch, self.mesh), rng_data, *extra)

    def evaluate(params, batch):
      return j_eval(params, shard_batch(batch, self.mesh))

    train.jitted, evaluate.jitted = j_train, j_eval  # for compile-cache checks
    return train, evaluate

  def replicate(self, tree):
    """Host pytree -> the layout the steps take (pmap: [P, ...] per leaf; jit: replicated global arrays)."""
    if self.kind == "pmap":
      sharding = NamedSharding(Mesh(np.array(self.devices), (AXIS,)), P(AXIS))
      put = lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (len(self.devices),) + np.shape(x)), sharding)
      return jax.tree.map(put, tree)
    return replicate_on_mesh(tree, self.mesh)

  def unreplicate(self, tree):
    """The steps' layout -> one host numpy copy (what checkpoints save; the same on every process)."""
    if self.kind == "pmap":
      tree = jax.tree.map(lambda x: np.asarray(jax.device_get(x))[0], tree)
    return to_host(tree)


def state_bytes(tree) -> int:
  return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def available_bytes(device=None) -> int | None:
  """Free memory of ``device`` (accelerators: bytes_limit - bytes_in_use; CPU: MemAvailable), None if unknown."""
  device = device or jax.devices()[0]
  try:
    st = device.memory_stats()
    if st and "bytes_limit" in st:
      return int(st["bytes_limit"] - st.get("bytes_in_use", 0))
  except Exception:  # noqa: BLE001 - CPU devices have no memory_stats
    pass
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None
