"""tools/device_suite --smoke (every part at tiny sizes on CPU) and tools/prepare_wheels' pip commands.

The smoke run keeps the GPU suite from rotting before a device is lent: it must write suite.json and suite.md with
every part, each part either measured or reporting its error, and the device targets judged."""

import json
import sys

from tools import device_suite, prepare_wheels


def test_device_suite_smoke_writes_every_part(tmp_path):
  res = device_suite.main(["--smoke", "--out", str(tmp_path)])
  data = json.loads((tmp_path / "suite.json").read_text())
  md = (tmp_path / "suite.md").read_text()
  assert data["smoke"] is True and set(device_suite.PARTS) <= set(data)
  errors = {p: data[p]["error"] for p in device_suite.PARTS if "error" in data[p]}
  assert errors == {}, errors  # at tiny sizes on CPU every part runs
  for part in device_suite.PARTS:
    assert f"## {part} (" in md and data[part]["seconds"] >= 0
  assert set(data["environment"]["info"]["peak_tflops"]) == {"float32", "bfloat16"}
  names = {r["name"] for r in data["routing"]["rows"]}
  assert {"jmoe/dense", "jmoe/einsum", "jmoe/sorted", "jmoe/ragged", "floor/matmul"} <= names
  assert all(r["x_peak"]["fwd"] > 0 for r in data["routing"]["rows"] if "x_peak" in r)
  assert [r["config"]["experts"] for r in data["e_scaling"]["rows"] if r["name"] == "jmoe/ragged"] == [4, 8]
  assert {(r["model"], r["members"]) for r in data["members"]["rows"]} == {("euar", 2), ("haemsa", 2)}
  assert data["euar_train"]["rows"][0]["rows"][0]["samples_per_s"] > 0
  h = data["himoe"]
  assert h["projected_min"] > 0 and h["program_s"] > 0 and h["program_folds"] == 2 and h["one_fold_s"] is None
  assert len(res["targets"]) == 7 and all(t.startswith("target ") for t in res["targets"])
  assert "## targets" in md


def test_part_budget_stops_cleanly(tmp_path):
  """A part whose budget is spent runs no further configs and says so in its table."""
  spent = device_suite.Part(0.0)
  res = device_suite.e_scaling(True, spent)
  assert res["rows"] == [] and "budget spent" in res["table"]


def test_wheel_commands(tmp_path):
  cmd = prepare_wheels.download_command(tmp_path / "w", "3.12", ("ml_collections>=0.1.1", "array_record"))
  assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
  assert "--only-binary=:all:" in cmd and "--no-deps" in cmd and cmd[cmd.index("--dest") + 1] == str(tmp_path / "w")
  assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux2014_x86_64" in cmd
  assert cmd[-2:] == ["ml_collections>=0.1.1", "array_record"]
  assert prepare_wheels.install_command(tmp_path / "none") is None  # no folder: nothing to install
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "ml_collections-1.1.0-py3-none-any.whl").write_bytes(b"")
  inst = prepare_wheels.install_command(tmp_path / "w", ("ml_collections>=0.1.1", "array_record"), python="py")
  assert inst == ["py", "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(tmp_path / "w")] + [
    "ml_collections"
  ]  # only the packages whose wheel is there
  assert "no wheels" in prepare_wheels.install(tmp_path / "none")
  assert "tools.device_suite" in prepare_wheels.__doc__ and "carry" in prepare_wheels.__doc__
