"""The benchmark's rules: a figure that could not do its work fails, and the run says so.

* ``python -m benchmarks.run`` exits 1 when a figure failed (could not run, or did less work
  than it was given), 0 when every figure ran in full, targets missed or not;
* a failed figure is ``met: false`` with its ``failure``, never ``null`` like a figure
  without a target;
* latency percentiles count events never handled as misses, and such events fail the figure;
* a raw baseline that stops short, or a claim whose transaction ``INNODB_TRX`` does not show,
  fails instead of reporting a ratio;
* the concurrent-claims figure measures ``SqlRepository.claim_due`` on both sides.

The rules are checked on the figure logic directly, then once on a short real run of the
claim figures against PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from benchmarks import figures, latency, raw, run
from benchmarks.figures import Figure, IncompleteWorkError, absolute, failed, throughput

# --------------------------------------------------------------------------- figures


def test_a_failed_figure_is_met_false_with_its_reason_unlike_one_without_target() -> None:
    broken = failed("relay PG -> Redis", "rows/s", "RuntimeError: 3 of 10 rows published")
    untargeted = absolute("relay+consume, 1 worker process", 4000.0, unit="ev/s")
    assert broken.met is False and broken.failure == "RuntimeError: 3 of 10 rows published"
    assert untargeted.met is None and untargeted.failure is None
    document = json.loads(json.dumps([broken.as_json(), untargeted.as_json()]))
    assert document[0]["met"] is False and document[0]["failure"].startswith("RuntimeError")
    assert document[1]["met"] is None and document[1]["failure"] is None
    text = figures.table([broken, untargeted])
    assert "| FAILED |" in text and "[1] FAILED: RuntimeError: 3 of 10 rows published" in text
    assert figures.failures([broken, untargeted]) == [broken]


def test_a_figure_with_a_target_and_no_ratio_is_not_met() -> None:
    # A raw side that measured nothing gives no ratio: that is not "no target"
    figure = throughput("consumer", 900.0, 0.0, target=0.8)
    assert figure.ratio is None and figure.met is False


def test_a_raw_baseline_that_stopped_short_raises() -> None:
    with pytest.raises(IncompleteWorkError, match="raw Redis consumer: did 1500 of 2000"):
        figures.require_complete(1500, 2000, "raw Redis consumer")
    figures.require_complete(2000, 2000, "raw Redis consumer")


# --------------------------------------------------------------------------- latency


def _latency(handled: int, total: int = 10) -> list[Figure]:
    committed = [(f"e{i}", 100.0 + i) for i in range(total)]
    started = {f"e{i}": 100.0 + i + 0.005 for i in range(handled)}  # 5 ms each
    return latency.latency_figures(
        "commit -> handler start, PG + Redis, other process",
        committed,
        started,
        seconds=1.0,
        p50_target=10.0,
        p99_target=50.0,
    )


def test_latency_with_every_event_handled_is_judged_on_its_percentiles() -> None:
    p50, p95, p99 = _latency(handled=10)
    assert p50.value == pytest.approx(5.0) and p50.met is True and p50.failure is None
    assert p99.met is True and p95.met is None


def test_events_never_handled_are_misses_that_fail_every_percentile() -> None:
    # Given 4 of 10 events handled in 5 ms, 6 never handled
    p50, p95, p99 = _latency(handled=4)
    # Then p50 is a miss (not 5 ms), and every figure failed, naming the missing events
    assert p50.value is not None and math.isinf(p50.value)
    assert p50.met is False and p99.met is False and p95.met is False
    assert all("6 of 10 events not handled" in (f.failure or "") for f in (p50, p95, p99))
    assert p50.as_json()["value"] is None  # JSON has no infinity


def test_one_event_never_handled_fails_the_figure_even_with_p50_met() -> None:
    p50, _p95, _p99 = _latency(handled=9)
    assert p50.value == pytest.approx(5.0)
    assert p50.met is False and "1 of 10 events not handled" in (p50.failure or "")


# --------------------------------------------------------------------------- exit status


def _plan(*measures: run.Measure) -> list[tuple[str, str, run.Measure]]:
    return [("claim", f"figure {i}", m) for i, m in enumerate(measures)]


def _missed_target(env: object, sizes: object) -> Figure:
    return throughput("relay PG -> Kafka", 4800.0, 17000.0, target=0.9, unit="rows/s")


def _raises(env: object, sizes: object) -> Figure:
    raise IncompleteWorkError("raw claim floor PG: did 1800 of 2000")


def test_the_run_exits_zero_when_every_figure_ran_even_with_a_target_missed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run, "plan", lambda: _plan(_missed_target))
    assert run.main(["--quick", "--json", str(tmp_path / "out.json")]) == 0
    [figure] = json.loads((tmp_path / "out.json").read_text())["figures"]
    assert figure["met"] is False and figure["failure"] is None
    assert "FAILED" not in capsys.readouterr().out


def test_the_run_exits_non_zero_when_a_figure_failed_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given one figure that measures fine and one whose raw baseline stops short
    monkeypatch.setattr(run, "plan", lambda: _plan(_missed_target, _raises))
    # When the benchmark runs
    status = run.main(["--quick", "--json", str(tmp_path / "out.json")])
    # Then it exits 1, the failed figure is met false with the reason, the other is kept
    assert status == 1
    ok, broken = json.loads((tmp_path / "out.json").read_text())["figures"]
    assert ok["failure"] is None
    assert broken["met"] is False
    assert broken["failure"] == "IncompleteWorkError: raw claim floor PG: did 1800 of 2000"
    out = capsys.readouterr().out
    assert "FAILED: 1 of 2 figures could not be measured in full" in out


def test_the_run_exits_non_zero_when_a_figure_missed_its_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        run, "plan", lambda: [("latency", "latency", lambda e, z: _latency(handled=3))]
    )
    assert run.main(["--quick"]) == 1


# --------------------------------------------------------------------------- real services


def test_a_raw_redis_consumer_that_gets_fewer_entries_than_expected_fails(
    redis_url: str, postgres_engine: sa.Engine, unique: str
) -> None:
    # Given a stream holding 3 entries where the raw consumer expects 5
    stream = f"bench-short-{unique}"
    client = redis.Redis.from_url(redis_url)
    for i in range(3):
        client.xadd(stream, {"key": "k", "value": json.dumps({"outbox_id": i})})
    table = f"bench_short_{unique}"
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id INTEGER, status TEXT, consumed_at "
                             "TIMESTAMP, updated_at TIMESTAMP)"))  # fmt: skip
    try:
        # Then its rate is not reported: the baseline is incomplete
        with pytest.raises(IncompleteWorkError, match="did 3 of 5"):
            raw.redis_consume(postgres_engine, table, redis_url, stream, 5)
    finally:
        client.delete(stream)
        client.close()
        with postgres_engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))


@pytest.mark.postgres
@pytest.mark.mysql
def test_a_quick_real_run_of_the_claim_figures_measures_the_library(
    postgres_engine: sa.Engine, mysql_engine: sa.Engine, tmp_path: Path
) -> None:
    # When the MariaDB lock figure and both concurrent-claims figures run for real
    out = tmp_path / "claims.json"
    status = run.main(["--quick", "--only", "MariaDB claim locks,PG concurrent claims",
                       "--json", str(out)])  # fmt: skip
    # Then they ran in full, and each claimer A was the library's claim_due
    found = {f["name"]: f for f in json.loads(out.read_text())["figures"]}
    assert status == 0, found
    locks = found["MariaDB claim of 200 with 4,800 due rows: rows locked"]
    assert locks["failure"] is None and locks["value"] > 0
    for label, statement in (("MariaDB", "SELECT"), ("PG", "UPDATE")):
        figure = found[f"{label} two concurrent claims of 200 (4,800 due): smaller batch"]
        assert figure["failure"] is None and figure["met"] is True, figure
        assert (
            f"both SqlRepository.claim_due (A held after its locking {statement}"
            in (figure["note"])
        )
