"""README's set-up commands and CI stay in step, and the main command resolves to a runnable module."""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
  blocks, inside, cur = [], False, []
  for line in text.splitlines():
    if line.startswith("```bash"):
      inside, cur = True, []
    elif line.startswith("```") and inside:
      inside = False
      blocks.append("\n".join(cur))
    elif inside:
      cur.append(line)
  return blocks


def test_ci_runs_exactly_the_readme_test_command():
  blocks = _bash_blocks((ROOT / "README.md").read_text())
  test_cmd = next(b for b in blocks if "pytest" in b and "pip install" in b).strip()
  ci_lines = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
  assert ci_lines == [test_cmd]


def test_readme_main_command_runs_euar_mosi():
  readme = (ROOT / "README.md").read_text()
  blocks = [b.strip() for b in _bash_blocks(readme)]
  main = [b for b in blocks if b.endswith("python -m experiments.euar_mosi") and "pip install" in b]
  assert len(main) == 1, "README lost its one-line install-and-run command"
  module = main[0].rsplit("python -m ", 1)[1]
  # The command resolves: the module exists, builds its config, and runs under the one command line.
  assert importlib.util.find_spec(module) is not None
  mod = importlib.import_module(module)
  cfg = mod.get_config()
  assert cfg.data.source == "synthetic", "README says the main job runs on synthetic data"
  assert f"`{cfg.workdir}`" in readme, f"README does not say the run writes to {cfg.workdir}"
  assert "cli.main(get_config, run)" in Path(mod.__file__).read_text()
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
    [sys.executable, "-m", module, "--help"],
    check=False,
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "workdir:" in out.stdout and "data sources" in out.stdout
