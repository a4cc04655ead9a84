"""Per-user quotas of the service: environments owned, builds at once, builds a day."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.service import operations as ops
from tljh_repo2docker.service import store
from tljh_repo2docker.service.builds import BuildManager, QuotaExceeded
from tljh_repo2docker.service.metrics import Metrics


@pytest.fixture
def sessions(tmp_path):
    return store.open_store(f"sqlite:///{tmp_path}/q.sqlite")


def add_env(db, name, owner=""):
    env = store.Environment(
        name=name, display_name=name, repo="https://h/r", ref="main", owner=owner
    )
    db.add(env)
    db.flush()
    return env


def manager(sessions, **limits):
    return BuildManager(sessions, BuildSettings(), docker=None, catalogue=None, **limits)


def test_builds_at_once(sessions):
    builds = manager(sessions, max_concurrent_per_user=1)
    with sessions() as db:
        env = add_env(db, "a")
        db.add(store.Build(environment_id=env.id, ref="main", requested_by="bob", status="running"))
        db.commit()
        with pytest.raises(QuotaExceeded, match="at once"):
            builds.check_quota(db, "bob")
        builds.check_quota(db, "carol")  # someone else's build does not count


def test_builds_a_day_not_counting_reused_images(sessions):
    builds = manager(sessions, max_concurrent_per_user=5, max_daily_per_user=2)
    with sessions() as db:
        env = add_env(db, "a")
        old = store.utcnow() - datetime.timedelta(days=2)
        for created, cached in [(old, False), (store.utcnow(), True), (store.utcnow(), False)]:
            db.add(
                store.Build(
                    environment_id=env.id,
                    ref="main",
                    requested_by="bob",
                    status="succeeded",
                    created_at=created,
                    cached=cached,
                )
            )
        db.commit()
        builds.check_quota(db, "bob")  # 1 real build in 24 h
        db.add(store.Build(environment_id=env.id, ref="main", requested_by="bob", status="failed"))
        db.commit()
        with pytest.raises(QuotaExceeded, match="24 hours"):
            builds.check_quota(db, "bob")


def test_environments_owned(sessions):
    started = []
    service = SimpleNamespace(
        settings=BuildSettings(),
        metrics=Metrics(),
        max_environments_per_user=1,
        builds=SimpleNamespace(start=lambda db, env, user, creds, exempt: started.append(env.name)),
    )
    data = {"name": "first", "repo": "https://example.org/r"}
    with sessions() as db:
        env, _ = ops.create_environment(service, db, dict(data), "bob", admin=False)
        db.commit()
        assert (env.owner, env.visibility) == ("bob", "private")
        with pytest.raises(QuotaExceeded, match="delete one first"):
            ops.create_environment(service, db, {**data, "name": "second"}, "bob", admin=False)
        # admins have no such quota, and their environments are the hub's, public
        env, _ = ops.create_environment(service, db, {**data, "name": "third"}, "root", admin=True)
        assert (env.owner, env.visibility) == ("", "public")
    assert started == ["first", "third"]
    # the refusal is counted once, under its quota's name
    refusals = {
        s.labels["quota"]: s.value
        for family in text_string_to_metric_families(service.metrics.exposition().decode())
        for s in family.samples
        if s.name.endswith("quota_refusals_total") and s.value
    }
    assert refusals == {"environments": 1.0}
