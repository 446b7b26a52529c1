"""What many tests share: running the CLI in-process and checking a user error's one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prunus.cli import main


def run_cli(capsys, *argv):
    """``prunus ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    """A user mistake: exit code 2 and exactly one 'prunus: error:' line holding every fragment, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("prunus: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


REPO = Path(__file__).resolve().parents[1]


def start_prunus(*args) -> subprocess.Popen:
    """``python -m prunus ARGS`` as a real subprocess (so it can be SIGKILLed)."""
    return subprocess.Popen([sys.executable, "-m", "prunus", *map(str, args)], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when_exists(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (a checkpoint it just wrote); fail if it ended first."""
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed at {path}"
