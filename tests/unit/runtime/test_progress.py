"""Progress lines: about one per tenth of the work, always the last, and the Prefect
side reads them as percentages."""

from __future__ import annotations

import threading

from alt_core.runtime.progress import ProgressLog, progress_fraction


def test_prints_about_ten_lines_and_always_the_last():
    lines: list[str] = []
    bar = ProgressLog(95, "prompts", lines.append, min_interval_s=0)
    for _ in range(95):
        bar.advance()
    assert lines[0] == "progress 10/95 prompts" and lines[-1] == "progress 95/95 prompts"
    assert len(lines) == 10


def test_big_steps_print_once_and_never_pass_the_total():
    lines: list[str] = []
    bar = ProgressLog(20, "judgements", lines.append, min_interval_s=0)
    bar.advance(7)
    bar.advance(100)
    assert lines == ["progress 7/20 judgements", "progress 20/20 judgements"]


def test_a_quick_stage_prints_only_its_last_line():
    lines: list[str] = []
    bar = ProgressLog(50, "rows", lines.append)  # done long before 2 s have passed
    for _ in range(50):
        bar.advance()
    assert lines == ["progress 50/50 rows"]


def test_a_slow_stage_prints_as_it_goes(monkeypatch):
    clock = iter(range(0, 1000, 3))  # every call 3 s later
    monkeypatch.setattr("alt_core.runtime.progress.time.monotonic", lambda: next(clock))
    lines: list[str] = []
    bar = ProgressLog(40, "prompts", lines.append)
    for _ in range(40):
        bar.advance()
    assert lines[:2] == ["progress 4/40 prompts", "progress 8/40 prompts"]
    assert len(lines) == 10


def test_without_a_log_or_work_nothing_is_printed():
    ProgressLog(10, "x", None).advance(5)
    lines: list[str] = []
    ProgressLog(0, "x", lines.append).advance(0)
    assert lines == []


def test_counts_from_many_threads():
    lines: list[str] = []
    bar = ProgressLog(4000, "rows", lines.append, min_interval_s=0)
    threads = [threading.Thread(target=lambda: [bar.advance() for _ in range(500)])
               for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bar.done == 4000 and lines[-1] == "progress 4000/4000 rows"


def test_prefect_side_reads_progress_and_step_lines():
    assert progress_fraction("[sample-0] progress 30/120 prompts") == 25.0
    assert progress_fraction("step 3/12 loss=1.2") == 25.0
    assert progress_fraction("engine ready in 3.1s") is None
