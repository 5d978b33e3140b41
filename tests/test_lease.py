"""Leader election on a Lease: of the replicas, one runs the work at a time, through the
fake API server with the real client."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from kubernetes import client

from tests.support.fakekube import LEASES, Call, FakeKube, KubeError
from webhook.kube.client import api_client
from webhook.kube.lease import LeaderLease

NS = "image-backup"
NAME = "image-backup-backfill"
LEASE_PATH = f"/namespaces/{NS}/leases/{NAME}"
MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# Fast elections: a lease lasts a second, renewed five times in it.
DURATION, RENEW_EVERY = 1, 0.2
HOLD_FOR = DURATION - RENEW_EVERY  # the work's deadline after the last renewal sent


class Work:
    """Work that runs until cancelled (or for `seconds`), noting when each run started and
    ended; `unwind` seconds of clean-up once cancelled, `error` raised at its end."""

    def __init__(
        self, seconds: float | None = None, error: Exception | None = None, unwind: float = 0.0
    ) -> None:
        self.seconds = seconds
        self.error = error
        self.unwind = unwind
        self.spans: list[list[float]] = []  # [started] while running, [started, ended] after

    @property
    def running(self) -> bool:
        return bool(self.spans) and len(self.spans[-1]) == 1

    @property
    def runs(self) -> int:
        return len(self.spans)

    async def __call__(self) -> None:
        span = [time.monotonic()]
        self.spans.append(span)
        try:
            if self.seconds is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.seconds or 0)
            if self.error is not None:
                raise self.error
        except asyncio.CancelledError:
            if self.unwind:
                await asyncio.sleep(self.unwind)
            raise
        finally:
            span.append(time.monotonic())


def overlap(a: Work, b: Work) -> bool:
    """Whether any run of `a` ran at the same time as one of `b`."""
    now = time.monotonic()
    spans_a = [(span[0], span[1] if len(span) > 1 else now) for span in a.spans]
    spans_b = [(span[0], span[1] if len(span) > 1 else now) for span in b.spans]
    return any(s1 < e2 and s2 < e1 for s1, e1 in spans_a for s2, e2 in spans_b)


class Starter(Protocol):
    def __call__(
        self, holder: str, work: Work, **options: Any
    ) -> tuple[LeaderLease, asyncio.Task[None]]: ...


@pytest.fixture
def api(fake_kube: FakeKube) -> Iterator[client.ApiClient]:
    with api_client() as api:
        yield api


@pytest.fixture
async def start(api: client.ApiClient) -> AsyncIterator[Starter]:
    """``start(holder, work, **options)``: a replica running `work` under the Lease, stopped
    after the test."""
    tasks: list[asyncio.Task[None]] = []

    def starter(holder: str, work: Work, **options: Any) -> tuple[LeaderLease, asyncio.Task[None]]:
        options = {"duration": DURATION, "renew_every": RENEW_EVERY, **options}
        lease = LeaderLease(
            options.pop("api", api), namespace=NS, name=NAME, holder=holder, **options
        )
        task = asyncio.create_task(lease.run(work))
        tasks.append(task)
        return lease, task

    yield starter
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait for `condition`; when it held (time.monotonic())."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    return time.monotonic()


def spec_of(kube: FakeKube) -> dict[str, Any]:
    spec: dict[str, Any] = kube.store.get(LEASES, NS, NAME)["spec"]
    return spec


def skewed(seconds: float) -> Callable[[], datetime]:
    """A wall clock `seconds` off the true time."""
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


def seed(kube: FakeKube, **spec: Any) -> None:
    """The Lease as another replica left it."""
    kube.store.create(LEASES, NS, {"metadata": {"name": NAME}, "spec": spec})


def messages(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f'"event":"{event}"' in r.getMessage()]


async def test_the_first_replica_creates_the_lease_holds_it_and_renews_it(
    fake_kube: FakeKube, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="image_backup.lease")
    ticks = iter(range(1_000_000))
    base = datetime(2026, 11, 30, 21, 27, 21, 123456, tzinfo=UTC)
    work = Work()
    lease, _ = start("replica-a", work, clock=lambda: base + timedelta(seconds=next(ticks)))
    await until(lambda: work.running)
    assert lease.leading
    assert lease.leader == "replica-a"
    spec = spec_of(fake_kube)
    assert spec == {
        "holderIdentity": "replica-a",
        "leaseDurationSeconds": DURATION,
        "acquireTime": "2026-11-30T21:27:21.123456Z",
        "renewTime": "2026-11-30T21:27:21.123456Z",
        "leaseTransitions": 0,
    }
    (created,) = fake_kube.calls_to("POST", f"/namespaces/{NS}/leases")
    assert created.body["metadata"]["name"] == NAME

    await until(lambda: spec_of(fake_kube)["renewTime"] != spec["renewTime"])
    renewed = spec_of(fake_kube)
    assert MICRO_TIME.fullmatch(renewed["renewTime"])
    assert renewed["renewTime"] > spec["renewTime"]
    assert (renewed["acquireTime"], renewed["leaseTransitions"]) == (spec["acquireTime"], 0)
    # Renewals are replacements conditional on the version they replace.
    renewals = fake_kube.calls_to("PUT", LEASE_PATH)
    assert renewals
    assert all(call.body["metadata"]["resourceVersion"] for call in renewals)
    assert work.runs == 1
    (acquired,) = messages(caplog, "lease_acquired")
    assert f"Lease {NS}/{NAME}" in acquired
    assert '"holder":"replica-a"' in acquired


@pytest.mark.parametrize(
    ("clock_a", "clock_b"),
    [(0.0, 0.0), (-3600.0, 3600.0)],
    ids=["same clocks", "the holder's clock an hour behind, the other's an hour ahead"],
)
async def test_a_second_replica_does_not_run_its_work_while_the_first_renews(
    fake_kube: FakeKube, start: Starter, clock_a: float, clock_b: float
) -> None:
    """Expiry is judged by seeing the Lease change, not by its renewTime: a skewed clock
    cannot make a live Lease look expired."""
    work_a, work_b = Work(), Work()
    lease_a, _ = start("replica-a", work_a, clock=skewed(clock_a))
    await until(lambda: work_a.running)
    lease_b, _ = start("replica-b", work_b, clock=skewed(clock_b))
    await asyncio.sleep(2 * DURATION)
    assert work_b.runs == 0
    assert work_a.running
    assert (lease_a.leading, lease_b.leading) == (True, False)
    assert lease_b.leader == "replica-a"
    spec = spec_of(fake_kube)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-a", 0)


async def test_a_replica_takes_over_once_the_holder_stops_renewing(
    fake_kube: FakeKube, start: Starter
) -> None:
    work_a, work_b = Work(), Work()
    lease_a, _ = start("replica-a", work_a)
    await until(lambda: work_a.running)
    acquired_a = spec_of(fake_kube)["acquireTime"]
    lease_b, _ = start("replica-b", work_b)
    await asyncio.sleep(0.3)  # b has seen the Lease renewed

    def cut_off_a(call: Call) -> None:
        """Replica a's renewals no longer reach the API server."""
        if call.method == "PUT" and call.body["spec"]["holderIdentity"] == "replica-a":
            raise KubeError(503, "ServiceUnavailable", "connection to replica-a lost")

    fake_kube.interceptors.append(cut_off_a)
    cut = time.monotonic()
    taken = await until(lambda: work_b.running)
    # Not before a's last renewal (about RENEW_EVERY before the cut) could have expired.
    assert taken - cut >= HOLD_FOR - 0.1
    assert not overlap(work_a, work_b)
    assert not lease_a.leading
    assert lease_b.leading
    spec = spec_of(fake_kube)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-b", 1)
    assert spec["acquireTime"] > acquired_a
    assert spec["acquireTime"] == spec["renewTime"]


async def test_a_lease_left_by_a_gone_replica_is_taken_after_a_full_duration_not_at_once(
    fake_kube: FakeKube, start: Starter
) -> None:
    """Like client-go: its renewTime, an hour old, may come from a clock an hour slow."""
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    seed(
        fake_kube,
        holderIdentity="replica-gone",
        leaseDurationSeconds=DURATION,
        acquireTime=long_ago,
        renewTime=long_ago,
        leaseTransitions=3,
    )
    work = Work()
    started = time.monotonic()
    lease, _ = start("replica-b", work)
    await asyncio.sleep(0.3)
    assert lease.leader == "replica-gone"
    assert not lease.leading
    taken = await until(lambda: work.running)
    assert taken - started >= DURATION
    spec = spec_of(fake_kube)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-b", 4)


async def test_cancelling_the_holder_releases_the_lease_and_the_other_takes_over_at_once(
    fake_kube: FakeKube, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="image_backup.lease")
    # Waiting for the Lease to expire would take 30 s.
    options = {"duration": 30, "renew_every": 0.1}
    work_a, work_b = Work(unwind=0.1), Work()
    _, task_a = start("replica-a", work_a, **options)
    await until(lambda: work_a.running)
    _, _ = start("replica-b", work_b, **options)
    await asyncio.sleep(0.2)
    released_while_running: list[bool] = []
    releases: list[dict[str, Any]] = []

    def on_release(call: Call) -> None:
        if call.method == "PUT" and call.body["spec"]["holderIdentity"] == "":
            released_while_running.append(work_a.running)
            releases.append(call.body["spec"])

    fake_kube.interceptors.append(on_release)
    task_a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task_a
    stopped = time.monotonic()
    # Every try (a renewal cut short may land first: then a second one) after the work ended.
    assert released_while_running
    assert not any(released_while_running)
    # As the release wrote it: replica-b may take the Lease over before it could be read.
    spec = releases[-1]
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == ("", 1)
    assert spec["leaseTransitions"] == 0
    taken = await until(lambda: work_b.running)
    assert taken - stopped < 1.0
    spec = spec_of(fake_kube)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-b", 1)
    assert not overlap(work_a, work_b)
    assert len(messages(caplog, "lease_released")) == 1


async def test_a_failed_renewal_cancels_the_work_within_the_duration(
    fake_kube: FakeKube, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="image_backup.lease")
    work = Work()
    lease, _ = start("replica-a", work)
    await until(lambda: work.running)

    def failing(call: Call) -> None:
        if call.method == "PUT":
            raise KubeError(500, "InternalError", "etcdserver: request timed out")

    fake_kube.interceptors.append(failing)
    failed = time.monotonic()
    stopped = await until(lambda: not work.running)
    # The last renewal that got through was sent before the failures began.
    assert stopped - failed <= HOLD_FOR + 0.15
    assert stopped - failed < DURATION
    assert not lease.leading
    (lost,) = messages(caplog, "lease_lost")
    assert "etcdserver: request timed out" in lost
    assert '"holder":"replica-a"' in lost
    assert len(messages(caplog, "lease_unavailable")) == 1  # retried, logged once a minute

    await asyncio.sleep(0.5)
    assert work.runs == 1  # not started again while the API fails
    fake_kube.interceptors.remove(failing)
    await until(lambda: work.running)  # its own Lease, still naming it: taken back
    assert work.runs == 2
    spec = spec_of(fake_kube)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-a", 0)


async def test_a_conflict_between_read_and_write_gives_no_second_leader(
    fake_kube: FakeKube, start: Starter
) -> None:
    """Two candidates read a free Lease; the one whose write comes second gets a 409."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    seed(fake_kube, holderIdentity="", leaseDurationSeconds=1, renewTime=now, leaseTransitions=2)
    conflicts: list[Call] = []

    def replica_c_first(call: Call) -> None:
        """Replica c's takeover lands between replica b's read and its write."""
        if call.method == "PUT" and not conflicts:
            conflicts.append(call)
            current = fake_kube.store.get(LEASES, NS, NAME)
            current["spec"].update(
                holderIdentity="replica-c",
                leaseDurationSeconds=DURATION,
                renewTime=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                leaseTransitions=3,
            )
            fake_kube.store.replace(LEASES, NS, NAME, current)

    fake_kube.interceptors.append(replica_c_first)
    work = Work()
    lease, _ = start("replica-b", work)
    await until(lambda: bool(conflicts))
    await asyncio.sleep(0.5)
    (conflict,) = conflicts
    assert conflict.body["spec"]["holderIdentity"] == "replica-b"
    assert work.runs == 0
    assert not lease.leading
    assert lease.leader == "replica-c"
    spec = spec_of(fake_kube)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-c", 3)
    # Replica c never renews: b takes over once it has seen no change for a duration.
    await until(lambda: work.running)
    assert spec_of(fake_kube)["leaseTransitions"] == 4


async def test_of_replicas_started_together_one_runs_the_work_at_a_time(
    fake_kube: FakeKube, start: Starter
) -> None:
    works = {name: Work() for name in ("replica-a", "replica-b", "replica-c")}
    leases = [start(name, work)[0] for name, work in works.items()]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert sum(work.running for work in works.values()) <= 1
        assert sum(lease.leading for lease in leases) <= 1
        await asyncio.sleep(0.01)
    assert [work.runs for work in works.values()].count(1) == 1
    assert sum(work.runs for work in works.values()) == 1
    assert spec_of(fake_kube)["leaseTransitions"] == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("failure", ["forbidden", "unreachable"])
async def test_an_api_refusing_or_unreachable_keeps_the_loop_alive_without_the_work(
    fake_kube: FakeKube, start: Starter, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    caplog.set_level(logging.INFO, logger="image_backup.lease")

    def forbidden(call: Call) -> None:
        if "/leases" in call.path:
            raise KubeError(
                403,
                "Forbidden",
                f'leases.coordination.k8s.io "{NAME}" is forbidden: User '
                f'"system:serviceaccount:{NS}:image-backup" cannot get resource "leases" in '
                f'API group "coordination.k8s.io" in the namespace "{NS}"',
            )

    options: dict[str, Any] = {"renew_every": 0.05}
    if failure == "forbidden":
        fake_kube.interceptors.append(forbidden)
    else:
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{_closed_port()}"
        options["api"] = client.ApiClient(configuration)
    work = Work()
    lease, task = start("replica-a", work, **options)
    await asyncio.sleep(1.0)
    assert not task.done()
    assert work.runs == 0
    assert not lease.leading
    (warning,) = messages(caplog, "lease_unavailable")  # once a minute, not once a try
    assert ("forbidden" if failure == "forbidden" else "cannot reach") in warning
    if failure == "forbidden":
        assert len(fake_kube.calls_to("GET", LEASE_PATH)) >= 5  # it kept trying
        fake_kube.interceptors.remove(forbidden)
        await until(lambda: work.running)
        assert lease.leading
    else:
        options["api"].close()


async def test_run_returns_when_the_work_returns_and_releases_the_lease(
    fake_kube: FakeKube, start: Starter
) -> None:
    work = Work(seconds=0.3)
    _, task = start("replica-a", work)
    await asyncio.wait_for(task, 3)
    assert (work.runs, work.running) == (1, False)
    assert spec_of(fake_kube)["holderIdentity"] == ""


async def test_run_raises_what_the_work_raises_and_releases_the_lease(
    fake_kube: FakeKube, start: Starter
) -> None:
    work = Work(seconds=0.3, error=RuntimeError("the backfill broke"))
    _, task = start("replica-a", work)
    with pytest.raises(RuntimeError, match="the backfill broke"):
        await asyncio.wait_for(task, 3)
    assert spec_of(fake_kube)["holderIdentity"] == ""


async def test_cancelled_again_while_the_work_unwinds_it_leaves_the_lease_to_expire(
    fake_kube: FakeKube, start: Starter
) -> None:
    """Handing the Lease over while the work may still run would make two leaders."""
    work = Work(unwind=0.5)
    _, task = start("replica-a", work)
    await until(lambda: work.running)
    task.cancel()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.6)
    assert spec_of(fake_kube)["holderIdentity"] == "replica-a"


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"duration": 30, "renew_every": 15}, "third of duration"),
        ({"duration": 30, "renew_every": 0}, "above 0"),
        ({"duration": 0, "renew_every": 0.1}, "at least 1"),
        ({"duration": 1.5, "renew_every": 0.1}, "whole seconds"),
        ({"holder": ""}, "holder"),
    ],
)
def test_settings_are_checked(
    api: client.ApiClient, options: dict[str, Any], complaint: str
) -> None:
    settings: dict[str, Any] = {"namespace": NS, "name": NAME, "holder": "replica-a", **options}
    with pytest.raises(ValueError, match=complaint):
        LeaderLease(api, **settings)
