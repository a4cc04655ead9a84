"""Unit tests for tljh_repo2docker.labels: image labels <-> catalogue entries."""

from __future__ import annotations

import dataclasses

import pytest

from tljh_repo2docker import labels
from tljh_repo2docker.labels import ImageInfo

HUB = "default"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
G = 1024**3


def label_args(**overrides):
    args = dict(
        hub=HUB,
        environment="demo",
        display_name="Demo environment",
        repo="https://github.com/binder-examples/requirements",
        ref="main",
        commit=COMMIT,
        mem_limit=2 * G,
        cpu_limit=1.5,
        built_by="admin",
        built_at="2024-05-01T12:00:00Z",
        owner="alice",
        visibility="private",
    )
    args.update(overrides)
    return args


def summary(image_labels, tags=None, image_id="sha256:" + "ab" * 32, size=123_456_789):
    return {
        "Id": image_id,
        "RepoTags": [f"tljh-r2d/demo:{COMMIT[:12]}"] if tags is None else tags,
        "Labels": image_labels,
        "Size": size,
        "Created": 1714564800,
    }


def test_make_labels_all_keys_are_prefixed_strings():
    made = labels.make_labels(**label_args())
    assert made[labels.MANAGED] == "true"
    assert made[labels.HUB] == HUB
    assert made[labels.ENVIRONMENT] == "demo"
    assert made[labels.COMMIT] == COMMIT
    assert made[labels.MEM_LIMIT] == "2G"
    assert made[labels.CPU_LIMIT] == "1.5"
    assert made[labels.OWNER] == "alice"
    assert made[labels.VISIBILITY] == "private"
    for key, value in made.items():
        assert key.startswith(labels.PREFIX)
        assert isinstance(value, str)


def test_make_labels_empty_limits():
    made = labels.make_labels(**label_args(mem_limit=None, cpu_limit=None))
    assert made[labels.MEM_LIMIT] == ""
    assert made[labels.CPU_LIMIT] == ""


@pytest.mark.parametrize("cpu, text", [(2.0, "2"), (0.5, "0.5"), (0.05, "0.05"), (256.0, "256")])
def test_make_labels_cpu_format(cpu, text):
    assert labels.make_labels(**label_args(cpu_limit=cpu))[labels.CPU_LIMIT] == text


def test_round_trip_make_labels_parse_image():
    args = label_args()
    [info] = labels.parse_image(summary(labels.make_labels(**args)), HUB)
    assert info == ImageInfo(
        image=f"tljh-r2d/demo:{COMMIT[:12]}",
        image_id="sha256:" + "ab" * 32,
        environment="demo",
        display_name="Demo environment",
        repo=args["repo"],
        ref="main",
        commit=COMMIT,
        mem_limit=2 * G,
        cpu_limit=1.5,
        built_by="admin",
        built_at="2024-05-01T12:00:00Z",
        owner="alice",
        visibility="private",
        size=123_456_789,
    )
    assert info.short_commit == COMMIT[:12]


@pytest.mark.parametrize(
    "mem, cpu",
    [(None, None), (64 * 1024**2, 0.05), (512 * 1024**2, 2.0), (3 * G + 7, 0.25), (1024**4, 256.0)],
)
def test_round_trip_limits(mem, cpu):
    made = labels.make_labels(**label_args(mem_limit=mem, cpu_limit=cpu))
    [info] = labels.parse_image(summary(made), HUB)
    assert info.mem_limit == mem
    assert info.cpu_limit == cpu


def test_round_trip_defaults_owner_and_visibility():
    args = label_args()
    del args["owner"], args["visibility"]
    [info] = labels.parse_image(summary(labels.make_labels(**args)), HUB)
    assert info.owner == ""
    assert info.visibility == "public"


def test_empty_display_name_label_falls_back_to_environment():
    made = labels.make_labels(**label_args(display_name=""))
    [info] = labels.parse_image(summary(made), HUB)
    assert info.display_name == "demo"


def test_missing_visibility_label_means_public():
    made = labels.make_labels(**label_args())
    del made[labels.VISIBILITY]
    [info] = labels.parse_image(summary(made), HUB)
    assert info.visibility == "public"


def test_multiple_tags_give_one_entry_each():
    tags = [f"tljh-r2d/demo:{COMMIT[:12]}", "tljh-r2d/demo:latest", "<none>:<none>", ""]
    infos = labels.parse_image(summary(labels.make_labels(**label_args()), tags=tags), HUB)
    assert [i.image for i in infos] == tags[:2]
    assert {i.commit for i in infos} == {COMMIT}
    assert {i.image_id for i in infos} == {"sha256:" + "ab" * 32}


@pytest.mark.parametrize("tags", [None, [], ["<none>:<none>"]])
def test_untagged_image_gives_no_entries(tags):
    s = summary(labels.make_labels(**label_args()))
    s["RepoTags"] = tags
    assert labels.parse_image(s, HUB) == []


def test_missing_size_and_id_default():
    s = summary(labels.make_labels(**label_args()))
    del s["Size"], s["Id"]
    [info] = labels.parse_image(s, HUB)
    assert info.size == 0
    assert info.image_id == ""


@pytest.mark.parametrize(
    "image_labels",
    [
        None,
        {},
        {"maintainer": "someone"},
        {labels.HUB: HUB, labels.ENVIRONMENT: "demo", labels.COMMIT: COMMIT},  # not managed
    ],
)
def test_unmanaged_images_are_ignored(image_labels):
    assert labels.parse_image(summary(image_labels), HUB) == []


def test_images_without_labels_key_are_ignored():
    s = summary({})
    del s["Labels"]
    assert labels.parse_image(s, HUB) == []


@pytest.mark.parametrize("managed", ["false", "True", "1", "yes", ""])
def test_managed_label_must_be_exactly_true(managed):
    made = labels.make_labels(**label_args())
    made[labels.MANAGED] = managed
    assert labels.parse_image(summary(made), HUB) == []


def test_images_of_other_hubs_are_ignored():
    made = labels.make_labels(**label_args(hub="other-hub"))
    assert labels.parse_image(summary(made), HUB) == []
    assert len(labels.parse_image(summary(made), "other-hub")) == 1


def test_image_without_hub_label_is_ignored():
    made = labels.make_labels(**label_args())
    del made[labels.HUB]
    assert labels.parse_image(summary(made), HUB) == []


@pytest.mark.parametrize(
    "key, value",
    [
        (labels.ENVIRONMENT, ""),
        (labels.ENVIRONMENT, "Demo"),
        (labels.ENVIRONMENT, "../etc"),
        (labels.ENVIRONMENT, "<script>"),
        (labels.ENVIRONMENT, "demo env"),
        (labels.ENVIRONMENT, "-demo"),
        (labels.ENVIRONMENT, "a" * 64),
        (labels.COMMIT, ""),
        (labels.COMMIT, "main"),
        (labels.COMMIT, "xyz1234"),
        (labels.COMMIT, "012345"),  # too short
        (labels.COMMIT, COMMIT.upper()),
        (labels.COMMIT, COMMIT + "0" * 25),  # too long
        pytest.param(labels.COMMIT, COMMIT + "\n"),
        (labels.COMMIT, "--upload-pack=x"),
        (labels.MEM_LIMIT, "lots"),
        (labels.MEM_LIMIT, "1K"),  # below the minimum
        (labels.MEM_LIMIT, "5T"),  # above the maximum
        (labels.MEM_LIMIT, "-1G"),
        (labels.CPU_LIMIT, "many"),
        (labels.CPU_LIMIT, "0"),
        (labels.CPU_LIMIT, "nan"),
        (labels.CPU_LIMIT, "1000"),
        (labels.DISPLAY_NAME, "bad\x00name"),
        (labels.DISPLAY_NAME, "x" * 101),
        (labels.DISPLAY_NAME, "line\nbreak"),
    ],
)
def test_images_with_bad_labels_are_ignored(key, value):
    made = labels.make_labels(**label_args())
    made[key] = value
    assert labels.parse_image(summary(made), HUB) == []


def test_missing_environment_or_commit_label_is_ignored():
    for key in (labels.ENVIRONMENT, labels.COMMIT):
        made = labels.make_labels(**label_args())
        del made[key]
        assert labels.parse_image(summary(made), HUB) == []


def test_short_commit_label_is_accepted():
    made = labels.make_labels(**label_args(commit="abcdef1"))
    [info] = labels.parse_image(summary(made), HUB)
    assert info.commit == "abcdef1"
    assert info.short_commit == "abcdef1"


def test_sha256_commit_label_is_accepted():
    commit = "ab" * 32
    [info] = labels.parse_image(summary(labels.make_labels(**label_args(commit=commit))), HUB)
    assert info.commit == commit
    assert info.short_commit == commit[:12]


def entry(environment, built_at, display_name=None, image=None):
    return ImageInfo(
        image=image or f"tljh-r2d/{environment}:{built_at[-4:]}",
        image_id="sha256:x",
        environment=environment,
        display_name=display_name or environment,
        repo="https://github.com/a/b",
        ref="main",
        commit=COMMIT,
        built_at=built_at,
    )


def test_latest_per_environment_picks_newest_build():
    old = entry("demo", "2024-01-01T00:00:00Z")
    new = entry("demo", "2024-06-01T00:00:00Z")
    middle = entry("demo", "2024-03-01T00:00:00Z")
    other = entry("other", "2023-01-01T00:00:00Z")
    for order in ([old, new, middle, other], [new, old, other, middle], [other, middle, new, old]):
        result = labels.latest_per_environment(order)
        assert result == [new, other]


def test_latest_per_environment_sorted_by_display_name_case_insensitive():
    a = entry("zzz", "2024-01-01T00:00:00Z", display_name="alpha")
    b = entry("aaa", "2024-01-01T00:00:00Z", display_name="Beta")
    c = entry("mmm", "2024-01-01T00:00:00Z", display_name="gamma")
    assert labels.latest_per_environment([c, b, a]) == [a, b, c]


def test_latest_per_environment_tie_on_built_at_is_deterministic():
    one = entry("demo", "2024-01-01T00:00:00Z", image="tljh-r2d/demo:aaaaaaaaaaaa")
    two = entry("demo", "2024-01-01T00:00:00Z", image="tljh-r2d/demo:bbbbbbbbbbbb")
    assert labels.latest_per_environment([one, two]) == labels.latest_per_environment([two, one])
    assert len(labels.latest_per_environment([one, two])) == 1


def test_latest_per_environment_empty():
    assert labels.latest_per_environment([]) == []


def test_latest_per_environment_from_parsed_images():
    def parsed(commit, built_at):
        made = labels.make_labels(**label_args(commit=commit, built_at=built_at))
        return labels.parse_image(summary(made, tags=[f"tljh-r2d/demo:{commit[:12]}"]), HUB)

    images = parsed("1" * 40, "2024-01-01T00:00:00Z") + parsed("2" * 40, "2024-02-01T00:00:00Z")
    [latest] = labels.latest_per_environment(images)
    assert latest.commit == "2" * 40
    assert latest.image == "tljh-r2d/demo:" + "2" * 12


def test_image_tag():
    assert labels.image_tag("tljh-r2d/", "demo", COMMIT) == f"tljh-r2d/demo:{COMMIT[:12]}"
    assert labels.image_tag("", "demo", COMMIT) == "demo:0123456789ab"
    assert labels.image_tag("registry.example.org/r2d-", "x", "abcdef1") == (
        "registry.example.org/r2d-x:abcdef1"
    )


def test_image_info_is_frozen():
    info = entry("demo", "2024-01-01T00:00:00Z")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.environment = "other"


def test_builds_within_one_second_are_ordered_by_their_real_time():
    """Two builds that finish in the same second (a cached rebuild takes less
    than one) keep their order: the later one is current, whatever the tags."""
    first = entry("demo", "2026-12-01T10:00:00.900000Z", image="tljh-r2d/demo:ffffffffffff")
    second = entry("demo", "2026-12-01T10:00:00.100000Z", image="tljh-r2d/demo:000000000000")
    later = entry("demo", "2026-12-01T10:00:01.000001Z", image="tljh-r2d/demo:000000000001")
    assert labels.latest_per_environment([first, second]) == [first]
    assert labels.latest_per_environment([later, first, second]) == [later]
    # labels from before (whole seconds) compare by time too
    old = entry("demo", "2026-12-01T10:00:00Z", image="tljh-r2d/demo:ffffffffffff")
    assert labels.latest_per_environment([old, second]) == [second]


def test_build_time_labels_never_tie_in_one_process():
    from tljh_repo2docker.buildjob import utcnow_iso

    stamps = [utcnow_iso() for _ in range(2000)]
    keys = [labels.built_at_key(s) for s in stamps]
    assert all(a < b for a, b in zip(keys, keys[1:], strict=False))


@pytest.mark.parametrize("copy_files", [True, False])
def test_round_trip_copy_files(copy_files):
    made = labels.make_labels(**label_args(copy_files=copy_files))
    assert made[labels.COPY_FILES] == ("true" if copy_files else "false")
    [info] = labels.parse_image(summary(made), HUB)
    assert info.copy_files is copy_files


@pytest.mark.parametrize("value", [None, "", "yes", "TRUE"])
def test_images_without_a_clear_false_copy_files(value):
    # images built before the setting existed (no label) copy, as new ones do
    made = labels.make_labels(**label_args())
    if value is None:
        del made[labels.COPY_FILES]
    else:
        made[labels.COPY_FILES] = value
    [info] = labels.parse_image(summary(made), HUB)
    assert info.copy_files is True
