"""The service reads tljh-config's settings (as the hook passes them) and
lets command-line options win."""

from __future__ import annotations

import json

from tljh_repo2docker.service.app import EnvironmentsService


def test_settings_reach_the_service_and_options_win(tmp_path, monkeypatch):
    settings = {
        "build_concurrency": 2,
        "db_url": f"sqlite:///{tmp_path}/service.sqlite",
        "max_daily_builds_per_user": 7,
        "hub_name": "class-c",
    }
    monkeypatch.setenv("TLJH_R2D_SETTINGS", json.dumps(settings))
    app = EnvironmentsService()
    app.initialize([])
    assert app.build_concurrency == 2
    assert app.db_url == settings["db_url"]
    assert app.max_daily_builds_per_user == 7
    assert app.settings.hub_name == "class-c"
    assert (tmp_path / "service.sqlite").exists()

    other = EnvironmentsService()
    other.initialize(["--EnvironmentsService.build_concurrency=3"])
    assert other.build_concurrency == 3
