"""README's set-up commands and CI stay in step."""

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
  blocks = _bash_blocks((ROOT / "README.md").read_text())
  assert any(b.strip().endswith("python -m experiments.euar_mosi") and "pip install" in b for b in blocks)
