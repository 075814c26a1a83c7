"""What every benchmark script shares: the repository on ``sys.path``, offline hub settings, the machine and
commit a result was measured on, and atomic result files."""

import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def git_commit():
    """The commit the code was at, with ``+dirty`` when the work tree had changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _recbole_version():
    try:
        import recbole
        return recbole.__version__
    except (ImportError, AttributeError):
        return None


def machine_info():
    """The machine, library versions, load, commit and command of a benchmark run (every script's result files)."""
    import peft
    import psutil
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "cuda": torch.cuda.is_available(),
            "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "recbole": _recbole_version(), "load_average_1m_at_start": round(os.getloadavg()[0], 2),
            "commit": git_commit(),
            "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}


def config_settings(parser, items):
    """``{key: value}`` of ``--set KEY=VALUE`` arguments (values parsed as YAML); a malformed one is the parser's
    one-line error."""
    import yaml

    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    return settings
