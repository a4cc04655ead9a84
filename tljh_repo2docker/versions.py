"""Which old images to remove: pure rules for version garbage collection.

An environment keeps its newest ``keep`` images (its current one always);
beyond that, and while all images together take more than the disk limit,
the oldest go first. An image a container uses (running or stopped) is
never removed.
"""

from __future__ import annotations

from .labels import ImageInfo


def newest_first(images: list[ImageInfo]) -> list[ImageInfo]:
    return sorted(images, key=lambda i: i.order_key, reverse=True)


def to_collect(
    images: list[ImageInfo], in_use: set[str], keep: int, disk_limit: int | None = None
) -> list[ImageInfo]:
    by_env: dict[str, list[ImageInfo]] = {}
    for info in images:
        by_env.setdefault(info.environment, []).append(info)

    def used(info: ImageInfo) -> bool:
        return info.image in in_use or info.image_id in in_use

    current = {newest_first(group)[0].image for group in by_env.values()}
    doomed: dict[str, ImageInfo] = {}
    if keep > 0:
        for group in by_env.values():
            for info in newest_first(group)[keep:]:
                if not used(info):
                    doomed[info.image] = info
    if disk_limit:
        # sizes as Docker reports them: shared layers count once per image,
        # so this errs on the side of freeing space
        total = sum(i.size for i in images if i.image not in doomed)
        for info in reversed(newest_first(images)):  # oldest first
            if total <= disk_limit:
                break
            if info.image in doomed or info.image in current or used(info):
                continue
            doomed[info.image] = info
            total -= info.size
    return list(doomed.values())
