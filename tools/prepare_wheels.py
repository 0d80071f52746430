"""Wheels jmoe needs beyond the GPU device image, downloaded here into ``.whl/`` (git-ignored) for offline install.

The device machine (H100/H200, image 'cuda': Python 3.12, JAX 0.11 with CUDA 13, flax, optax, orbax, chex, absl,
h5py, matplotlib, tqdm, scipy, numpy, torch, ...) reaches no package registry. What jmoe's pyproject dependencies
add to that image travels as wheels: ``ml_collections``, ``tensorflow-datasets`` with its pure-Python
dependencies, and ``array_record``. Run here, once, before the device run::

    python -m tools.prepare_wheels            # pip download --only-binary=:all: for cp312 manylinux x86_64

The device suite's first step installs them there (``pip install --no-index --find-links .whl ...``), so the one
command the lead passes to the device tool (``run``, carry ``[".whl"]``, timeout_s 600) is::

    python3 -m tools.device_suite --out $OUT/suite --budget-s 450

(`.whl` must be named in ``carry``: it is git-ignored and would not travel otherwise.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
# The device image's Python (KINDS.md: python3 is Python 3.12.3 at /opt/torch/.venv/bin/python3).
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
# pyproject dependencies the image lacks, and the pure-Python dependencies of tensorflow-datasets it lacks too
# (the image has absl-py, numpy, protobuf, requests, tqdm, wrapt, psutil, pyarrow, etils, h5py, matplotlib).
NEEDED = (
  "ml_collections>=0.1.1",
  "tensorflow-datasets>=4.9.6",
  "array_record>=0.5",
  "dm-tree",
  "immutabledict",
  "simple_parsing",
  "termcolor",
  "toml",
  "docstring-parser",
  "googleapis-common-protos",
  "tensorflow-metadata",
  "einops",
)


# Pure-Python packages published as source only: built here into py3-none-any wheels (platform-independent).
SOURCE_ONLY = ("promise",)


def build_command(dest: Path = WHEELS, packages=SOURCE_ONLY) -> list[str]:
  """``pip wheel`` of the source-only packages into pure-Python wheels the device installs offline."""
  return [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dest), *packages]


def download_command(dest: Path = WHEELS, python: str = DEVICE_PYTHON, packages=NEEDED) -> list[str]:
  """``pip download`` of binary wheels for the device's Python and platform, without dependency resolution
  (``--no-deps``: the image already holds the heavy ones; NEEDED lists the rest)."""
  cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--dest", str(dest)]
  for plat in DEVICE_PLATFORMS:
    cmd += ["--platform", plat]
  cmd += ["--platform", "any", "--python-version", python, "--implementation", "cp", *packages]
  return cmd


def install_command(wheels: Path = WHEELS, packages=NEEDED, python: str | None = None) -> list[str] | None:
  """``pip install --no-index --find-links .whl`` of NEEDED (no dependency resolution), or None when the folder
  holds no wheels."""
  if not wheels.is_dir() or not any(wheels.glob("*.whl")):
    return None
  names = [p.split(">")[0].split("=")[0].split("<")[0] for p in (*packages, *SOURCE_ONLY)]
  return [python or sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels)] + [
    n for n in names if _has_wheel(wheels, n)
  ]


def _has_wheel(wheels: Path, name: str) -> bool:
  norm = name.lower().replace("-", "_")
  return any(w.name.lower().startswith(norm + "-") for w in wheels.glob("*.whl"))


def install(wheels: Path = WHEELS) -> str:
  """Install the carried wheels (the device suite's first step); returns a one-line status."""
  cmd = install_command(wheels)
  if cmd is None:
    return f"no wheels in {wheels}: nothing installed (run python -m tools.prepare_wheels here first)"
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    return f"wheel install failed ({proc.returncode}): {proc.stderr.strip()[-400:]}"
  return f"installed {len(cmd) - 8} wheels from {wheels}"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dest", default=str(WHEELS))
  ap.add_argument("--python-version", default=DEVICE_PYTHON)
  ap.add_argument("--print", action="store_true", help="print the pip command instead of running it")
  a = ap.parse_args(argv)
  cmd = download_command(Path(a.dest), a.python_version)
  print(" ".join(cmd))
  if a.print:
    return 0
  Path(a.dest).mkdir(parents=True, exist_ok=True)
  rc = subprocess.run(cmd, check=False).returncode
  return rc or subprocess.run(build_command(Path(a.dest)), check=False).returncode


if __name__ == "__main__":
  sys.exit(main())
