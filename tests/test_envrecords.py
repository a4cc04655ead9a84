"""What changes about an environment comes from the service's database
(envrecords.py): the overlay rules, the reader on a real SQLite database made
by the service's own store, and the catalogue with both (issue 12)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import sqlite3

from tljh_repo2docker import labels
from tljh_repo2docker.catalogue import Catalogue
from tljh_repo2docker.envrecords import (
    EnvironmentRecord,
    EnvironmentRecords,
    iso,
    overlay,
    sqlite_path,
)
from tljh_repo2docker.service import store

HUB = "records-test"
OLD, NEW = "a" * 40, "b" * 40


def summary(commit: str, built_at: str, **changed) -> dict:
    values = dict(
        hub=HUB,
        environment="course",
        display_name="Course (label)",
        repo="https://example.org/course",
        ref="main",
        commit=commit,
        mem_limit=2**30,
        cpu_limit=1.0,
        built_by="admin",
        built_at=built_at,
        owner="",
        visibility="public",
        copy_files=True,
    )
    values.update(changed)
    return {
        "Id": "sha256:" + commit[:12],
        "RepoTags": [f"tljh-r2d/course:{commit[:12]}"],
        "Labels": labels.make_labels(**values),
        "Size": 1,
    }


def images(*summaries) -> list[labels.ImageInfo]:
    return [info for s in summaries for info in labels.parse_image(s, HUB)]


def record(**changed) -> EnvironmentRecord:
    values = dict(
        display_name="Course (database)",
        mem_limit=512 * 2**20,
        cpu_limit=None,
        owner="alice",
        visibility="group:teachers",
        copy_files=False,
    )
    values.update(changed)
    return EnvironmentRecord(**values)


def test_the_database_values_replace_the_labels():
    [info] = overlay(images(summary(OLD, "2026-01-01T00:00:00.000000Z")), {"course": record()})
    assert info.display_name == "Course (database)"
    assert (info.mem_limit, info.cpu_limit) == (512 * 2**20, None)
    assert (info.owner, info.visibility, info.copy_files) == ("alice", "group:teachers", False)
    # what never changes stays the image's
    assert (info.commit, info.repo, info.image) == (OLD, "https://example.org/course", info.image)
    assert info.built_at == "2026-01-01T00:00:00.000000Z"


def test_an_environment_the_database_does_not_know_keeps_its_labels():
    listing = images(summary(OLD, "2026-01-01T00:00:00.000000Z"))
    assert overlay(listing, {"other": record()}) == listing
    assert overlay(listing, {}) is listing


def test_going_back_to_an_older_commit_makes_it_the_newest():
    listing = images(
        summary(OLD, "2026-01-01T00:00:00.000000Z"), summary(NEW, "2026-01-02T00:00:00.000000Z")
    )
    assert labels.latest_per_environment(listing)[0].commit == NEW
    back = record(made_current={OLD: "2026-01-03T00:00:00.000001Z"})
    assert labels.latest_per_environment(overlay(listing, {"course": back}))[0].commit == OLD
    # a cached build older than the newest image changes nothing
    stale = record(made_current={OLD: "2026-01-01T12:00:00.000000Z"})
    assert labels.latest_per_environment(overlay(listing, {"course": stale}))[0].commit == NEW


def test_iso_matches_the_build_time_labels():
    moment = datetime.datetime(2026, 12, 1, 10, 30, 0, 1234)
    assert iso(moment) == "2026-12-01T10:30:00.001234Z"
    assert labels.built_at_key(iso(moment)) == moment.replace(tzinfo=datetime.timezone.utc)


def test_sqlite_path():
    assert sqlite_path("sqlite:////opt/tljh/state/x.sqlite") == "/opt/tljh/state/x.sqlite"
    assert sqlite_path("sqlite:///rel.sqlite?timeout=3") == "rel.sqlite"
    assert sqlite_path("postgresql://db/x") is None


def make_db(tmp_path):
    url = f"sqlite:///{tmp_path}/service.sqlite"
    sessions = store.open_store(url)
    with sessions() as db:
        env = store.Environment(
            name="course",
            display_name="Course (database)",
            repo="https://example.org/course",
            ref="main",
            mem_limit=512 * 2**20,
            owner="alice",
            visibility="group:teachers",
            copy_files=False,
        )
        db.add(env)
        db.flush()
        at = datetime.datetime(2026, 1, 3)

        def build(commit, status, cached, minutes):
            db.add(
                store.Build(
                    environment_id=env.id,
                    ref="main",
                    commit=commit,
                    status=status,
                    cached=cached,
                    finished_at=at + datetime.timedelta(minutes=minutes),
                )
            )

        build(NEW, store.SUCCEEDED, False, 0)  # an ordinary build: its label says when
        build(OLD, store.SUCCEEDED, True, 1)  # back to the older commit
        build(OLD, store.SUCCEEDED, True, 2)  # and again: the latest counts
        build(NEW, store.FAILED, True, 3)  # failures never count
        db.commit()
    return url, sessions


def test_the_reader_reads_the_services_database(tmp_path):
    url, sessions = make_db(tmp_path)
    records = EnvironmentRecords(url).read()
    assert set(records) == {"course"}
    course = records["course"]
    assert course == record(made_current={OLD: "2026-01-03T00:02:00.000000Z"})
    # the service's own engine reads the same
    assert EnvironmentRecords(engine=sessions.engine).read() == records


def test_no_database_yet_means_labels_only_and_nothing_is_created(tmp_path):
    path = tmp_path / "later.sqlite"
    reader = EnvironmentRecords(f"sqlite:///{path}")
    assert reader.read() == {}
    assert not path.exists()


def test_a_database_not_migrated_yet_means_labels_only(tmp_path, caplog):
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()  # the hub may start before the service migrates
    reader = EnvironmentRecords(f"sqlite:///{path}")
    with caplog.at_level(logging.WARNING, logger="tljh_repo2docker.envrecords"):
        assert reader.read() == {}
        assert reader.read() == {}
    assert len([r for r in caplog.records if "unreadable" in r.message]) == 1


class ListedStore:
    """An image store answering a fixed listing (the catalogue's only input)."""

    def __init__(self, summaries):
        self.summaries = summaries

    async def list_images(self):
        return list(self.summaries)

    async def remove(self, ref):
        return False

    async def close(self):
        pass


def test_the_catalogue_lays_the_database_over_the_listing(tmp_path):
    url, sessions = make_db(tmp_path)

    async def scenario():
        listed = ListedStore(
            [
                summary(OLD, "2026-01-01T00:00:00.000000Z"),
                summary(NEW, "2026-01-02T00:00:00.000000Z"),
            ]
        )
        catalogue = Catalogue(HUB, store=listed, records=EnvironmentRecords(url, max_age=60))
        try:
            [current] = await catalogue.environments()
            assert (current.commit, current.display_name) == (OLD, "Course (database)")
            assert current.mem_limit == 512 * 2**20
            # a change in the database: seen after invalidate() (the service's
            # own change) or a fresh listing, even within max_age
            with sessions() as db:
                env = store.find_environment(db, "course")
                env.display_name = "Renamed"
                db.commit()
            assert (await catalogue.environments())[0].display_name == "Course (database)"
            catalogue.invalidate()
            assert (await catalogue.environments())[0].display_name == "Renamed"
            with sessions() as db:
                db.delete(store.find_environment(db, "course"))
                db.commit()
            [labelled] = await catalogue.environments(fresh=True)
            assert (labelled.commit, labelled.display_name) == (NEW, "Course (label)")
        finally:
            await catalogue.close()

    asyncio.run(scenario())
