"""tools/bench_members in smoke mode: rows with the three modes, verdicts and the load, for EUAR and HAEMSA."""

import json

import pytest

from tools import bench_members


@pytest.mark.slow
@pytest.mark.parametrize("model", ["euar", "haemsa"])
def test_bench_members_smoke(tmp_path, model):
  out = bench_members.main(["--smoke", "--model", model, "--json", str(tmp_path / "m.json")])
  rows = json.loads((tmp_path / "m.json").read_text())["rows"]
  assert {(r["members"], r["mode"]) for r in rows} == {(3, "vmap"), (3, "vmap_chunked"), (3, "sequential")}
  assert all(r["wall_s"] > 0 and r["samples_per_s"] > 0 for r in rows)
  assert out["verdicts"][0]["speedup"] > 0 and out["verdicts"][0]["chunked_speedup"] > 0
  assert "foreign_cpu_fraction" in out
