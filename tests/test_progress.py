"""Progress bars: on a terminal for long work, never in pipes or with --quiet; no stray library output."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from interp.bench.startup import _env


def run(argv, *, tty: bool) -> tuple[str, str]:
    """Run ``interp argv`` with stderr on a pseudo-terminal (``tty``) or a pipe; (stdout, stderr)."""
    cmd = [sys.executable, "-m", "interp.cli", *argv]
    if not tty:
        out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
        assert out.returncode == 0, out.stderr
        return out.stdout, out.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=600) == 0
    os.close(master)
    return stdout, b"".join(chunks).decode(errors="replace")


SCAN = ["ablate", "--scan", "--by", "layer"]


PATCH = ["patch", "--clean", "a b c d a b c", "--corrupted", "a b c d e f g"]


@pytest.mark.parametrize("argv, bar", [(SCAN, "ablate (zero)"), (PATCH, "patch (z)")])
def test_a_bar_on_a_terminal_nothing_in_a_pipe(planted_dir, argv, bar):
    argv = [*argv, "--model", planted_dir]
    _, on_tty = run(argv, tty=True)
    assert bar in on_tty and "100%" in on_tty
    stdout, piped = run(argv, tty=False)
    assert piped == "" and bar not in stdout


def test_quiet_silences_the_bar_on_a_terminal(planted_dir):
    _, on_tty = run([*SCAN, "--model", planted_dir, "--quiet"], tty=True)
    assert on_tty == ""


def test_everyday_commands_write_nothing_to_stderr(planted_dir):
    """No library warnings, load reports or progress bars: stderr is empty in a pipe."""
    for argv in (["heads"], ["lens", "a b c"], ["ov"], ["info"], ["heads", "--model", planted_dir]):
        _, err = run(argv, tty=False)
        assert err == "", (argv, err)
