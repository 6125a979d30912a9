"""An interactive jail on a real terminal (tmux): job control in bash, Ctrl-C
and Ctrl-Z reaching the foreground job, full-screen programs, window resizes."""
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from conftest import REPO

import rootfs

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI installs it)")


class Screen:
    """A tmux session running one umlrun jail, driven by keys, read as text."""

    def __init__(self, root, shell: str):
        self.name = f"umlrun-test-{uuid.uuid4().hex[:8]}"
        cmd = f"{sys.executable} -m umlrun run -r {root} -- {shell}; echo EXITED $?; sleep 60"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "100", "-y", "30", "-c", str(REPO),
                        cmd], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def line(self, text: str) -> None:
        self.keys(text, "Enter")

    def text(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-t", self.name, "-p"], capture_output=True, text=True,
                              check=True).stdout

    def wait_for(self, what: str, timeout: float = 15) -> str:
        """Until `what` shows. It must be text only the output can hold: the
        command line typed is on the screen too (hence markers like $((1+1)))."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            screen = self.text()
            if what in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{what!r} never showed; the screen:\n{self.text()}")

    def resize(self, cols: int, rows: int) -> None:
        subprocess.run(["tmux", "resize-window", "-t", self.name, "-x", str(cols), "-y", str(rows)], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def screen():
    opened = []

    def open_(root, shell):
        s = Screen(root, shell)
        opened.append(s)
        return s
    yield open_
    for s in opened:
        s.close()


def test_job_control_in_bash(screen):
    s = screen(rootfs.ensure("debian"), "bash")
    s.wait_for("root@umlrun:/#")
    s.line("echo pid=$$")
    s.wait_for("pid=1")
    s.line("sleep 100")
    time.sleep(0.5)
    s.keys("C-c")                                   # Ctrl-C interrupts the foreground job
    s.line("echo status=$?")
    s.wait_for("status=130")
    s.line("sleep 100")
    time.sleep(0.5)
    s.keys("C-z")                                   # Ctrl-Z stops it
    s.wait_for("Stopped")
    s.line("jobs -l; echo listed-$((1+1))")
    s.wait_for("listed-2")
    s.line("bg; jobs; echo bg-$((1+1))")
    screen_text = s.wait_for("bg-2")
    assert "Running" in screen_text
    s.line("fg")                                    # and fg brings it back to the terminal
    time.sleep(0.5)
    s.keys("C-c")
    s.line("echo after-fg=$?")
    s.wait_for("after-fg=130")
    s.line("exit 5")
    s.wait_for("EXITED 5")


def test_full_screen_programs_and_resize(screen, busybox_root):
    s = screen(busybox_root, "sh")
    s.wait_for("/ #")
    s.line("stty size")
    s.wait_for("30 100")
    s.line("vi /tmp/note")
    time.sleep(0.5)
    s.keys("i", "written in vi", "Escape")
    s.wait_for("written in vi")
    s.resize(80, 20)                                # the window shrinks under vi
    time.sleep(0.3)
    s.line(":wq")
    s.line("cat /tmp/note; stty size")
    s.wait_for("20 80")
    s.wait_for("written in vi")
    s.line("top")
    s.wait_for("PID")
    top = s.text()
    assert "top" in top and "sh" in top
    s.keys("q")
    s.line("echo back-$((1+1))")
    s.wait_for("back-2")
    s.line("exit")
    s.wait_for("EXITED 0")
