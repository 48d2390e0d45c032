"""A sweep's Optuna study on a real PostgreSQL server (``study_storage: postgresql://...``), end to end.

The test starts its own server (Debian's ``postgresql`` package, installed by ``make setup``; the test
skips without it) on 127.0.0.1 and a free port, as an unprivileged user (PostgreSQL refuses root),
with a password-protected role. The sweep file's URL holds no password: the driver gets it from
libpq's ``PGPASSWORD``. ``jigclu tune`` runs as a child process with its own local Ray, is SIGKILLed
(its whole process group) mid-sweep after a trial has finished, and ``--resume`` finishes it; the
study is then read from PostgreSQL directly and compared with ``jigclu report --format json``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import pwd
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "tune" / "configs" / "pretrain_digits.yaml"
# the fault matrix's sweep (benchmarks/faults/faults_ray.py SWEEP_ARGS): digits, 4 trials x 3 epochs x 4 steps
SWEEP_ARGS = ["config.train.epochs=3", "config.train.steps_per_epoch=4", "config.data.batch_size=32",
              "config.model.width=8", "config.monitor.train_limit=300", "config.monitor.test_limit=150",
              "num_samples=4", "max_concurrent=1", "scheduler.type=none", "time_budget_s=null"]
ROLE, DATABASE = "jigclu", "studies"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binaries() -> Path | None:
    """The directory holding ``postgres`` and ``initdb`` (on PATH, else Debian's newest), or None."""
    found = shutil.which("postgres")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted((Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")),
                         key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, reverse=True)
    return next((d for d in candidates if (d / "initdb").is_file()), None)


class PostgresServer:
    """A throwaway PostgreSQL on 127.0.0.1: data and unix socket in a temp dir owned by the server's
    user, a login role with a random password, one database it owns; stopped by pid."""

    def __init__(self, bindir: Path, user: pwd.struct_passwd | None) -> None:
        self.bindir, self.user, self.proc = bindir, user, None
        self.password, self.port = secrets.token_hex(12), free_port()
        self.root = Path(tempfile.mkdtemp(prefix="jigclu-pg-"))  # under /tmp: the server's user reaches it
        if user is not None:
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run_as(self) -> dict:
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}

    def start(self) -> None:
        import psycopg
        from psycopg import sql

        init = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.root / "data"), "-U", "postgres",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8",
                               "--no-sync"], cwd=self.root, capture_output=True, text=True, timeout=120,
                              **self._run_as())
        assert init.returncode == 0, f"initdb failed: {init.stderr[-2000:]}"
        self.log = self.root / "server.log"
        with open(self.log, "w") as log:
            if self.user:
                os.chown(self.log, self.user.pw_uid, self.user.pw_gid)
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.root / "data"), "-k", str(self.root),
                 "-c", "listen_addresses=127.0.0.1", "-p", str(self.port), "-F", "-c", "shared_buffers=16MB"],
                cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                **self._run_as())
        deadline = time.time() + 60
        while True:  # the bootstrap superuser over the unix socket (trust); TCP needs a password
            try:
                admin = psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres",
                                        autocommit=True, connect_timeout=2)
                break
            except psycopg.OperationalError:
                assert self.proc.poll() is None and time.time() < deadline, \
                    f"postgres did not start: {self.log.read_text()[-2000:]}"
                time.sleep(0.1)
        with admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE),
                                                                             sql.Literal(self.password)))
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE),
                                                                        sql.Identifier(ROLE)))

    def url(self, port: int | None = None) -> str:
        """What a sweep file says: no password (PGPASSWORD gives it)."""
        return f"postgresql://{ROLE}@127.0.0.1:{port or self.port}/{DATABASE}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), then SIGKILL by pid: the postmaster's group and each
        backend (backends call setsid, so they are not in its group)."""
        import psutil

        if self.proc is not None and self.proc.poll() is None:
            children = psutil.Process(self.proc.pid).children(recursive=True)
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install -e '.[test]'")
    bindir = server_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (postgres, initdb): make setup installs Debian's postgresql")
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
    server = PostgresServer(bindir, user)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def jigclu(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """``jigclu ARGS`` in a session of its own (its Ray included); output captured, or to ``log``."""
    out = open(log, "w") if log else subprocess.PIPE
    try:
        return subprocess.Popen([sys.executable, "-m", "jigclu.cli", *args], cwd=REPO, env=env, text=True,
                                stdout=out, stderr=subprocess.STDOUT if log else out, start_new_session=True)
    finally:
        if log:
            out.close()


def saved_state(sweep_dir: Path) -> dict[str, tuple[str, int]] | None:
    """Tune's saved experiment state, ``{trial id: (status, epochs)}``, when its searcher state is of the
    same save (it counts as many trials); None while either is missing or being written."""
    import pickle

    try:
        [experiment] = sweep_dir.glob("experiment_state-*.json")
        [generator] = sweep_dir.glob("search_gen_state-*.json")  # a pickle, despite its name
        trials = {}
        for trial_json, meta_json in json.loads(experiment.read_text())["trial_data"]:
            trial, meta = json.loads(trial_json), json.loads(meta_json)
            trials[trial["trial_id"]] = (trial["status"], int((meta.get("last_result") or {})
                                                              .get("training_iteration") or 0))
        counter = pickle.loads(generator.read_bytes())["counter"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError):
        return None
    return trials if counter == len(trials) else None


def study_states(conn, name: str) -> dict[str, int]:
    """Trials of the study ``name`` by state, straight from PostgreSQL (Optuna's own tables)."""
    try:
        rows = conn.execute("SELECT t.state::text, count(*) FROM trials t JOIN studies s USING (study_id) "
                            "WHERE s.study_name = %s GROUP BY 1", (name,)).fetchall()
    except Exception:  # the tables are not there yet
        return {}
    return dict(rows)


def frozen(trial) -> tuple:
    return trial.number, trial.state.name, trial.params, trial.value, trial.datetime_complete


def same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-12) if isinstance(a[k], float) else a[k] == b[k] for k in a)


def one_line_error(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and not out.strip(), (proc.returncode, out, err)
    return lines[0]


def kill_moment(driver: subprocess.Popen, sweep_dir: Path, conn, log: Path) -> list[str]:
    """Freeze the driver (its whole group) until Tune's saved state, the trial directories and the study
    agree on one or more finished trials and one running trial that has reported, and nothing was asked
    ahead; returns the finished trials' ids with the driver still frozen. (Killed between the searcher's
    ask and Tune's save, a driver leaves an Optuna trial no Tune trial owns: the resumed sweep marks it
    FAIL, by design, and the study would hold 5 trials.)"""
    deadline = time.time() + 300
    while True:
        assert driver.poll() is None, f"the sweep ended before it could be killed: {log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no moment to kill the driver came; saved: {saved_state(sweep_dir)}"
        os.killpg(driver.pid, signal.SIGSTOP)
        saved = saved_state(sweep_dir) or {}
        done = sorted(t for t, (status, epochs) in saved.items() if status == "TERMINATED" and epochs == 3)
        running = [t for t, (status, epochs) in saved.items() if status == "RUNNING" and 1 <= epochs < 3]
        if done and len(running) == 1 and len(saved) == len(done) + 1 and \
                {p.name for p in sweep_dir.glob("trial-*")} == {f"trial-{t}" for t in saved} and \
                study_states(conn, sweep_dir.name) == {"COMPLETE": len(done), "RUNNING": 1}:
            return done
        os.killpg(driver.pid, signal.SIGCONT)
        time.sleep(0.2)


@pytest.mark.slow  # about 90 s on 2 CPU cores
@pytest.mark.faults  # a fault row (a SIGKILLed sweep driver): in `make faults`, left out of `make test` (its budget)
@pytest.mark.ray  # the sweep starts its own local Ray in the child process
def test_sweep_study_on_postgres_survives_a_killed_driver(postgres, tmp_path, monkeypatch):
    import optuna
    import psycopg

    env = {**os.environ, "PGPASSWORD": postgres.password, "PGPASSFILE": str(tmp_path / "no-pgpass"),
           "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    base = ["tune", "--no-progress", "--no-report", "--config", str(SWEEP), *SWEEP_ARGS, f"output_dir={tmp_path}"]
    args = [*base, "name=shared", f"study_storage={postgres.url()}"]
    sweep_dir, log = tmp_path / "shared", tmp_path / "driver.log"
    driver = jigclu(*args, env=env, log=log)
    # meanwhile, a wrong password and a server that is not there: one line, exit 2, before anything starts
    wrong = jigclu(*base, "name=wrong", f"study_storage={postgres.url()}", env={**env, "PGPASSWORD": "wrong-pw"})
    absent = jigclu(*base, "name=absent", f"study_storage={postgres.url(port=free_port())}", env=env)
    try:
        for proc, name, why in ((wrong, "wrong", "password authentication failed"), (absent, "absent", "refused")):
            line = one_line_error(proc)
            assert line.startswith(f"jigclu: error: study_storage postgresql://{ROLE}@127.0.0.1:"), line
            assert why in line and "PGPASSWORD" in line and "Traceback" not in line, line
            assert "wrong-pw" not in line and postgres.password not in line, line
            assert not (tmp_path / name / "sweep.yaml").exists() and not list(tmp_path.glob(f"{name}/trial-*"))
        # the sweep, SIGKILLed mid-sweep once a trial has finished
        with psycopg.connect(host="127.0.0.1", port=postgres.port, user=ROLE, dbname=DATABASE,
                             password=postgres.password, autocommit=True) as conn:
            found = kill_moment(driver, sweep_dir, conn, log)
    finally:
        for proc in (driver, wrong, absent):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    results_before = {t: (sweep_dir / f"trial-{t}" / "result.json").read_text() for t in found}

    # read the study as another driver would: the same URL, the password from the environment
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    url = postgres.url().replace("postgresql://", "postgresql+psycopg://")  # SQLAlchemy 2.0 would pick psycopg2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before = optuna.load_study(study_name="shared", storage=url).trials
    complete_before = [frozen(t) for t in before if t.state.name == "COMPLETE"]
    assert len(complete_before) == len(found) >= 1

    resumed = jigclu(*args, "--resume", env=env)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, (out, err)

    # the study in PostgreSQL: 4 trials, all complete; those finished before the kill untouched
    trials = optuna.load_study(study_name="shared", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, [frozen(t) for t in trials]
    assert [frozen(t) for t in trials if t.number in {c[0] for c in complete_before}] == complete_before
    # ... and the sweep's own trials: the finished ones kept, none run twice
    assert len(list(sweep_dir.glob("trial-*"))) == 4 and not list(sweep_dir.glob(".orphan-trial-*"))
    assert {t: (sweep_dir / f"trial-{t}" / "result.json").read_text() for t in found} == results_before

    # every Optuna value is the value the report shows for the trial with the same parameters
    report = subprocess.run([sys.executable, "-m", "jigclu.cli", "report", str(sweep_dir), "--format", "json",
                             "--top", "0", "--no-importance"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)["top"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    for trial in trials:
        [row] = [r for r in rows if same_params(r["params"], trial.params)]
        assert math.isclose(row["last_value"], trial.value, rel_tol=1e-12), (row, frozen(trial))

    # nothing of the SQLite study: no optuna.db kept or published; the password is in no file of the sweep
    assert not list(sweep_dir.rglob("*.db")), sorted(p.name for p in sweep_dir.rglob("*.db"))
    for path in sweep_dir.rglob("*"):
        assert not path.is_file() or postgres.password.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------ no server needed

def test_study_url_names_its_driver_and_refuses_passwords():
    from jigclu.errors import ConfigError
    from tune.study_db import study_url

    assert study_url("postgresql://jigclu@db:5432/studies") == "postgresql+psycopg://jigclu@db:5432/studies"
    assert study_url("postgresql+psycopg2://u@db/s?sslmode=require") == "postgresql+psycopg2://u@db/s?sslmode=require"
    for bad, needle in (("postgresql://u:hunter2@db/s", "holds a password"),
                        ("postgresql://u@db/s?password=hunter2", "holds a password"),
                        ("not a url", "is not a database URL")):
        with pytest.raises(ConfigError, match=needle) as caught:
            study_url(bad)
        assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)


def test_missing_driver_is_one_line_naming_the_package(monkeypatch):
    from jigclu.errors import ConfigError
    from tune.study_db import open_study_storage

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(ConfigError, match=r"driver 'psycopg' is not installed: pip install \"psycopg\[binary\]\""):
        open_study_storage("postgresql://jigclu@127.0.0.1:1/studies")


def test_database_study_keeps_no_sqlite_copy(tmp_path, monkeypatch):
    """A remote sweep with a database study neither fetches, publishes nor forgets a SQLite study, even
    with a stale one from an earlier run in the driver's cache; resuming with another database is refused."""
    from jigclu import storage
    from jigclu.errors import ConfigError
    from tune.space import load_sweep
    from tune.sweep import save_definition, sweep_layout

    local = load_sweep(SWEEP, [f"output_dir={tmp_path}", "study_storage=postgresql://jigclu@db/studies"])
    save_definition(local, sweep_layout(local))
    other = load_sweep(SWEEP, [f"output_dir={tmp_path}", "study_storage=postgresql://jigclu@db2/studies"])
    with pytest.raises(ConfigError, match="different 'study_storage'"):
        save_definition(other, sweep_layout(other))

    monkeypatch.setenv("HOME", str(tmp_path))  # the driver's study cache of a remote sweep lives under it
    calls = []
    for name in ("write_atomic", "download", "delete"):
        monkeypatch.setattr(storage, name, lambda *a, _n=name, **k: calls.append(_n))
    monkeypatch.setattr(storage, "is_file", lambda *a, **k: True)  # as if an optuna.db were in the bucket
    monkeypatch.setattr(storage, "mtime", lambda *a, **k: time.time() + 3600)
    sweep = load_sweep(SWEEP, ["storage=s3://bucket/sweeps", "study_storage=postgresql://jigclu@db/studies"])
    layout = sweep_layout(sweep)
    layout.study_cache.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(layout.study_cache)) as stale:  # a stale SQLite study
        stale.execute("CREATE TABLE trials (number INTEGER)")
    stale_bytes = layout.study_cache.read_bytes()
    layout.fetch_study(), layout.publish_study(), layout.forget_study()
    assert calls == [] and layout.study_cache.read_bytes() == stale_bytes
