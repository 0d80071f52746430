"""Members vmapped vs sequential: training throughput of M members as one program vs M separate runs.

  python -m tools.bench_members --json runs/bench/members.json                  # EUAR: 5 seeds, M=16
  python -m tools.bench_members --model haemsa --json runs/bench/members_haemsa.json   # P = 4, 16, 64
  python -m tools.bench_members --smoke --json /tmp/m.json                      # seconds (tests)

Rows ``{members, mode, wall_s, samples_per_s, ...}``: ``wall_s`` is the median time of ``--steps`` training steps
of all M members, after compilation and warm-up: ``vmap`` (one program, ``DataParallel.make_steps(members=True)``),
``vmap_chunked`` (programs of at most ``--chunk`` members one after another, as ``config.member_chunk``) and
``sequential`` (M states, each stepped by the platform's single-member step). The modes use the same batches and
are timed interleaved; targets: ``tools/targets.json`` (bench ``members``).
"""

from __future__ import annotations

import argparse
import time

from tools import benchlib

SIZES = {"euar": (5, 16), "haemsa": (4, 16, 64)}


def _setup(model_name: str, smoke: bool):
  from jmoe.data import sources
  from jmoe.train import app

  if model_name == "euar":
    from experiments.euar_mosi import get_config
  else:
    from experiments.haemsa_mosi import get_config
  cfg = get_config()
  cfg.data.synthetic_sizes = (32, 8, 8) if smoke else (512, 64, 64)
  if smoke:  # the smallest model: one modality, width 8 (compiling dominates a smoke run)
    cfg.data.modalities, cfg.model.width, cfg.optim.batch_size = "text", 8, 8
    if model_name == "haemsa":
      cfg.model.levels, cfg.model.task_experts = 1, 2
      cfg.tasks = {"sentiment": cfg.tasks.sentiment.to_dict(), "unified": cfg.tasks.unified.to_dict()}
    else:
      cfg.model.num_experts, cfg.model.k = 2, 1
  ds = sources.load(cfg.data)
  return cfg, ds, app.setup(cfg, ds)


def bench(model_name: str, sizes, steps: int, repeats: int, smoke: bool, chunk: int = 0) -> dict:
  import jax
  import ml_collections
  import numpy as np

  from jmoe.train import batches as batches_lib
  from jmoe.train import loop
  from jmoe.train import state as state_lib

  cfg, ds, st = _setup(model_name, smoke)
  train = ds.splits["train"]
  bs = cfg.optim.batch_size
  member_train, _ = st.dp.make_steps(st.model, st.tasks, members=True)
  single_train, _ = st.steps
  sample = jax.tree.map(lambda a: a[0], next(batches_lib.iterate_batches(train, st.modalities, bs, 1)))
  base = state_lib.create_state(st.model, st.tx, sample, jax.random.key(0), st.hparams, st.init_fn)
  genes = {"gene/levels": 2.0} if model_name == "haemsa" else {}
  entries = []
  for m in sizes:
    per_member = [
      list(batches_lib.iterate_batches(train, st.modalities, bs, st.dp.num_shards, 1000 + i, st.heads))[:steps]
      for i in range(m)
    ]

    def stacked(members, per_member=per_member):
      g = {k: np.full(len(members), v, np.float32) for k, v in genes.items()}
      return [
        loop.with_consts({k: np.stack([per_member[i][s][k] for i in members], 1) for k in per_member[0][s]}, g, True)
        for s in range(steps)
      ]

    stacked_batches = stacked(range(m))
    single_batches = [
      [loop.with_consts(b, {k: np.float32(v) for k, v in genes.items()}, False) for b in bl] for bl in per_member
    ]
    holder = {"v": st.dp.replicate(jax.tree.map(lambda *xs: np.stack(xs), *[base] * m))}
    rngs = jax.random.split(jax.random.key(1), m)
    active = np.ones(m, bool)
    seq_states = [st.dp.replicate(base) for _ in range(m)]
    rng1 = jax.random.key(2)

    def run_vmap(holder=holder, stacked_batches=stacked_batches, rngs=rngs, active=active):
      s = holder["v"]
      for b in stacked_batches:
        s, met = member_train(s, b, rngs, active)
      holder["v"] = s
      return met["loss"]

    def run_seq(seq_states=seq_states, single_batches=single_batches, rng1=rng1):
      out = []
      for i in range(len(seq_states)):
        s = seq_states[i]
        for b in single_batches[i]:
          s, met = single_train(s, b, rng1)
        seq_states[i] = s
        out.append(met["loss"])
      return out

    entry = {"members": m, "vmap": run_vmap, "sequential": run_seq}
    parts = loop.member_chunks(ml_collections.ConfigDict({"member_chunk": chunk}), m)
    if len(parts) > 1:  # the loop's config.member_chunk: programs of at most `chunk` members, one after another
      chunked = [
        (
          {"v": st.dp.replicate(jax.tree.map(lambda *xs: np.stack(xs), *[base] * len(p)))},
          stacked(p),
          rngs[p[0] : p[-1] + 1],
        )
        for p in parts
      ]

      def run_chunked(chunked=chunked, active=active):
        out = []
        for holder_c, batches_c, rngs_c in chunked:
          s = holder_c["v"]
          for b in batches_c:
            s, met = member_train(s, b, rngs_c, active[: len(rngs_c)])
          holder_c["v"] = s
          out.append(met["loss"])
        return out

      entry["vmap_chunked"] = run_chunked
    entries.append(entry)
  foreign = benchlib.ForeignCpu().start()
  load0 = benchlib.loadavg()
  t0 = time.time()
  rows = []
  for ent in entries:
    modes = [{"fn": ent[mode], "mode": mode} for mode in ("vmap", "vmap_chunked", "sequential") if mode in ent]
    benchlib.time_interleaved(modes, "fn", repeats, warmup=2)
    for p in modes:
      st, m = p["stats"]["fn"], ent["members"]
      row = {
        "members": m,
        "mode": p["mode"],
        "wall_s": st["median_s"],
        "samples_per_s": m * steps * bs / st["median_s"],
      }
      rows.append(dict(row, steps=steps, batch_size=bs, p10_s=st["p10_s"], p90_s=st["p90_s"]))
  verdicts = []
  for m in sizes:
    v = next(r for r in rows if r["members"] == m and r["mode"] == "vmap")
    s = next(r for r in rows if r["members"] == m and r["mode"] == "sequential")
    speedup = s["wall_s"] / v["wall_s"]
    c = next((r for r in rows if r["members"] == m and r["mode"] == "vmap_chunked"), None)
    target = benchlib.load_targets("members").get(f"members.{model_name}.{m}")
    verdict = benchlib.judge(target, speedup) if target else {"line": None, "met": None}
    chunked = None if c is None else s["wall_s"] / c["wall_s"]
    verdicts.append({"members": m, "speedup": speedup, "chunked_speedup": chunked, **verdict})
  return {
    "model": model_name,
    "rows": rows,
    "verdicts": verdicts,
    "foreign_cpu_fraction": foreign.stop(),
    "loadavg_start": load0,
    "loadavg_end": benchlib.loadavg(),
    "seconds": time.time() - t0,
    "machine": benchlib.machine_info(),
    "data": "synthetic MOSI-shaped, same batches in every mode",
    "member_chunk": chunk,
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--json", required=True)
  ap.add_argument("--model", choices=("euar", "haemsa"), default="euar")
  ap.add_argument("--steps", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--sizes", default="", help="comma-separated member counts (default: the issue's)")
  ap.add_argument("--smoke", action="store_true", help="tiny sizes (2 members, 2 steps): checks the tool runs")
  benchlib.add_malloc_flag(ap, "default")
  ap.add_argument(
    "--chunk", type=int, default=8, help="also time vmapped programs of at most this many members (0 = off)"
  )
  a = ap.parse_args(argv)
  print(benchlib.apply_malloc(a), flush=True)
  sizes = tuple(int(x) for x in a.sizes.split(",") if x) or SIZES[a.model]
  steps, repeats, chunk = (2, 1, 2) if a.smoke else (a.steps, a.repeats, a.chunk)
  out = bench(a.model, (3,) if a.smoke else sizes, steps, repeats, a.smoke, chunk)
  benchlib.write_json(out, a.json)
  lines = [[str(r["members"]), r["mode"], f"{r['wall_s']:.4f}", f"{r['samples_per_s']:.0f}"] for r in out["rows"]]
  print("\n".join(benchlib.format_rows(["members", "mode", "wall_s", "samples_per_s"], lines)))
  for v in out["verdicts"]:
    tgt = "" if v["line"] is None else f" ({v['line']})"
    chunked = "" if v["chunked_speedup"] is None else f"; in programs of <= {chunk} members {v['chunked_speedup']:.2f}x"
    print(f"M={v['members']}: vmap speedup {v['speedup']:.2f}x{tgt}{chunked}")
  print(
    f"foreign CPU share while timing: {out['foreign_cpu_fraction']}; load average {out['loadavg_start']} -> {out['loadavg_end']}"
  )
  return out


if __name__ == "__main__":
  main()
