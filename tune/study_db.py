"""The Optuna study on a database server: ``study_storage: postgresql://USER@HOST:5432/DB``.

Several sweep drivers (on several head nodes) can share one study this way; without a URL the
study is SQLite kept with the sweep (:class:`jigclu.runs.SweepLayout`). The URL must not hold a
password, since it is written into ``sweep.yaml`` and Tune pickles it with the searcher's state into
the sweep's storage. PostgreSQL's client library (libpq, under psycopg) reads the password from
``PGPASSWORD`` or ``~/.pgpass`` on the machine that runs the sweep driver (the only process that
talks to the study). A plain ``postgresql://`` URL means psycopg 3 (``pip install "psycopg[binary]"``),
whichever SQLAlchemy is installed (2.0 would pick psycopg2); ``postgresql+psycopg2://`` etc. name
another driver. A missing driver, a wrong password or an unreachable server is one line
(:class:`~jigclu.errors.ConfigError`) before anything starts.
"""

from __future__ import annotations

from typing import Any

from jigclu.errors import ConfigError
from tune.layout import SweepLayout

DEFAULT_DRIVER = {"postgresql": "postgresql+psycopg"}
# the module a SQLAlchemy dialect imports -> what to install for it
PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL",
            "MySQLdb": "mysqlclient", "pg8000": "pg8000"}
PASSWORD_HINT = "libpq reads the password from PGPASSWORD or ~/.pgpass, never from the URL"


def study_url(url: str) -> str:
    """The SQLAlchemy URL of ``study_storage``: the driver made explicit; a password refused."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"study_storage {url!r} is not a database URL (e.g. postgresql://USER@HOST:5432/DB)") \
            from None
    if parsed.password is not None or any(k.lower() in ("password", "passwd") for k in parsed.query):
        raise ConfigError("study_storage: the URL holds a password; leave it out (it would be saved with the "
                          f"sweep): {PASSWORD_HINT}")
    parsed = parsed.set(drivername=DEFAULT_DRIVER.get(parsed.drivername, parsed.drivername))
    return parsed.render_as_string(hide_password=False)


def open_study_storage(url: str) -> Any:
    """Optuna's RDB storage on ``url``, connected (its tables made): one line if that fails."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    full = study_url(url)
    try:
        return optuna.storages.RDBStorage(full)
    except ImportError as exc:  # Optuna re-raises SQLAlchemy's import of the driver as a vaguer ImportError
        module = str(getattr(exc.__cause__ or exc, "name", None) or "").split(".")[0]
        if not module:
            raise
        raise ConfigError(f"study_storage {url}: the database driver '{module}' is not installed: "
                          f"pip install \"{PACKAGES.get(module, module)}\"") from None
    except SQLAlchemyError as exc:
        why = " ".join(str(getattr(exc, "orig", None) or exc).split("(Background on this error")[0].split())
        hint = f"; {PASSWORD_HINT}" if full.startswith("postgresql") else ""
        raise ConfigError(f"study_storage {url}: cannot open the study database: {why}{hint}") from None


class DatabaseStudyLayout(SweepLayout):
    """A sweep whose study lives in a database server: no SQLite study (``optuna.db``) is kept,
    fetched from or published to the sweep's storage, not even a stale copy from an earlier run."""

    def forget_study(self) -> None:
        pass

    def fetch_study(self) -> None:
        pass

    def publish_study(self) -> None:
        pass


__all__ = ["DatabaseStudyLayout", "open_study_storage", "study_url"]
