"""Version garbage collection rules."""

from __future__ import annotations

from tljh_repo2docker.labels import ImageInfo
from tljh_repo2docker.versions import to_collect


def img(env, n, size=100):
    return ImageInfo(
        image=f"r/{env}:{n:012d}",
        image_id=f"sha256:{env}{n}",
        environment=env,
        display_name=env,
        repo="",
        ref="",
        commit=f"{n:040d}",
        built_at=f"2026-01-{n:02d}T00:00:00Z",
        size=size,
    )


A = [img("a", n) for n in range(1, 6)]  # a:1 oldest ... a:5 newest
B = [img("b", n, size=1000) for n in range(1, 3)]


def names(images):
    return sorted(i.image for i in images)


def test_keeps_the_newest_per_environment():
    assert names(to_collect(A + B, set(), keep=2)) == names(A[:3])
    assert to_collect(A + B, set(), keep=10) == []
    assert to_collect(A, set(), keep=0) == []  # 0: keep everything


def test_never_an_image_in_use():
    in_use = {A[0].image, A[1].image_id}
    assert names(to_collect(A, in_use, keep=2)) == [A[2].image]


def test_disk_limit_frees_the_oldest_but_never_a_current_image():
    # 5 x 100 + 2 x 1000 = 2500 bytes; the oldest go first until <= 1400
    doomed = to_collect(A + B, set(), keep=0, disk_limit=1400)
    assert A[-1].image not in names(doomed) and B[-1].image not in names(doomed)
    remaining = sum(i.size for i in A + B) - sum(i.size for i in doomed)
    assert remaining <= 1400
    # an impossible limit frees everything it may, and no more
    doomed = to_collect(A + B, {A[0].image}, keep=0, disk_limit=1)
    assert names(doomed) == names(A[1:4] + B[:1])
