"""A cluster in a box for tests and the fault matrix: a real S3 endpoint and a real multi-node Ray on 127.0.0.1.

* :class:`S3Endpoint`: moto's server mode (the S3 stand-in Ray's, pandas' and obstore's own
  test suites use) on a free loopback port, with dummy credentials, stopped by pid.
* :class:`RayBox`: ``ray start --head`` (0 CPUs) plus worker nodes (``ray start --address``),
  each node in its own working directory and temp dir, so a relative or node-local path is
  different on every node; every node is stopped by its process group (never ``ray stop``,
  which would kill every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VENV_BIN = str(Path(sys.executable).parent)
REPO_ROOT = Path(__file__).resolve().parents[2]  # where ``python -m benchmarks...`` finds the package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class S3Endpoint:
    """``moto_server`` on 127.0.0.1; :attr:`env` points AWS clients (pyarrow included) at it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.url, "AWS_EC2_METADATA_DISABLED": "true"}
        self.log = open(workdir / "moto.log", "w")
        self.proc = subprocess.Popen([os.path.join(VENV_BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: _listening(self.port), 30, "the S3 endpoint")

    def filesystem(self, **options):  # -> pyarrow.fs.S3FileSystem
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                                 endpoint_override=f"127.0.0.1:{self.port}", scheme="http", **options)

    def create_bucket(self, name: str) -> None:
        self.filesystem(allow_bucket_creation=True).create_dir(name)

    def stop(self) -> None:
        _kill_group(self.proc)
        self.log.close()


class RayBox:
    """A head with 0 CPUs and ``workers`` nodes of ``cpus`` CPUs each, all on 127.0.0.1."""

    def __init__(self, root: Path, env: dict[str, str], workers: int = 3, cpus: int = 1) -> None:
        self.root, self.port, self.dashboard_port = root, free_port(), free_port()
        # as clusters/README.md asks of every node: keep idle decode workers (jigclu/ray_session.py)
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_num_workers_soft_limit": str(2 * cpus + 8),
                    "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []
        self.temps: list[Path] = []
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        try:
            self._start("head", ["--head", "--num-cpus=0", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                                 "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                 f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"])
            _wait(lambda: self._cpus() is not None, 60, "the Ray head")
            for i in range(workers):
                self._start(f"worker{i}", [f"--address={self.address}", f"--num-cpus={cpus}"])
            _wait(lambda: (self._cpus() or 0) >= workers * cpus, 90, f"{workers} worker nodes")
            self.wait_for_job_agent()
        except BaseException:
            self.stop()  # a cluster that did not come up leaves no process behind
            raise

    def _start(self, name: str, args: list[str]) -> None:
        workdir = self.root / name
        workdir.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes
        temp = Path(tempfile.mkdtemp(prefix=f"jb-{name}-", dir="/tmp"))
        self.temps.append(temp)
        log = open(self.root / f"{name}.log", "w")
        # every node on one machine needs its own agent ports (the defaults would clash with each
        # other and with any other Ray on the machine)
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        cmd = [os.path.join(VENV_BIN, "ray"), "start", *args, *ports, "--block", f"--temp-dir={temp}",
               "--object-store-memory=200000000", "--disable-usage-stats"]
        self.nodes.append(subprocess.Popen(cmd, cwd=workdir, env={**self.env, "TMPDIR": str(temp)},
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _cpus(self) -> float | None:
        out = subprocess.run([os.path.join(VENV_BIN, "ray"), "status", f"--address={self.address}"],
                             env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            return None
        for line in out.stdout.splitlines():
            if line.strip().endswith(" CPU") and "/" in line:
                return float(line.strip().split("/")[1].split()[0])
        return 0.0  # up, without CPUs (the head)

    def ray(self, *args: str, cwd: Path | None = None, timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``ray <args>`` against this cluster (job submit/stop/status...)."""
        out = subprocess.run([os.path.join(VENV_BIN, "ray"), *args], cwd=cwd, env={**self.env, **(env or {})},
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"ray {' '.join(args[:3])} failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                                 f"{out.stderr[-3000:]}")
        return out

    def actors(self) -> list[Any]:
        from ray.util.state import list_actors

        return list_actors(address=self.dashboard, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)

    def wait_for_job_agent(self, timeout: float = 120) -> None:
        """The head's job agent registers a while after the node: wait until it takes a job."""
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.dashboard)

        def ready() -> bool:
            try:
                client.submit_job(entrypoint="true", submission_id=f"probe-{time.time_ns()}")
                return True
            except RuntimeError as exc:
                if "No available agent" in str(exc):
                    return False
                raise

        _wait(ready, timeout, "the head's job agent", interval=2)

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            _kill_group(proc)
        for i, temp in enumerate(self.temps):  # keep the nodes' logs beside the test's files
            try:
                shutil.copytree(temp / "session_latest" / "logs", self.root / f"logs-{i}", dirs_exist_ok=True,
                                ignore_dangling_symlinks=True, ignore=shutil.ignore_patterns("*.sock", "events"))
            except OSError:
                pass  # no logs to keep: the node never started
            shutil.rmtree(temp, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a process and everything it started (it leads its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of ``target_port``, in its own process.

    :meth:`stop` kills it (new connections are refused, open ones are cut) and :meth:`start`
    brings it back on the same port: an endpoint outage that keeps the endpoint's data.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.harness.cluster_box", "proxy", str(self.port),
                                      str(self.target_port)], cwd=REPO_ROOT, start_new_session=True)
        _wait(lambda: _listening(self.port), 30, "the TCP proxy", interval=0.1)

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _serve_proxy(port: int, target: int) -> None:
    import threading

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target))
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def raylet_of(pid: int) -> int:
    """The raylet that started worker process ``pid`` (its nearest ``raylet`` ancestor)."""
    import psutil

    proc = psutil.Process(pid)
    while proc is not None:
        if "raylet" in proc.name():
            return proc.pid
        proc = proc.parent()
    raise LookupError(f"no raylet above pid {pid}")


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    _serve_proxy(int(sys.argv[2]), int(sys.argv[3]))
