"""The one command line: every runnable module of experiments/ goes through jmoe.train.cli.main, whose --help lists
the config and exits 0 and whose unknown keys are one line with exit status 2; the library imports no script."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jmoe.train import cli

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_every_runnable_module_is_found():
  assert {"euar_mosi", "haemsa_mosi", "himoe_sweep", "euar_robustness", "drmoe_routing"} <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_runnable_module_uses_the_one_cli(name, monkeypatch, capsys):
  source = (ROOT / "experiments" / f"{name}.py").read_text()
  main_block = source.split('if __name__ == "__main__":', 1)[1]
  assert "cli.main(get_config, run)" in main_block, f"experiments/{name}.py must end with cli.main(get_config, run)"
  mod = importlib.import_module(f"experiments.{name}")
  keys = [k for k, _ in cli.leaves(mod.get_config())]
  monkeypatch.setattr(sys, "argv", [name, "--help"])
  with pytest.raises(SystemExit) as e:
    cli.main(mod.get_config, mod.run)
  assert e.value.code == 0
  out = capsys.readouterr().out
  for key in keys:  # every leaf is listed, with its default
    assert f"{key.split('.')[-1]}: " in out, key
  monkeypatch.setattr(sys, "argv", [name, f"--config.{keys[0]}x=1"])
  with pytest.raises(SystemExit) as e:
    cli.main(mod.get_config, mod.run)
  assert e.value.code == 2
  err = capsys.readouterr().err.splitlines()
  assert err[0] == f"error: unknown config key '{keys[0]}x' (did you mean '{keys[0]}'?)", err


def test_old_style_flags_get_one_line():
  assert cli.unknown_key(["--run", "x"], cli.ml_collections.ConfigDict({"run": ""})).startswith(
    "unknown option '--run'"
  )
  assert cli.unknown_key(["--config.run=x", "-3"], cli.ml_collections.ConfigDict({"run": ""})) is None


@pytest.mark.parametrize(
  "module,args",
  [
    ("experiments.haemsa_mosi", ["--config.model.widht=3"]),
    ("experiments.himoe_sweep", ["--config.sweep.ratse=0.1"]),
    ("experiments.euar_mosi", ["--config.seeds=abc"]),
  ],
)
def test_bad_input_is_one_line_and_exit_2_in_a_real_process(module, args, tmp_path):
  out = subprocess.run(
    [sys.executable, "-m", module, *args, f"--config.workdir={tmp_path / 'w'}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")
  assert not (tmp_path / "w").exists()


def test_user_errors_are_one_line_and_exit_2(capsys):
  def run(cfg):
    raise FileNotFoundError("no such dataset at /nowhere")

  assert cli.invoke(lambda: cli.ml_collections.ConfigDict({"debug": False}), run) == 2
  assert capsys.readouterr().err.splitlines()[0] == "error: no such dataset at /nowhere"

  def full(cfg):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device", "runs/x/latest")

  assert cli.invoke(lambda: cli.ml_collections.ConfigDict({"debug": False}), full) == 2
  assert "no space left on the device writing runs/x/latest" in capsys.readouterr().err

  def orbax_full(cfg):  # what orbax/tensorstore raises on a full disk (probe n_df_train): not an OSError
    raise ValueError(
      'RESOURCE_EXHAUSTED: Error writing "opt_state" in OCDBT database at local file "/mnt/t/wd/latest/0.orbax-'
      "checkpoint-tmp/d/abc\": Error writing file: No space left on device [os_error_code='28']"
    )

  assert cli.invoke(lambda: cli.ml_collections.ConfigDict({"debug": False}), orbax_full) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: no space left on the device writing /mnt/t/wd/latest/0.orbax-checkpoint-tmp/d/abc")

  def interrupted(cfg):
    raise KeyboardInterrupt

  assert cli.invoke(lambda: cli.ml_collections.ConfigDict({"debug": False}), interrupted) == 130
  assert "run the same command again to resume" in capsys.readouterr().err


def test_the_library_imports_no_script():
  """Nothing in jmoe/ imports tools/ or experiments/ (the layers run one way: library -> scripts)."""
  offenders = []
  for path in (ROOT / "jmoe").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module]
      offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if re.match(r"^(tools|experiments)(\.|$)", n)]
  assert not offenders, offenders


def test_data_sources_are_declared_once():
  from jmoe.data import sources

  names = sources.names()
  assert {"synthetic", "dir", "iemocap", "ravdess", "synthetic_iemocap", "deap", "dreamer"} <= set(names)
  dup = sources.Source("iemocap", lambda cfg: None, {}, "another loader")
  with pytest.raises(ValueError, match="registered twice"):
    sources.register(dup)
  assert "iemocap" in sources.describe() and "features=''" in sources.describe()
