"""tools/bench_members in smoke mode: rows with both modes, verdicts and the load, for EUAR and HAEMSA."""

import json

import pytest

from tools import bench_members


@pytest.mark.slow
@pytest.mark.parametrize("model", ["euar", "haemsa"])
def test_bench_members_smoke(tmp_path, model):
  out = bench_members.main(["--smoke", "--model", model, "--json", str(tmp_path / "m.json")])
  rows = json.loads((tmp_path / "m.json").read_text())["rows"]
  assert {(r["members"], r["mode"]) for r in rows} == {(2, "vmap"), (2, "sequential")}
  assert all(r["wall_s"] > 0 and r["samples_per_s"] > 0 for r in rows)
  assert out["verdicts"][0]["speedup"] > 0 and "foreign_cpu_fraction" in out
