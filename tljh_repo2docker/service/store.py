"""The service's database: environments and their builds (SQLAlchemy).

SQLite in TLJH's state directory by default; any SQLAlchemy URL by config.
Schema changes are numbered migrations recorded in ``schema_version`` so an
upgrade keeps data (see ``MIGRATIONS``).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

# Build states (ARCHITECTURE.md)
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Environment(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(100))
    repo: Mapped[str] = mapped_column(String(2048))
    ref: Mapped[str] = mapped_column(String(255))
    mem_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cpu_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Docker build arguments as a JSON object (schema version 2)
    build_args: Mapped[str] = mapped_column(Text, default="{}")
    # who may see and start it (schema version 3): see access.py
    owner: Mapped[str] = mapped_column(String(255), default="")
    visibility: Mapped[str] = mapped_column(String(2048), default="public")
    created_by: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    # the user whose launch link created it ("" if not launch-made; schema
    # version 4): it counts toward their quota, and stays out of pickers
    # until an admin promotes it (see access.LAUNCH)
    launched_by: Mapped[str] = mapped_column(String(255), default="")
    # picker starts copy the repository's files into ~/<name> once (schema
    # version 5); an image carries it as a label for the spawner
    copy_files: Mapped[bool] = mapped_column(Boolean, default=True)

    builds: Mapped[list[Build]] = relationship(
        back_populates="environment",
        cascade="all, delete-orphan",
        order_by="Build.id.desc()",
    )


class Build(Base):
    __tablename__ = "builds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    ref: Mapped[str] = mapped_column(String(255))
    commit: Mapped[str] = mapped_column(String(64), default="")
    image: Mapped[str] = mapped_column(String(400), default="")
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    requested_by: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    # The repo2docker process group while it runs: lets a restarted service
    # kill a build that its predecessor left behind.
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Bounded log: the first and last lines, and how many there were in all.
    log_head: Mapped[str] = mapped_column(Text, default="")
    log_tail: Mapped[str] = mapped_column(Text, default="")
    log_lines: Mapped[int] = mapped_column(Integer, default=0)
    # What a restarted service needs to run it again (schema version 6): an
    # admin's build may use local repositories and any base image; a DOI's
    # archive version. A build given credentials is never resumed (they are
    # never written anywhere).
    trusted: Mapped[bool] = mapped_column(Boolean, default=False)
    archive_version: Mapped[str] = mapped_column(String(255), default="")
    resumable: Mapped[bool] = mapped_column(Boolean, default=True)

    environment: Mapped[Environment] = relationship(back_populates="builds")

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return round((end - self.started_at).total_seconds(), 3)


class LaunchConsent(Base):
    """A user said yes to launching a repository (schema version 4)."""

    __tablename__ = "launch_consents"
    __table_args__ = (UniqueConstraint("username", "key_hash", name="uq_launch_consents_user_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    # sha256 of repo_key: repository keys can be 2 kB, too long for an index
    key_hash: Mapped[str] = mapped_column(String(64))
    repo_key: Mapped[str] = mapped_column(Text)
    whole_home: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


# --- migrations ---------------------------------------------------------------
def _create_v1(conn: Connection):
    # The first schema, spelled out: later migrations alter it.
    conn.execute(
        text(
            """CREATE TABLE environments (
            id INTEGER PRIMARY KEY, name VARCHAR(63) NOT NULL UNIQUE,
            display_name VARCHAR(100) NOT NULL, repo VARCHAR(2048) NOT NULL,
            ref VARCHAR(255) NOT NULL, mem_limit INTEGER, cpu_limit FLOAT,
            created_by VARCHAR(255) NOT NULL, created_at DATETIME NOT NULL,
            updated_at DATETIME NOT NULL)"""
        )
    )
    conn.execute(text("CREATE INDEX ix_environments_name ON environments (name)"))
    conn.execute(
        text(
            """CREATE TABLE builds (
            id INTEGER PRIMARY KEY,
            environment_id INTEGER NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
            status VARCHAR(16) NOT NULL, ref VARCHAR(255) NOT NULL,
            "commit" VARCHAR(64) NOT NULL, image VARCHAR(400) NOT NULL,
            cached BOOLEAN NOT NULL, requested_by VARCHAR(255) NOT NULL,
            created_at DATETIME NOT NULL, started_at DATETIME, finished_at DATETIME,
            error TEXT NOT NULL, pid INTEGER, log_head TEXT NOT NULL,
            log_tail TEXT NOT NULL, log_lines INTEGER NOT NULL)"""
        )
    )
    conn.execute(text("CREATE INDEX ix_builds_environment_id ON builds (environment_id)"))
    conn.execute(text("CREATE INDEX ix_builds_status ON builds (status)"))


def _add_build_args_v2(conn: Connection):
    conn.execute(text("ALTER TABLE environments ADD COLUMN build_args TEXT NOT NULL DEFAULT '{}'"))


def _add_owner_visibility_v3(conn: Connection):
    conn.execute(text("ALTER TABLE environments ADD COLUMN owner VARCHAR(255) NOT NULL DEFAULT ''"))
    conn.execute(
        text(
            "ALTER TABLE environments ADD COLUMN visibility VARCHAR(2048) NOT NULL DEFAULT 'public'"
        )
    )


def _launch_consent_v4(conn: Connection):
    conn.execute(
        text("ALTER TABLE environments ADD COLUMN launched_by VARCHAR(255) NOT NULL DEFAULT ''")
    )
    conn.execute(
        text(
            """CREATE TABLE launch_consents (
            id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL,
            key_hash VARCHAR(64) NOT NULL, repo_key TEXT NOT NULL,
            whole_home BOOLEAN NOT NULL, created_at DATETIME NOT NULL,
            CONSTRAINT uq_launch_consents_user_key UNIQUE (username, key_hash))"""
        )
    )
    # Environments earlier launch links made: their name is the launch slug of
    # their own repository (provider-words-<8 hex of sha256("provider:repo")>).
    # Mark who caused them; their visibility stays as labelled on their images
    # (an admin sets promoted=false to take one out of the pickers).
    rows = conn.execute(
        text("SELECT id, name, repo, created_by FROM environments WHERE owner = ''")
    ).all()
    for env_id, name, repo, created_by in rows:
        if created_by and _is_launch_slug(name, repo):
            conn.execute(
                text("UPDATE environments SET launched_by = :u WHERE id = :i"),
                {"u": created_by, "i": env_id},
            )


def _add_copy_files_v5(conn: Connection):
    conn.execute(text("ALTER TABLE environments ADD COLUMN copy_files BOOLEAN NOT NULL DEFAULT 1"))


def _resumable_builds_v6(conn: Connection):
    for column in (
        "trusted BOOLEAN NOT NULL DEFAULT 0",
        "archive_version VARCHAR(255) NOT NULL DEFAULT ''",
        # builds of older versions are over (recovery ran): never resumed
        "resumable BOOLEAN NOT NULL DEFAULT 0",
    ):
        conn.execute(text(f"ALTER TABLE builds ADD COLUMN {column}"))


def _is_launch_slug(name: str, repo: str) -> bool:
    provider, _, rest = name.partition("-")
    if not rest:
        return False
    digest = hashlib.sha256(f"{provider}:{repo}".encode()).hexdigest()[:8]
    return name.endswith("-" + digest)


# Append only. Each entry takes a connection inside a transaction and moves
# the schema one version up; ``schema_version`` records how far a database is.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _create_v1,
    _add_build_args_v2,
    _add_owner_visibility_v3,
    _launch_consent_v4,
    _add_copy_files_v5,
    _resumable_builds_v6,
]


def schema_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(text("SELECT version FROM schema_version")).scalar() or 0


def migrate(engine: Engine, migrations=None) -> int:
    """Bring the schema to the newest version; return the version."""
    migrations = MIGRATIONS if migrations is None else migrations
    with engine.begin() as conn:
        version = schema_version(conn)
        if version == 0:
            conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)"))
            conn.execute(text("INSERT INTO schema_version (version) VALUES (0)"))
        if version > len(migrations):
            raise RuntimeError(
                f"database schema version {version} is newer than this tljh-repo2docker "
                f"({len(migrations)}): upgrade the plugin"
            )
        for number, step in enumerate(migrations[version:], start=version + 1):
            step(conn)
            conn.execute(text("UPDATE schema_version SET version = :v"), {"v": number})
            version = number
    return version


def make_engine(url: str, busy_timeout: float = 5.0) -> Engine:
    kwargs = {}
    if url.startswith("sqlite"):
        # busy_timeout: how long a write waits for another writer's lock
        # (reads never wait in WAL mode); the service keeps it short so that
        # a locked database answers 503 at once instead of stalling requests
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

    return engine


def open_store(url: str, busy_timeout: float = 5.0) -> Callable[[], Session]:
    """Migrate the database at ``url`` and return a session factory.

    ``factory.generation()`` counts commits made through it: caches of what
    the database holds compare it to know when to rebuild.
    """
    engine = make_engine(url, busy_timeout)
    migrate(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    commits = [0]

    @event.listens_for(factory, "after_commit")
    def _count_commit(_session):
        commits[0] += 1

    def session() -> Session:
        return factory()

    session.engine = engine
    session.generation = lambda: commits[0]
    return session


def current_schema_version(engine: Engine) -> int:
    """The schema version a database has now (for the health check)."""
    with engine.connect() as conn:
        return schema_version(conn)


def find_environment(db: Session, name: str) -> Environment | None:
    return db.scalars(select(Environment).where(Environment.name == name)).first()


def active_build(db: Session, environment: Environment) -> Build | None:
    return db.scalars(
        select(Build)
        .where(Build.environment_id == environment.id, Build.status.in_(ACTIVE_STATES))
        .order_by(Build.id)
    ).first()


def latest_success(db: Session, environment: Environment) -> Build | None:
    return db.scalars(
        select(Build)
        .where(Build.environment_id == environment.id, Build.status == SUCCEEDED)
        .order_by(Build.id.desc())
    ).first()


def find_consent(db: Session, user: str, key_hash: str) -> LaunchConsent | None:
    return db.scalars(
        select(LaunchConsent).where(
            LaunchConsent.username == user, LaunchConsent.key_hash == key_hash
        )
    ).first()


def remember_consent(
    db: Session, user: str, repo_key: str, key_hash: str, whole_home: bool
) -> LaunchConsent:
    """Record (or update) a user's yes to a repository; commits."""
    consent = find_consent(db, user, key_hash)
    if consent is None:
        consent = LaunchConsent(username=user, key_hash=key_hash, repo_key=repo_key)
        db.add(consent)
    consent.whole_home = whole_home
    consent.created_at = utcnow()
    db.commit()
    return consent
