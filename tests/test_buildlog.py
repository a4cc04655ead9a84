"""Bounded build logs, resumable by line number."""

from __future__ import annotations

import asyncio

from tljh_repo2docker.service.buildlog import BuildLog
from tljh_repo2docker.service.builds import Credentials, redactor


def lines(log: BuildLog, start: int = 0):
    return [(n, e["message"]) for n, e in log.entries_from(start)]


def test_short_log_is_kept_whole_and_resumes_by_number():
    log = BuildLog(head_size=5, tail_size=5)
    for i in range(4):
        log.append("building", f"line {i}\n")
    assert lines(log) == [(i, f"line {i}\n") for i in range(4)]
    assert lines(log, 2) == [(2, "line 2\n"), (3, "line 3\n")]
    assert lines(log, 4) == []


def test_long_log_keeps_head_and_tail_with_a_marker():
    log = BuildLog(head_size=3, tail_size=4)
    for i in range(20):
        log.append("building", f"{i}\n")
    entries = lines(log)
    assert [m for _, m in entries[:3]] == ["0\n", "1\n", "2\n"]
    assert entries[3] == (15, "... 13 lines omitted ...\n")
    assert entries[4:] == [(16, "16\n"), (17, "17\n"), (18, "18\n"), (19, "19\n")]
    # a reader that had seen line 17 gets 18 and 19 only
    assert lines(log, 18) == [(18, "18\n"), (19, "19\n")]
    # a reader stuck in the dropped middle gets the marker, then the tail
    assert lines(log, 8)[0][1].startswith("... ")


def test_stored_log_round_trips():
    log = BuildLog(head_size=2, tail_size=2)
    for i in range(6):
        log.append("building", f"{i}\n")
    stored = BuildLog.from_stored(*log.stored())
    assert stored.finished
    assert lines(stored) == lines(log)
    assert stored.count == 6


def test_secrets_are_redacted_before_anything_keeps_them():
    creds = Credentials("bot", "s3cr3t-token")
    log = BuildLog(redact=redactor(creds.secrets()))
    basic = creds.git_env()["GIT_CONFIG_VALUE_0"].split()[-1]
    log.append("fetching", f"cloning with s3cr3t-token and {basic}\n")
    text = log.text()
    assert "s3cr3t-token" not in text and basic not in text
    assert "********" in text
    assert "s3cr3t" not in "".join(log.stored()[:2])


def test_waiters_wake_on_a_new_line_and_on_finish():
    async def main():
        log = BuildLog()

        async def writer():
            await asyncio.sleep(0.05)
            log.append("building", "x\n")
            await asyncio.sleep(0.05)
            log.finish()

        task = asyncio.ensure_future(writer())
        loop = asyncio.get_running_loop()
        start = loop.time()
        await log.wait(5)
        assert log.count == 1
        await log.wait(5)
        assert log.finished
        assert loop.time() - start < 1
        await task

    asyncio.run(main())


# --- bytes, not only lines -----------------------------------------------------------------
def test_a_long_line_is_cut_at_the_line_cap_and_says_so():
    log = BuildLog(max_line_bytes=100)
    log.append("building", "é" * 1000 + "\n")
    ((_, entry),) = log.entries_from(0)
    message = entry["message"]
    assert message.endswith("bytes cut]\n")
    kept = message.split("...")[0]
    assert len(kept.encode()) <= 100
    assert kept == "é" * 50  # never half a character
    cut = int(message.rsplit("[", 1)[1].split()[0])
    assert cut == 2001 - 100  # with the line break, which is kept


def test_the_whole_log_is_capped_in_bytes():
    cap = 100_000
    log = BuildLog(head_size=1000, tail_size=2000, max_line_bytes=4096, max_bytes=cap)
    for n in range(3000):
        log.append("building", f"{n:05d} " + "x" * 4000 + "\n")
    head, tail, count = log.stored()
    assert count == 3000
    assert len(head.encode()) + len(tail.encode()) <= cap * 1.1  # JSON framing
    text = log.text()
    assert text.startswith("00000 ")
    assert "02999 " in text  # the end of the log is kept
    assert "lines omitted" in text


def test_byte_capped_log_still_numbers_and_resumes_in_order():
    log = BuildLog(max_line_bytes=1000, max_bytes=6000)
    for n in range(50):
        log.append("building", f"{n}:" + "y" * 900 + "\n")
    numbers = [number for number, _ in log.entries_from(0)]
    assert numbers == sorted(numbers)
    assert numbers[-1] == 49
    last = log.entries_from(49)
    assert [n for n, _ in last] == [49]
    again = BuildLog.from_stored(*log.stored())
    assert again.text() == log.text()


def test_secrets_are_redacted_before_lines_are_cut():
    secret = "s3cr3t-" + "z" * 40
    log = BuildLog(redact=redactor([secret]), max_line_bytes=30)
    log.append("building", "token=" + secret + "\n")
    assert "s3cr3t" not in log.text()


def test_a_message_of_many_lines_is_capped_line_by_line():
    # builders hand over chunks: a cap per message would keep only the first lines
    log = BuildLog(max_line_bytes=50)
    log.append("building", "".join(f"{n:03d} " + "z" * 100 + "\n" for n in range(5)))
    kept = [message for _, message in lines(log)]
    assert len(kept) == 5
    assert [m[:3] for m in kept] == ["000", "001", "002", "003", "004"]
    assert all(m.endswith("bytes cut]\n") for m in kept)
