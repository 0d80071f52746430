"""Subprocess worker for tests/test_parallel.py and tests/test_distributed.py (not a test module).

The device count of a JAX process is fixed when the backend starts, so these checks run in fresh interpreters with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set by the caller:

  python tests/parallel_worker.py steps   OUT.json CKPT_DIR   # 8 devices: 1/2/8-device steps, pmap vs jit, ckpts
  python tests/parallel_worker.py experts OUT.json            # 8 devices: expert parallel vs single-device sorted
  python tests/parallel_worker.py all     OUT_DIR             # both: OUT_DIR/steps.json, OUT_DIR/experts.json
  python tests/parallel_worker.py train   OUT.npz PARALLEL    # a few jit/pmap steps; multi-process when
                                                              # JAX_COORDINATOR_ADDRESS etc. are set
  python tests/parallel_worker.py app     WORKDIR PARALLEL    # the training app (smoke), ditto

Each task writes its results (max abs differences, losses, errors) for the parent test to assert on.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jmoe.data import synthetic_mosi  # noqa: E402
from jmoe.models.euar import EUAR  # noqa: E402
from jmoe.train import batches as batches_lib  # noqa: E402
from jmoe.train import parallel  # noqa: E402
from jmoe.data import format as fmt  # noqa: E402
from jmoe.train import state as state_lib  # noqa: E402
from jmoe.train import tasks as tasks_lib  # noqa: E402

MODS = ("text",)
HEADS = ("sentiment",)
TASKS = tasks_lib.from_config({"sentiment": {"kind": "sentiment"}}, {"sentiment": fmt.SENTIMENT_SPEC})
DET_LOSS = {"kl": 1e-3, "auxiliary_loss": 0.0, "uloss": 1e-3}  # no Switch statistic: see test_parallel
STO_LOSS = {"kl": 1e-3, "auxiliary_loss": 1e-5, "uloss": 1e-3}


def max_diff(a, b) -> float:
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def dataset():
  return synthetic_mosi(seed=0, dims={"text": 12, "audio": 5}, sizes=(40, 8, 8))


def init_state(model, ds, tx, batch_size, loss=DET_LOSS, seed=0):
  sample = jax.tree.map(lambda a: a[0], next(batches_lib.iterate_batches(ds.splits["train"], MODS, batch_size, 1)))
  return state_lib.create_state(model, tx, sample, jax.random.key(seed), state_lib.default_hparams(TASKS, loss))


def run_steps(par, train, state_host, ds, batch_size, steps, rng=1):
  """``steps`` train steps from a host state -> (host state, [loss per step])."""
  state = par.replicate(state_host)
  losses = []
  batches = batches_lib.iterate_batches(ds.splits["train"], MODS, batch_size, par.num_shards, 3, HEADS)
  for _ in range(steps):
    state, m = train(state, next(batches), jax.random.key(rng))
    losses.append(float(np.asarray(m["loss"])[0]))
  return par.unreplicate(state), losses


def task_steps(out: Path, ckpt_dir: Path):
  from jmoe.train.checkpoints import Checkpoints

  ds = dataset()
  tx = state_lib.make_optimizer(1e-2, 1e-4, 1.0)
  res = {}
  # Deterministic model (MLP experts, no dropout, beta=0): one step must not depend on the device count.
  # B=12 on 8 devices is padded to 16 rows (4 weight-0 rows), on 1 and 2 devices it is not padded.
  det = EUAR(modalities=MODS, width=8, num_experts=8, k=2, expert="mlp", dropout=0.0, dispatch="dense")
  s0 = init_state(det, ds, tx, 12)
  pars = {("pmap", n): parallel.DataParallel.create("pmap", n) for n in (1, 2, 8)}
  pars[("jit", 8)] = parallel.DataParallel.create("jit", 8)
  trains = {key: p.make_steps(det, TASKS)[0] for key, p in pars.items()}
  ref_state, ref_loss = run_steps(pars[("pmap", 1)], trains[("pmap", 1)], s0, ds, 12, 1)
  res["det"] = {}
  for (kind, n), par in pars.items():
    st, loss = run_steps(par, trains[(kind, n)], s0, ds, 12, 1)
    res["det"][f"{kind}{n}"] = {
      "loss": loss[0],
      "param_diff": max_diff(st.params, ref_state.params),
      "loss_diff": abs(loss[0] - ref_loss[0]),
    }
  # The same model with expert-parallel routing (experts sharded over the 8 data-parallel devices).
  ep_model = det.clone(dispatch="expert_parallel")
  ep_par = pars[("pmap", 8)]
  st, loss = run_steps(ep_par, ep_par.make_steps(ep_model, TASKS)[0], s0, ds, 12, 1)
  res["det"]["pmap8_expert_parallel"] = {
    "loss": loss[0],
    "param_diff": max_diff(st.params, ref_state.params),
    "loss_diff": abs(loss[0] - ref_loss[0]),
  }
  # Checkpoints: written after a step on 8 devices, restored on 1 (and the reverse), then one more step.
  two_1 = run_steps(pars[("pmap", 1)], trains[("pmap", 1)], ref_state, ds, 12, 1)[0]
  ck = Checkpoints(ckpt_dir / "from8")
  st8 = run_steps(pars[("jit", 8)], trains[("jit", 8)], s0, ds, 12, 1)[0]
  ck.save_latest(0, st8, {"devices": 8})
  restored, meta = ck.restore_latest(s0)
  ck.close()
  on1 = run_steps(pars[("pmap", 1)], trains[("pmap", 1)], restored, ds, 12, 1)[0]
  ck = Checkpoints(ckpt_dir / "from1")
  ck.save_latest(0, ref_state, {"devices": 1})
  restored1, _ = ck.restore_latest(s0)
  ck.close()
  on8 = run_steps(pars[("jit", 8)], trains[("jit", 8)], restored1, ds, 12, 1)[0]
  res["ckpt"] = {
    "restored_8_exact": max_diff(restored.params, st8.params),
    "meta": meta["devices"],
    "8_then_1": max_diff(on1.params, two_1.params),
    "1_then_8": max_diff(on8.params, two_1.params),
    "opt_state_8_exact": max_diff(restored.opt_state, st8.opt_state),
    "jit8_compilations": trains[("jit", 8)].jitted._cache_size(),
  }  # 4 calls, fresh states: 1
  # With dropout and beta > 0: pmap and jit on the same 8 devices draw the same per-device RNG streams, so they
  # must agree; 1 vs 8 devices legitimately differ (other streams). Same parameters as `det` (no new init).
  sto = det.clone(dropout=0.1)
  s0s = s0.replace(hparams=state_lib.default_hparams(TASKS, STO_LOSS))
  a, la = run_steps(pars[("pmap", 8)], pars[("pmap", 8)].make_steps(sto, TASKS)[0], s0s, ds, 12, 2)
  b, lb = run_steps(pars[("jit", 8)], pars[("jit", 8)].make_steps(sto, TASKS)[0], s0s, ds, 12, 2)
  res["sto"] = {"pmap8_vs_jit8": max_diff(a.params, b.params), "loss_pmap": la, "loss_jit": lb}
  res["members"] = task_members(ds, tx, sto, pars)
  out.write_text(json.dumps(res, indent=1))


def task_members(ds, tx, model, pars):
  """Three members (different seeds, learning rates and loss weights) vmapped in one program on 8 devices (pmap and
  jit) vs each trained alone on 8 devices: two steps; member 1 inactive (early-stopped) must not move."""
  losses = [STO_LOSS, {**STO_LOSS, "kl": 0.0}, {**STO_LOSS, "uloss": 1e-1}]
  states = [
    state_lib.with_overrides(init_state(model, ds, tx, 12, loss, seed=m), {"learning_rate": lr})
    for m, (loss, lr) in enumerate(zip(losses, (1e-2, 3e-3, 1e-3)))
  ]
  rngs = [jax.random.key(100 + m) for m in range(3)]
  active = np.array([True, False, True])
  out = {}
  for kind in ("pmap", "jit"):
    par = pars[(kind, 8)]
    single = par.make_steps(model, TASKS)[0]
    members = par.make_steps(model, TASKS, members=True)[0]
    state = par.replicate(jax.tree.map(lambda *xs: np.stack(xs), *states))
    it = batches_lib.iterate_member_batches([ds.splits["train"]] * 3, MODS, 12, par.num_shards, (3, 4, 5), HEADS)
    stacked_rng = jax.random.wrap_key_data(np.stack([jax.random.key_data(r) for r in rngs]))
    for _ in range(2):
      state, _ = members(state, next(it), stacked_rng, active)
    state = par.unreplicate(state)
    diffs = []
    for m in range(3):
      alone = par.replicate(states[m])
      it_m = batches_lib.iterate_batches(ds.splits["train"], MODS, 12, par.num_shards, 3 + m, HEADS)
      for _ in range(2 if active[m] else 0):
        alone, _ = single(alone, next(it_m), rngs[m])
      diffs.append(max_diff(jax.tree.map(lambda a: a[m], state.params), par.unreplicate(alone).params))
    out[kind] = diffs
  return out


def task_experts(out: Path):
  from jax.sharding import Mesh, PartitionSpec as P
  from jmoe.moe.experts import MLPExpert
  from jmoe.moe.layer import MoELayer
  from jmoe.moe.routing import TopKRouter

  n, d, e, k, devs = 64, 6, 16, 2, 8
  x = jax.random.normal(jax.random.key(0), (n, d))
  r = jax.random.normal(jax.random.key(1), (n, 5))
  mesh = Mesh(np.array(jax.devices()[:devs]), ("expert",))

  def layer(strategy, **kw):  # capacity_factor 1.0 with 16 experts: some tokens are dropped
    return MoELayer(TopKRouter(e, k=k), MLPExpert(12, 5), e, strategy=strategy, capacity_factor=1.0, **kw)

  ref = layer("sorted", group_size=n // devs)  # the drop rule EP implements: one group per device
  params = jax.jit(ref.init)(jax.random.key(2), x)["params"]

  def value_grad(mod):
    def f(p, x):
      y, _, m = mod.apply({"params": p}, x)
      return jnp.sum(y * r), (y, m["dropped_fraction"])

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  (_, (y0, d0)), g0 = value_grad(ref)(params, x)
  res = {"dropped_ref": float(d0)}
  # 1. jit + shard_map over a mesh axis (context mesh), expert params stored sharded over it.
  ep = layer("expert_parallel", expert_axis="expert")
  with jax.set_mesh(mesh):
    sharded = jax.tree.map(lambda a: a, params)
    stack = sharded["experts"]["stack"]
    sharded["experts"]["stack"] = jax.tree.map(
      lambda a: jax.device_put(a, jax.sharding.NamedSharding(mesh, P("expert"))), stack
    )
    (_, (y1, d1)), g1 = value_grad(ep)(sharded, x)
  res["shard_map"] = {
    "y": max_diff(y1, y0),
    "dropped": float(d1),
    "grad_params": max_diff(g1[0], g0[0]),
    "grad_x": max_diff(g1[1], g0[1]),
    "experts_per_device": int(sharded["experts"]["stack"]["wi"]["kernel"].addressable_shards[0].data.shape[0]),
  }
  # 2. the axis bound by pmap (as in the training steps): each device its own 8 tokens and 2 experts.
  ep_b = layer("expert_parallel", expert_axis="b")

  def per_device(p, xs, rs):
    def f(p, xs):
      y, _, m = ep_b.apply({"params": p}, xs)
      return jnp.sum(y * rs), (y, m["dropped_fraction"])

    (_, (y, dr)), (gp, gx) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(p, xs)
    return y, jax.lax.psum(gp, "b"), gx, jax.lax.pmean(dr, "b")

  y2, gp2, gx2, d2 = jax.pmap(per_device, axis_name="b", in_axes=(None, 0, 0), devices=jax.devices()[:devs])(
    params, x.reshape(devs, n // devs, d), r.reshape(devs, n // devs, 5)
  )
  res["pmap"] = {
    "y": max_diff(y2.reshape(n, 5), y0),
    "dropped": float(d2[0]),
    "grad_params": max_diff(jax.tree.map(lambda a: a[0], gp2), g0[0]),
    "grad_x": max_diff(gx2.reshape(n, d), g0[1]),
  }
  # 3. no capacity factor: nothing dropped, equals the dense strategy.
  dense = MoELayer(TopKRouter(e, k=k), MLPExpert(12, 5), e, strategy="dense")
  ep_nodrop = MoELayer(
    TopKRouter(e, k=k), MLPExpert(12, 5), e, strategy="expert_parallel", mesh=mesh, expert_axis="expert"
  )
  yd, *_ = jax.jit(dense.apply)({"params": params}, x)
  yn, _, mn = jax.jit(ep_nodrop.apply)({"params": params}, x)
  res["no_drop_vs_dense"] = {"y": max_diff(yn, yd), "dropped": float(mn["dropped_fraction"])}
  # 4. bad input: experts not divisible by the axis; no mesh axis at all.
  errors = {}
  for name, mod, ctx in [
    (
      "indivisible",
      MoELayer(TopKRouter(12, k=k), MLPExpert(12, 5), 12, strategy="expert_parallel", expert_axis="expert"),
      mesh,
    ),
    ("no_axis", ep, None),
  ]:
    try:  # the errors are raised while tracing: zero parameters of the right shapes will do
      p = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(mod.init, jax.random.key(0), x))
      p = p["params"]
      if ctx is None:
        jax.jit(mod.apply)({"params": p}, x)
      else:
        with jax.set_mesh(ctx):
          jax.jit(mod.apply)({"params": p}, x)
      errors[name] = None
    except ValueError as err:
      errors[name] = str(err)
  res["errors"] = errors
  out.write_text(json.dumps(res, indent=1))


def task_train(out: Path, kind: str, steps: int = 3, batch_size: int = 10):
  """A few steps of the stochastic model; process 0 writes the final params (npz) — also under jax.distributed."""
  distributed = parallel.maybe_initialize_distributed()
  ds = dataset()
  tx = state_lib.make_optimizer(1e-2, 1e-4, 1.0)
  model = EUAR(modalities=MODS, width=8, num_experts=4, k=2, expert="gaussian", dropout=0.1, dispatch="dense")
  par = parallel.DataParallel.create(kind)
  s0 = init_state(model, ds, tx, batch_size)
  t0 = time.perf_counter()
  s0 = s0.replace(hparams=state_lib.default_hparams(TASKS, STO_LOSS))
  state, losses = run_steps(par, par.make_steps(model, TASKS)[0], s0, ds, batch_size, steps)
  seconds = time.perf_counter() - t0
  if jax.process_index() == 0:
    flat = {
      "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
      for path, v in jax.tree_util.tree_leaves_with_path(state.params)
    }
    np.savez(out, losses=np.array(losses), **flat)
    out.with_suffix(".json").write_text(
      json.dumps(
        {
          "process_count": jax.process_count(),
          "devices": jax.device_count(),
          "local": jax.local_device_count(),
          "distributed": distributed,
          "losses": losses,
          "seconds": seconds,
        }
      )
    )
  print(f"process {jax.process_index()}/{jax.process_count()} done: losses {losses}", flush=True)


def task_app(workdir: Path, kind: str):
  """The EUAR training app in its smoke setting (2 epochs, checkpoints, metrics, plots) on the given path."""
  from experiments import euar_mosi
  from experiments.common import smoke
  from jmoe.train import app

  cfg = euar_mosi.get_config()
  cfg.workdir, cfg.smoke, cfg.quiet, cfg.parallel = str(workdir), True, True, kind
  cfg.optim.batch_size = 10  # 4 devices: padded to 12 rows
  cfg.data.synthetic_dims = (16, 5, 6)
  cfg.model.width = 8
  out = app.run(cfg, smoke)  # jax.distributed is initialised by the app when JAX_COORDINATOR_ADDRESS is set
  mae = out["folds"][0]["seeds"][0]["test"]["sentiment"]["MAE"]
  print(f"process {jax.process_index()}/{jax.process_count()} app done: test MAE {mae}", flush=True)


if __name__ == "__main__":
  task, path = sys.argv[1], Path(sys.argv[2])
  if task == "steps":
    task_steps(path, Path(sys.argv[3]))
  elif task == "experts":
    task_experts(path)
  elif task == "all":  # both of the above in one interpreter (what test_parallel runs): OUT_DIR
    task_steps(path / "steps.json", path / "ckpt")
    task_experts(path / "experts.json")
  elif task == "train":
    task_train(path, sys.argv[3])
  elif task == "app":
    task_app(path, sys.argv[3])
  else:
    raise SystemExit(f"unknown task {task!r}")
