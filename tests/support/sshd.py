"""A throwaway OpenSSH server on loopback for the ssh:// device tests: temp host key, key-only login.

Each "board" is one client key whose authorized_keys entry forces `board/NAME/enter.sh`: it puts
`board/NAME/bin` (a `python3` of the test's choosing) first on PATH, points TMPDIR at the board's own
folder (so a test can see what was left behind), logs the command it was asked to run, and runs it
with /bin/sh -c, as sshd would. Debian's sshd runs as root here; it needs /run/sshd (privilege
separation), which a container without systemd lacks: created when we are root.

StrictModes is off: pytest's temp folders sit under /tmp, whose world-writable (sticky) mode makes
sshd refuse every authorized_keys file below it ("bad ownership or modes for directory /tmp").
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


class SSHDUnavailable(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


class LoopbackSSHD:
    def __init__(self, root: Path, boards: dict[str, list[str]]):
        """`boards`: name -> the argv prefix its `python3` runs (e.g. the emulated aarch64 Python)."""
        if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
            raise SSHDUnavailable(
                f"{SSHD} or the ssh client is not installed (scripts/install_system.sh installs them)"
            )
        if not Path("/run/sshd").is_dir():
            if os.geteuid() != 0:
                raise SSHDUnavailable("/run/sshd (sshd's privilege separation folder) is missing and we are not root")
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.root, self.user, self.port = root, getpass.getuser(), _free_port()
        root.mkdir(parents=True, exist_ok=True)
        _keygen(root / "host_key")
        host_pub = (root / "host_key.pub").read_text().split()
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        _keygen(root / "other_host_key")  # a different key under the same name: a board that is not the one
        other = (root / "other_host_key.pub").read_text().split()
        self.wrong_known_hosts = root / "wrong_known_hosts"
        self.wrong_known_hosts.write_text(f"[127.0.0.1]:{self.port} {other[0]} {other[1]}\n")
        lines = []
        self.keys, self.tmpdirs, self.logs = {}, {}, {}
        for name, python in boards.items():
            board = root / "board" / name
            (board / "bin").mkdir(parents=True)
            (board / "tmp").mkdir()
            python3 = board / "bin" / "python3"
            python3.write_text(f'#!/bin/sh\nexec {shlex.join(python)} "$@"\n')
            python3.chmod(0o755)
            enter = board / "enter.sh"
            enter.write_text(
                "#!/bin/sh\n"
                f"PATH={shlex.quote(str(board / 'bin'))}:/usr/bin:/bin; export PATH\n"
                f"TMPDIR={shlex.quote(str(board / 'tmp'))}; export TMPDIR\n"
                f"printf '%s\\n' \"$SSH_ORIGINAL_COMMAND\" >> {shlex.quote(str(board / 'commands.log'))}\n"
                'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n'
            )
            enter.chmod(0o755)
            key = root / f"key_{name}"
            _keygen(key)
            forced = str(enter).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(
                f'command="{forced}",no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty '
                + (root / f"key_{name}.pub").read_text().strip()
            )
            self.keys[name], self.tmpdirs[name], self.logs[name] = key, board / "tmp", board / "commands.log"
        (root / "authorized_keys").write_text("\n".join(lines) + "\n")
        config = root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {root / 'host_key'}",
                    "PidFile none",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "PrintMotd no",
                    "LogLevel VERBOSE",
                    "MaxStartups 50",
                    "MaxSessions 50",
                ]
            )
            + "\n"
        )
        self.log = root / "sshd.log"
        test = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True)
        if test.returncode != 0:
            raise SSHDUnavailable(f"sshd rejects its test config: {test.stderr.strip()}")
        self._log_file = open(self.log, "w")
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SSHDUnavailable(f"sshd exited {self.proc.returncode}: {self.log.read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise SSHDUnavailable(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log.read_text()[-500:]}")

    def spec(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def options(self, board: str, known_hosts: Path | None = None) -> list[str]:
        """bench/device command-line options to reach `board`."""
        return ["--known-hosts", known_hosts or self.known_hosts, "--identity", self.keys[board]]

    def commands(self, board: str) -> list[str]:
        log = self.logs[board]
        return log.read_text().splitlines() if log.exists() else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
