"""A data owner and a key broker on this machine, driven through the ``blindfold``
command, for the bridge's tests, its benchmark and trying it out.

Everything here is the owner's side (key store, sealing, the broker, opening the sealed
model): on a real deployment it runs on the owner's premises, not in the cloud. The
broker listens on loopback with TLS and releases keys to the ``sample`` TEE, which
proves nothing: it is for tests only.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Optional


def find_blindfold() -> str:
    """The ``blindfold`` binary: ``$BLINDFOLD_BIN``, else on ``$PATH``, else this
    repository's ``target/{debug,release}/blindfold``."""
    env = os.environ.get("BLINDFOLD_BIN")
    if env:
        return env
    on_path = shutil.which("blindfold")
    if on_path:
        return on_path
    root = Path(__file__).resolve().parents[2]
    for profile in ("debug", "release"):
        p = root / "target" / profile / "blindfold"
        if p.exists():
            return str(p)
    raise FileNotFoundError(
        "no blindfold binary: build it (cargo build -p blindfold) or set BLINDFOLD_BIN"
    )


class LocalOwner:
    """An owner's key store, sealed datasets and a running broker, all under ``workdir``.

    Use as a context manager: the broker stops on exit.
    """

    def __init__(self, workdir, bin: Optional[str] = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin = bin or find_blindfold()
        self.env = dict(os.environ, BLINDFOLD_HOME=str(self.dir / "home"))
        self.env.pop("BLINDFOLD_PASSPHRASE", None)
        self.server: Optional[subprocess.Popen] = None
        self.url = ""
        self.run("keys", "init")
        self.run("broker", "init", "--dir", "broker")
        self.ca_cert = str(self.dir / "broker" / "tls-cert.pem")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [self.bin, *args], cwd=self.dir, env=self.env, capture_output=True, text=True
        )
        if check and p.returncode != 0:
            raise RuntimeError(
                f"blindfold {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}"
            )
        return p

    @property
    def public_key(self) -> str:
        for line in self.run("keys", "show").stdout.splitlines():
            if line.startswith("identity"):
                return line.rsplit(" ", 1)[1]
        raise RuntimeError("keys show printed no identity")

    def seal(self, input, out: str, *extra: str) -> str:
        """Seals ``input`` into ``workdir/out``; returns the dataset id."""
        return self.run("seal", str(input), "--out", out, "-q", *extra).stdout.strip()

    def start_broker(self) -> str:
        # Port 0: the kernel picks a free port and the broker prints it, so no other
        # process can take the port between a probe and the bind.
        self.server = subprocess.Popen(
            [self.bin, "broker", "serve", "--dir", "broker", "--listen", "127.0.0.1:0"],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found: "queue.Queue[Optional[str]]" = queue.Queue()

        def drain(stream) -> None:
            # Reads the broker's stderr to its end, so that it never blocks on a full pipe.
            sent = False
            for line in stream:
                if not sent and line.startswith("broker listening on "):
                    found.put(line[len("broker listening on "):].strip())
                    sent = True
            if not sent:
                found.put(None)

        threading.Thread(target=drain, args=(self.server.stderr,), daemon=True).start()
        try:
            url = found.get(timeout=60)
        except queue.Empty:
            url = None
        if url is None:
            raise RuntimeError("the broker did not start")
        self.url = url
        return self.url

    def register(self, sealed: str, policy: str) -> None:
        """Registers the sealed dataset at ``workdir/sealed`` with a TOML policy."""
        path = self.dir / f"policy-{sealed.replace('/', '_')}.toml"
        path.write_text(policy)
        self.run(
            "broker", "register", sealed, "--policy", str(path),
            "--broker", self.url, "--broker-dir", "broker",
        )

    def open_model(self, model_dest: str, out: str, dataset_id: Optional[str]) -> str:
        """``blindfold model open``: decrypts a sealed model; returns what it printed."""
        args = ["model", "open", model_dest, "--out", out]
        args += ["--dataset", dataset_id] if dataset_id else ["--danger-unauthenticated"]
        return self.run(*args).stdout

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)
            self.server = None

    def __enter__(self) -> "LocalOwner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
