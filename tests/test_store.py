"""The service's database: migrations keep data; the schema matches the models."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from tljh_repo2docker.service import store


def test_new_database_is_at_the_newest_version(tmp_path):
    sessions = store.open_store(f"sqlite:///{tmp_path}/new.sqlite")
    with sessions.engine.connect() as conn:
        assert store.schema_version(conn) == len(store.MIGRATIONS)


def test_upgrade_from_version_1_keeps_data(tmp_path):
    engine = store.make_engine(f"sqlite:///{tmp_path}/old.sqlite")
    assert store.migrate(engine, store.MIGRATIONS[:1]) == 1
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO environments (name, display_name, repo, ref, created_by,"
                " created_at, updated_at) VALUES ('demo', 'Demo', 'https://x/y', 'main', 'a',"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                'INSERT INTO builds (environment_id, status, ref, "commit", image, cached,'
                " requested_by, created_at, error, log_head, log_tail, log_lines)"
                " VALUES (1, 'succeeded', 'main', 'abc', 'img:abc', 0, 'a',"
                " '2026-01-01 00:00:00', '', '', '', 0)"
            )
        )
    # the upgrade: what a new plugin version does on start
    assert store.migrate(engine) == len(store.MIGRATIONS)
    sessions = store.open_store(f"sqlite:///{tmp_path}/old.sqlite")
    with sessions() as db:
        env = store.find_environment(db, "demo")
        assert env.display_name == "Demo"
        assert env.build_args == "{}"
        assert [b.image for b in env.builds] == ["img:abc"]


def test_schema_of_migrations_matches_the_models(tmp_path):
    migrated = store.make_engine(f"sqlite:///{tmp_path}/m.sqlite")
    store.migrate(migrated)
    created = store.make_engine(f"sqlite:///{tmp_path}/c.sqlite")
    store.Base.metadata.create_all(created)
    for table in ("environments", "builds", "launch_consents"):
        columns = {c["name"] for c in inspect(migrated).get_columns(table)}
        assert columns == {c["name"] for c in inspect(created).get_columns(table)}, table


def test_a_newer_database_is_refused(tmp_path):
    engine = store.make_engine(f"sqlite:///{tmp_path}/future.sqlite")
    store.migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 99"))
    with pytest.raises(RuntimeError, match="newer"):
        store.migrate(engine)


def test_deleting_an_environment_deletes_its_builds(tmp_path):
    sessions = store.open_store(f"sqlite:///{tmp_path}/d.sqlite")
    with sessions() as db:
        env = store.Environment(name="x", display_name="X", repo="https://h/r", ref="main")
        db.add(env)
        db.flush()
        db.add(store.Build(environment_id=env.id, ref="main"))
        db.commit()
        db.delete(env)
        db.commit()
        assert db.execute(text("SELECT count(*) FROM builds")).scalar() == 0


def test_upgrade_to_version_4_marks_launch_made_environments(tmp_path):
    from tljh_repo2docker import providers

    engine = store.make_engine(f"sqlite:///{tmp_path}/v3.sqlite")
    assert store.migrate(engine, store.MIGRATIONS[:3]) == 3
    spec = providers.parse("gh", "org/course/main")
    rows = [
        # made by an earlier launch link: the launch slug of its own repository
        (spec.environment_name, spec.repo, "mallory", ""),
        # an admin's environment that merely starts like a launch name
        ("gh-course-00000000", spec.repo, "admin", ""),
        ("course", spec.repo, "admin", ""),
        # a user's own
        (spec.environment_name.replace("gh-", "gl-"), spec.repo, "bob", "bob"),
    ]
    with engine.begin() as conn:
        for name, repo, created_by, owner in rows:
            conn.execute(
                text(
                    "INSERT INTO environments (name, display_name, repo, ref, created_by,"
                    " created_at, updated_at, owner) VALUES (:n, :n, :r, 'main', :c,"
                    " '2026-01-01 00:00:00', '2026-01-01 00:00:00', :o)"
                ),
                {"n": name, "r": repo, "c": created_by, "o": owner},
            )
    assert store.migrate(engine) == len(store.MIGRATIONS) >= 4
    sessions = store.open_store(f"sqlite:///{tmp_path}/v3.sqlite")
    with sessions() as db:
        launched = {
            e.name: e.launched_by for e in db.query(store.Environment).all() if e.launched_by
        }
        assert launched == {spec.environment_name: "mallory"}
        # visibility and owner stay as the images' labels say
        env = store.find_environment(db, spec.environment_name)
        assert (env.owner, env.visibility) == ("", "public")


def test_consent_is_remembered_once_per_user_and_repository(tmp_path):
    from sqlalchemy.exc import IntegrityError

    sessions = store.open_store(f"sqlite:///{tmp_path}/c.sqlite")
    key = "gh:https://github.com/org/course"
    with sessions() as db:
        assert store.find_consent(db, "alice", "h1") is None
        store.remember_consent(db, "alice", key, "h1", whole_home=False)
        store.remember_consent(db, "alice", key, "h1", whole_home=True)  # updated, not doubled
        assert store.find_consent(db, "alice", "h1").whole_home is True
        assert store.find_consent(db, "bob", "h1") is None
        assert db.query(store.LaunchConsent).count() == 1
        db.add(store.LaunchConsent(username="alice", key_hash="h1", repo_key=key))
        with pytest.raises(IntegrityError):
            db.commit()


def test_upgrade_to_version_5_copies_files_for_existing_environments(tmp_path):
    url = f"sqlite:///{tmp_path}/v4.sqlite"
    engine = store.make_engine(url)
    assert store.migrate(engine, store.MIGRATIONS[:4]) == 4
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO environments (name, display_name, repo, ref, created_by,"
                " created_at, updated_at) VALUES ('course', 'Course', 'https://x/y', 'main',"
                " 'admin', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    assert store.migrate(engine) == len(store.MIGRATIONS) >= 5
    with store.open_store(url)() as db:
        assert store.find_environment(db, "course").copy_files is True
