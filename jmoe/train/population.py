"""Evolution of a population of P individuals trained as one program (HAEMSA eq. 8-10; generic over models).

Axis alphabet: P population (the member axis M of :mod:`jmoe.train.steps`), D data-parallel devices, b rows per
device, G generations.

An individual is one :class:`~jmoe.train.state.TrainState`: weights, optimizer state and its hyperparameter genes
(``hparams['task/<t>' | 'loss/<name>' | 'gene/<name>']``, and ``lr``: the injected learning rate). The population
is those P states stacked on a leading axis, trained by the platform's member step
(``DataParallel.make_steps(model, tasks, members=True)``: ``steps.members_train_step``, one compiled program for
every individual, no Python loop over individuals). Architecture genes ``gene/<name>`` are masks the model reads
from the batch (``batch['gene/<name>']`` [D, P, b], constant per individual; see :mod:`jmoe.models.haemsa`): the
host adds them to every batch, so different architectures share one program.

One generation (:func:`evolve_run`): train every individual ``epochs_per_generation`` epochs -> fitness on the
validation split (eq. 8) -> log a JSONL line per individual -> unless it is the last generation: elitism,
tournament selection, crossover (eq. 9) and mutation (eq. 10) as one jitted function of the stacked state ->
checkpoint (orbax, the generation boundary; a re-run resumes there). The individuals train in vmapped programs of at
most ``member_chunk`` (:func:`jmoe.train.loop.member_chunks`). Early stopping: the evolution stops after
ceil(``optim.patience`` / ``epochs_per_generation``) generations without a better best fitness. The fittest
individual of the last trained generation is the model: evaluated on validation and, once, on test, with its genes
(:func:`jmoe.train.loop.evaluate_chosen`); evaluators restore it with them.

Choices the paper leaves open:

* fitness (eq. 8) = the validation loss sum_t w_t L_t with the config's fixed task weights w_t (not the
  individual's evolved weights, which could otherwise win by shrinking them) and without auxiliary losses; each
  batch's mean loss weighted by its real-sample count; lower is fitter; a non-finite fitness is +inf.
* tournament: k candidates drawn uniformly *with* replacement (``jax.random.randint``), the fittest wins; two
  independent tournaments give the two parents of each offspring.
* crossover (eq. 9): one alpha ~ U(0, 1) per offspring, p_o = alpha p_i + (1 - alpha) p_j on every float leaf of
  the state (weights, Adam moments, hyperparameters); integer leaves (step counts) from p_i. Genes marked ``log``
  (the learning rate) cross over as log10 values.
* mutation (eq. 10): weights p' = p + N(0, sigma) (``population.sigma``); each gene g' = g + N(0, sigma_g) in its
  encoding (log10 for ``log`` genes), clipped to [low, high]; Adam moments are not mutated.
* init: ``'shared'`` (default) starts every individual from the same initial weights (seed s): averaging the weights
  of networks from different initialisations averages unaligned hidden units, from one initialisation eq. 9 gives a
  working network; individuals then differ by genes, data order and dropout. ``'independent'``: one init each.
* elitism: the ``elite`` fittest individuals pass unchanged (slots 0..elite-1 of the next generation).
* genes start uniform in ``init`` = (lo, hi) per individual; a gene with lo == hi starts fixed at that value.

Bad input (one line, before anything trains): P < 2, tournament > P, sigma < 0, genes that switch off every
modality (the model's ``validate_genes``), a population whose state does not fit the device memory (estimate:
P x the bytes of one state x 3, state + offspring + gradients, against the free memory of the device, or
``population.memory_bytes`` when set).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jmoe.data import format as fmt
from jmoe.train import app, loop, workdir
from jmoe.train import batches as batches_lib
from jmoe.train import parallel as parallel_lib
from jmoe.train import report
from jmoe.train import state as state_lib
from jmoe.train import steps as steps_lib
from jmoe.train.checkpoints import Checkpoints, DamagedCheckpointError

log = loop.log
LR = "lr"  # the learning-rate gene: opt_state.hyperparams['learning_rate']


def population_config() -> ml_collections.ConfigDict:
  """``config.population``: the fields an experiment sets (genes: {name: dict(init, low, high, sigma, log)})."""
  return ml_collections.ConfigDict(
    dict(
      enabled=True,
      size=8,  # P
      generations=4,  # G
      epochs_per_generation=2,
      tournament=3,  # k
      sigma=1e-3,  # eq. 10 on the weights
      elite=1,
      init="shared",  # 'shared' | 'independent'
      memory_bytes=0,  # 0 = detect the device's free memory
      genes=ml_collections.ConfigDict(),
    )
  )


@dataclasses.dataclass(frozen=True)
class Gene:
  """A hyperparameter gene: ``name`` is an hparams key or ``'lr'``; values live in [low, high]."""

  name: str
  init: tuple[float, float]
  low: float
  high: float
  sigma: float
  log: bool = False


def genes_from_config(cfg_genes) -> tuple[Gene, ...]:
  out = []
  for name, g in dict(cfg_genes).items():
    g = dict(g)
    init = tuple(float(v) for v in g.get("init", (g["low"], g["high"])))
    out.append(Gene(name, init, float(g["low"]), float(g["high"]), float(g.get("sigma", 0.0)), bool(g.get("log"))))
  return tuple(out)


# --------------------------------------------------------------------------- evolution operators (pure, jittable)
def tournament(fitness: jax.Array, candidates: jax.Array) -> jax.Array:
  """candidates [..., k] indices into fitness [P] -> [...] the candidate with the lowest fitness (the winner)."""
  return jnp.take_along_axis(candidates, jnp.argmin(fitness[candidates], axis=-1)[..., None], axis=-1)[..., 0]


def crossover(tree_i, tree_j, alpha: jax.Array):
  """Eq. 9 on every float leaf: alpha * p_i + (1 - alpha) * p_j (alpha [P] broadcast on leading axis); int leaves
  from p_i."""

  def mix(a, b):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      return a
    al = alpha.reshape(alpha.shape + (1,) * (a.ndim - alpha.ndim)).astype(a.dtype)
    return al * a + (1 - al) * b

  return jax.tree.map(mix, tree_i, tree_j)


def mutate(tree, key: jax.Array, sigma: float | jax.Array):
  """Eq. 10: p + N(0, sigma) on every float leaf (independent noise per leaf)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(1, len(leaves)))
  out = [
    leaf + sigma * jax.random.normal(k, leaf.shape, leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
    for leaf, k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(treedef, out)


def get_gene(states, gene: Gene) -> jax.Array:
  v = states.opt_state.hyperparams["learning_rate"] if gene.name == LR else states.hparams[gene.name]
  return jnp.log10(v) if gene.log else v


def set_gene(states, gene: Gene, encoded: jax.Array):
  lo, hi = (math.log10(gene.low), math.log10(gene.high)) if gene.log else (gene.low, gene.high)
  v = jnp.clip(encoded, lo, hi)
  v = (10.0**v if gene.log else v).astype(jnp.float32)
  if gene.name == LR:
    hp = dict(states.opt_state.hyperparams, learning_rate=v)
    return states.replace(opt_state=states.opt_state._replace(hyperparams=hp))
  return states.replace(hparams=dict(states.hparams, **{gene.name: v}))


def next_generation(states, fitness: jax.Array, key: jax.Array, genes: tuple[Gene, ...], k: int, sigma, elite: int):
  """Selection, crossover, mutation and elitism on stacked states [P] -> the next generation's states [P]."""
  p = fitness.shape[0]
  fitness = jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)
  k_sel, k_alpha, k_mut, k_gene = jax.random.split(key, 4)
  parents = tournament(fitness, jax.random.randint(k_sel, (p, 2, k), 0, p))  # [P, 2]
  alpha = jax.random.uniform(k_alpha, (p,))
  take = lambda idx: jax.tree.map(lambda a: a[idx], states)
  si, sj = take(parents[:, 0]), take(parents[:, 1])
  child = crossover(si, sj, alpha)
  child = child.replace(params=mutate(child.params, k_mut, sigma))
  gkeys = jax.random.split(k_gene, max(1, len(genes)))
  for gene, gk in zip(genes, gkeys):
    enc = alpha * get_gene(si, gene) + (1 - alpha) * get_gene(sj, gene)  # eq. 9 in the gene's encoding
    enc = enc + gene.sigma * jax.random.normal(gk, (p,))  # eq. 10
    child = set_gene(child, gene, enc)
  if elite:
    order = jnp.argsort(fitness)
    keep = jnp.arange(p) < elite
    elites = take(jnp.where(keep, order[jnp.minimum(jnp.arange(p), p - 1)], 0))
    child = jax.tree.map(lambda e, c: jnp.where(keep.reshape((p,) + (1,) * (c.ndim - 1)), e, c), elites, child)
  return child


# --------------------------------------------------------------------------- validation of the inputs
def validate_population(cfg, one_state_bytes: int | None = None, genes_check: Callable | None = None) -> None:
  """One-line ValueError for a population that cannot run (see the module docstring)."""
  pc = cfg.population

  def need(ok, key, value, allowed):
    if not ok:
      raise ValueError(f"config.population.{key}={value!r} is invalid: {allowed}")

  need(isinstance(pc.size, int) and pc.size >= 2, "size", pc.size, "a population needs P >= 2 individuals")
  need(
    isinstance(pc.tournament, int) and 1 <= pc.tournament <= pc.size,
    "tournament",
    pc.tournament,
    f"use 1 <= tournament <= size={pc.size}",
  )
  need(pc.sigma >= 0, "sigma", pc.sigma, "mutation sigma must be >= 0")
  need(isinstance(pc.generations, int) and pc.generations >= 1, "generations", pc.generations, "use an int >= 1")
  need(pc.epochs_per_generation >= 1, "epochs_per_generation", pc.epochs_per_generation, "use an int >= 1")
  need(0 <= pc.elite < pc.size, "elite", pc.elite, f"use 0 <= elite < size={pc.size}")
  need(pc.init in ("shared", "independent"), "init", pc.init, "choose 'shared' or 'independent'")
  schedule = cfg.optim.get("schedule", "constant")
  if schedule != "constant":  # generations restart training; a per-run schedule has no meaning across them
    raise ValueError(f"config.optim.schedule={schedule!r} is invalid for a population run: use 'constant'")
  for g in genes_from_config(pc.genes):
    need(g.sigma >= 0, f"genes.{g.name}.sigma", g.sigma, "mutation sigma must be >= 0")
    need(g.low <= g.init[0] <= g.init[1] <= g.high, f"genes.{g.name}.init", g.init, "use low <= lo <= hi <= high")
    need(not g.log or g.low > 0, f"genes.{g.name}.low", g.low, "a log gene needs low > 0")
  if genes_check is not None:
    genes_check({g.name: np.array(g.init) for g in genes_from_config(pc.genes)})
  if one_state_bytes is not None:
    need_bytes = 3 * pc.size * one_state_bytes
    avail = pc.memory_bytes or parallel_lib.available_bytes()
    if avail is not None and need_bytes > avail:
      raise ValueError(
        f"config.population.size={pc.size} does not fit the device memory: ~{need_bytes / 2**20:.1f} MiB "
        f"(P x {one_state_bytes / 2**20:.2f} MiB per state x 3: state, offspring, gradients) > "
        f"{avail / 2**20:.1f} MiB available; use a smaller population or model"
      )


# --------------------------------------------------------------------------- training
def make_fitness_fn(model, tasks, weights: dict[str, float]):
  """pmap(vmap): (params [D, P, ...], batch [D, P, b, ...]) -> (weighted task loss [D, P], real samples [D, P])."""

  def one(params, batch):
    terms, _, _ = steps_lib.loss_terms(model, params, batch, None, False, tasks, steps_lib.AXIS)
    loss = sum(weights[t.name] * terms[f"task/{t.name}"] for t in tasks)
    return jax.lax.pmean(loss, steps_lib.AXIS), jax.lax.psum(jnp.sum(batch["weight"]), steps_lib.AXIS)

  return jax.pmap(jax.vmap(one), axis_name=steps_lib.AXIS)


def fitness(setup: loop.Setup, fitness_fn, params_r, split: fmt.Split, consts, p: int) -> np.ndarray:
  """Eq. 8: the mean validation loss of every individual [P] (+inf where not finite)."""
  opt = setup.cfg.optim
  total, count = np.zeros(p), 0.0
  for batch in batches_lib.iterate_member_batches(
    [split] * p, setup.modalities, opt.batch_size, setup.dp.num_shards, [None] * p, setup.heads
  ):
    loss, n = jax.device_get(fitness_fn(params_r, loop.with_consts(batch, consts, True)))
    total += np.asarray(loss)[0] * np.asarray(n)[0]
    count = float(np.asarray(n)[0][0]) + count
  f = total / max(count, 1.0)
  return np.where(np.isfinite(f), f, np.inf)


def init_population(setup: loop.Setup, fold: loop.FoldData, seed: int, genes: tuple[Gene, ...], p: int):
  """P host states: weights from seed (``init='shared'``) or seed*P+i, genes drawn uniform in their init range."""
  opt = setup.cfg.optim
  sample = next(batches_lib.iterate_batches(fold.train, setup.modalities, opt.batch_size, 1))
  sample = jax.tree.map(lambda a: a[0], sample)
  shared = setup.cfg.population.init == "shared"
  make = lambda key: state_lib.create_state(setup.model, setup.tx, sample, key, setup.hparams, setup.init_fn)
  base = make(jax.random.key(seed))
  states = [base if shared else make(jax.random.key(seed * p + i + 1)) for i in range(p)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *states)
  rng = np.random.default_rng(seed + 7919)
  for g in genes:
    lo, hi = (math.log10(g.init[0]), math.log10(g.init[1])) if g.log else g.init
    enc = rng.uniform(lo, hi, size=p).astype(np.float32)
    stacked = jax.device_get(set_gene(stacked, g, jnp.asarray(enc)))
  return jax.tree.map(np.asarray, stacked)


def make_evolve_fn(pc, genes):
  """The compiled generation step (selection, crossover, mutation, elitism); build once per run, not per seed."""
  return jax.jit(lambda s, f, key: next_generation(s, f, key, genes, pc.tournament, jnp.float32(pc.sigma), pc.elite))


def patience_generations(cfg) -> int:
  """Early stopping of the evolution: ``optim.patience`` epochs without a better best fitness, counted in whole
  generations (ceil(patience / epochs_per_generation))."""
  return max(1, -(-cfg.optim.patience // cfg.population.epochs_per_generation))


def train_generation(setup: loop.Setup, states, fold: loop.FoldData, seed: int, gen: int, rngs):
  """``epochs_per_generation`` epochs of every individual, in vmapped programs of at most ``member_chunk``
  individuals (:func:`jmoe.train.loop.member_chunks`) -> (host states, mean training loss per individual)."""
  pc, dp = setup.cfg.population, setup.dp
  p = pc.size
  parts, losses = [], np.zeros(p)
  for chunk in loop.member_chunks(setup.cfg, p):
    idx = np.asarray(chunk)
    sub = jax.tree.map(lambda a: a[idx], states)
    consts = loop.consts_of(sub.hparams)
    state_r = dp.replicate(sub)
    active = np.ones(len(idx), bool)
    per_epoch = []
    for e in range(pc.epochs_per_generation):
      epoch = gen * pc.epochs_per_generation + e
      loop.before_epoch(epoch)
      shuffles = [seed * 1_000_003 + epoch * 1009 + int(i) for i in idx]
      state_r, ms = loop.train_epoch(setup, state_r, [fold.train] * len(idx), shuffles, rngs[idx], active, True, consts)
      per_epoch.append([m["loss"] for m in ms])
    losses[idx] = np.mean(per_epoch, axis=0)
    parts.append(dp.unreplicate(state_r))
  states = parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
  return jax.tree.map(np.asarray, states), losses


def open_population(run_dir: Path, like, discard: bool, where: str) -> tuple[Checkpoints, tuple | None]:
  """(checkpoints of ``run_dir``, its latest (states, book) or None). A damaged checkpoint is one line naming it and
  how to go on; with ``discard`` (config.discard_damaged=True) the population's checkpoints and fitness log are
  discarded and it evolves from scratch."""
  ckpt = loop.open_checkpoints(run_dir)
  try:
    return ckpt, ckpt.restore_latest(like)
  except DamagedCheckpointError as e:
    ckpt.close()
    if not discard:
      raise DamagedCheckpointError(
        f"damaged checkpoint: {e}; re-run with --config.discard_damaged=True to discard {run_dir} and evolve {where} "
        "from scratch"
      ) from None
    log(f"  {where}: damaged checkpoint ({e}): discarded (config.discard_damaged=True), evolving from scratch")
    for name in ("latest", "best"):
      shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("fitness.jsonl", "test_outputs.npz"):
      (run_dir / name).unlink(missing_ok=True)
    return Checkpoints(run_dir), None


def evolve_run(setup: loop.Setup, fold: loop.FoldData, seed: int, run_dir: Path, fitness_fn, evolve_fn) -> dict:
  """Evolve one population on ``fold`` with seed ``seed``; resumes from ``run_dir/latest``. -> result dict
  (``seed``, ``status``, ``best_epoch`` (the last trained epoch), ``valid``, ``test``, ``chosen``)."""
  cfg, pc, dp = setup.cfg, setup.cfg.population, setup.dp
  p = pc.size
  genes = genes_from_config(pc.genes)
  states = init_population(setup, fold, seed, genes, p)
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  book = {"generation": 0, "best_fitness": None, "bad_generations": 0, "stopped": False}
  ckpt, restored = open_population(run_dir, states, cfg.get("discard_damaged", False), f"{fold.name} seed {seed}")
  try:
    if restored is not None:
      states, meta = restored
      book.update(meta)
      log(f"  {fold.name} seed {seed}: resuming the population at generation {book['generation']} from {run_dir}")
    jsonl = run_dir / "fitness.jsonl"
    if jax.process_index() == 0:
      kept = [r for r in workdir.read_jsonl(jsonl) if r["generation"] < book["generation"]]
      workdir.write_atomic(jsonl, "".join(json.dumps(r) + "\n" for r in kept))
    root = jax.random.key(seed)
    patience = patience_generations(cfg)
    fit, gen = None, book["generation"]
    while gen < pc.generations and not book["stopped"]:
      loop.check_interrupted()
      gkey = jax.random.fold_in(root, gen)
      rngs = jax.random.split(jax.random.fold_in(gkey, 1), p)
      t0 = time.time()
      states, train_loss = train_generation(setup, states, fold, seed, gen, rngs)
      fit = fitness(setup, fitness_fn, dp.replicate(states).params, fold.valid, loop.consts_of(states.hparams), p)
      lr = np.asarray(states.opt_state.hyperparams["learning_rate"])
      if jax.process_index() == 0:
        for i in range(p):
          row = {"generation": gen, "individual": i, "fitness": fit[i], "train_loss": train_loss[i], "lr": lr[i]}
          row.update({k: np.asarray(v)[i] for k, v in states.hparams.items()})
          workdir.append_jsonl(jsonl, row)
      log(
        f"  {fold.name} seed {seed} generation {gen}: fitness best {np.min(fit):.4f} median {np.median(fit):.4f} "
        f"worst {np.max(fit):.4f} ({time.time() - t0:.1f} s)"
      )
      best = float(np.min(fit))
      improved = np.isfinite(best) and (book["best_fitness"] is None or best < book["best_fitness"])
      book.update(
        best_fitness=best if improved else book["best_fitness"],
        bad_generations=0 if improved else book["bad_generations"] + 1,
      )
      book["stopped"] = book["bad_generations"] >= patience and gen + 1 < pc.generations
      if book["stopped"]:
        log(f"  {fold.name} seed {seed}: no better fitness for {patience} generations: evolution stopped early")
      gen += 1
      if gen < pc.generations and not book["stopped"]:
        states = jax.tree.map(
          np.asarray, jax.device_get(evolve_fn(states, jnp.asarray(fit), jax.random.fold_in(gkey, 2)))
        )
      book["generation"] = gen
      ckpt.save_latest(gen, states, dict(book))
    if fit is None:  # resumed after the last generation: recompute the last fitness
      fit = fitness(setup, fitness_fn, dp.replicate(states).params, fold.valid, loop.consts_of(states.hparams), p)
    best = int(np.argmin(fit))
    individual = jax.tree.map(lambda a: a[best], states)
    ckpt.save_best(book["generation"], individual, {"generation": book["generation"] - 1, "individual": best})
  finally:
    ckpt.close()
  valid, test, flags = loop.evaluate_chosen(setup, fold, individual, run_dir)
  chosen = {
    "individual": best,
    "fitness": float(fit[best]),
    "lr": float(individual.opt_state.hyperparams["learning_rate"]),
  }
  chosen.update({k: float(v) for k, v in individual.hparams.items()})
  return {
    "seed": seed,
    "status": "ok" if np.isfinite(fit[best]) else "diverged",
    "best_epoch": book["generation"] * pc.epochs_per_generation - 1,
    "valid": valid,
    "test": test,
    "chosen": workdir.jsonable(chosen),
    **({"flags": flags} if flags else {}),  # shown under the table like a training run's
  }


# --------------------------------------------------------------------------- the trainer
def run(cfg: ml_collections.ConfigDict, smoke: Callable | None = None) -> dict:
  """Like :func:`jmoe.train.app.run`, with one evolved population per fold x seed instead of one model."""
  validate_population(cfg)
  if cfg.get("search", {}).get("trials", 0):
    raise ValueError(
      "config.search.trials: a population evolves its own hyperparameters; search the platform loop instead "
      "(--config.population.enabled=False)"
    )
  with app.prepared(cfg, smoke, epochs=False) as r:
    return _run(cfg, r)


def _run(cfg, r: app.Prepared) -> dict:
  st, pc = r.setup, cfg.population
  validate_population(cfg, genes_check=_genes_check(cfg, st.modalities))
  genes = genes_from_config(pc.genes)
  unknown = [g.name for g in genes if g.name != LR and g.name not in st.hparams]
  if unknown:
    raise ValueError(
      f"config.population.genes: {unknown} are not hyperparameters of this run ({sorted(st.hparams)} or lr)"
    )
  if st.dp.kind != "pmap":
    raise ValueError("population: only parallel='pmap' is supported (the fitness step is pmap(vmap))")
  sample = next(batches_lib.iterate_batches(r.folds[0].train, st.modalities, cfg.optim.batch_size, 1))
  one = state_lib.create_state(
    st.model, st.tx, jax.tree.map(lambda a: a[0], sample), jax.random.key(0), st.hparams, st.init_fn
  )
  validate_population(cfg, parallel_lib.state_bytes(one))
  if st.member_steps is None:
    st = dataclasses.replace(st, member_steps=st.dp.make_steps(st.model, st.tasks, members=True))
  log(f"model: {cfg.model_name} {cfg.model.to_dict()} | population P={pc.size} x G={pc.generations} generations")
  fitness_fn = make_fitness_fn(st.model, st.tasks, {t.name: t.weight for t in st.tasks})
  evolve_fn = make_evolve_fn(pc, genes)  # compiled once for every fold and seed
  fold_results = []
  for i, fold in enumerate(r.folds):
    with loop.interrupts_remembered():  # a Ctrl-C that a library swallowed stops at the next generation
      res = [evolve_run(st, fold, s, r.workdir / f"fold_{i}" / f"seed_{s}", fitness_fn, evolve_fn) for s in r.seeds]
    fold_results.append(app.fold_result(i, fold, res))
    report.plot_fitness(r.workdir / f"fold_{i}", r.seeds)
  title = (
    f"{cfg.name}: {r.ds.name}{' (SYNTHETIC)' if r.ds.synthetic else ''}, {len(r.seeds)} seeds, population "
    f"P={pc.size}, G={pc.generations}, mean ± std over {'seeds' if len(r.folds) == 1 else f'{len(r.folds)} folds'}, "
    "fittest individual of the last generation (validation loss); fitness plots: fold_*/seed_*/fitness.png"
  )
  return app.finish(cfg, r.ds, st.tasks, fold_results, title, "population fitness (validation loss)", r.t0)


def _genes_check(cfg, modalities):
  """The model's ``validate_genes`` when it has one (one line for initial genes that break the model)."""
  model_mod = importlib.import_module(f"jmoe.models.{cfg.model_name}")
  if not hasattr(model_mod, "validate_genes"):
    return None
  return lambda g: model_mod.validate_genes(g, modalities, cfg.model.get("shared", True))


def run_or_app(cfg, smoke=None, prepare=None) -> dict:
  """``prepare(cfg)`` (e.g. an ablation), then :func:`run` when ``config.population.enabled``, else ``app.run``."""
  if prepare is not None:
    prepare(cfg)
  return (run if cfg.population.enabled else app.run)(cfg, smoke)
