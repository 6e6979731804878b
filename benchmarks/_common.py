"""Shared helpers of the benchmark scripts: provenance (commit, command, machine) and JSON output.

Nothing here imports JAX or PyTorch at module level, so every script can record its
provenance before (or without) importing the optional heavy dependencies.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

RESULTS_DIR = os.path.join("benchmarks", "results")
COMMIT_ENV = "BENCH_GIT_COMMIT"  # commit to record where the tree has no .git


def git_commit() -> dict:
    """``git rev-parse HEAD`` of the working directory and whether the tree is dirty.

    Returns:
      ``{"commit": sha or "unknown", "dirty": bool or None, "dirty_files": [...]}``; the
      dirty files (``git status --porcelain`` lines, at most 30) show *what* differed from
      the commit while the benchmark ran. Without git (or outside a repository) the
      commit is read from ``$BENCH_GIT_COMMIT``.
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        # A copy of the tree without .git (e.g. on a GPU machine): take the commit from
        # the environment, as the caller wrote it into the command.
        sha = os.environ.get(COMMIT_ENV, "unknown")
        return {"commit": sha, "dirty": None, "dirty_files": [], "source": f"${COMMIT_ENV}"}
    return {"commit": sha, "dirty": bool(status), "dirty_files": status[:30]}


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The exact command that ran, as ``python -m MODULE ARGS``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", "-m", module, *args])


def package_versions(names: Sequence[str]) -> dict:
    """Installed versions of ``names`` (None where a package is missing); never imports them."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def machine_info() -> dict:
    """Host facts: OS, Python, CPU count and model, current load average."""
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def jax_device_info() -> dict:
    """JAX's first device: kind, platform, device count (imports jax)."""
    import jax

    devs = jax.devices()
    return {
        "device_kind": devs[0].device_kind,
        "platform": devs[0].platform,
        "device_count": len(devs),
        "default_backend": jax.default_backend(),
    }


def jax_device_info_subprocess() -> dict:
    """:func:`jax_device_info` from a child process.

    A parent that only launches JAX programs must not initialise a GPU backend itself: JAX
    would claim 75% of the GPU memory in the parent, and the child would run short.
    """
    code = (
        "import json, jax; d = jax.devices(); "
        "print(json.dumps({'device_kind': d[0].device_kind, 'platform': d[0].platform, "
        "'device_count': len(d), 'default_backend': jax.default_backend()}))"
    )
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def device_slug(kind: str) -> str:
    """File-name-safe, lower-case form of a device kind: ``"NVIDIA H100 80GB HBM3"`` -> ``h100``.

    Known accelerator names are shortened to their model (h100, h200, a100, ...); anything
    else becomes its lower-case alphanumerics joined by ``_`` (``"cpu"`` stays ``cpu``).
    """
    k = kind.lower()
    m = re.search(r"\b([ahlvtb]\d{2,3}[a-z]?|rtx\s?\d{4}|tpu\s?v\d\w*)\b", k)
    if m:
        return re.sub(r"\s+", "", m.group(1))
    return re.sub(r"[^a-z0-9]+", "_", k).strip("_") or "device"


def provenance(module: str, packages: Sequence[str], argv: Sequence[str] | None = None) -> dict:
    """Everything a result file records about how it was made."""
    return {
        "command": command_line(module, argv),
        "git": git_commit(),
        "versions": package_versions(packages),
        "machine": machine_info(),
    }


def write_json(path: str, result: dict[str, Any]) -> str:
    """Writes ``result`` (indent 1) to ``path``, creating its folder; returns the path."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
        f.write("\n")
    return path


def _json_default(obj: Any) -> Any:
    """NumPy scalars and other stragglers -> plain Python for ``json.dump``."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def parse_int_list(text: str) -> list[int]:
    """``"1,2,5"`` -> ``[1, 2, 5]``; ``"1-4"`` -> ``[1, 2, 3, 4]`` (ranges allowed)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def parse_str_list(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]
