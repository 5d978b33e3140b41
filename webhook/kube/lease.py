"""Leader election on a coordination.k8s.io/v1 Lease: work that must run on one replica at a
time (the backfill pass) runs on whichever replica holds the Lease.

The election follows client-go's leaderelection (tryAcquireOrRenew, ReleaseOnCancel): a
replica creates the Lease if there is none, renews it while it holds it, and takes it over
when it has been released or has expired. Every update carries the resourceVersion read
(and a create fails when the Lease exists), so of two replicas writing at once one wins and
the other gets a 409 and waits.

Expiry is judged as client-go judges it, not from the Lease's renewTime: a replica notes on
its own monotonic clock when it saw the Lease change, and takes a Lease held by another one
only once it has seen no change for the Lease's leaseDurationSeconds. renewTime and
acquireTime are written in wall-clock time, for people reading the Lease; they are never
compared with another replica's clock, so skewed or stepped clocks cannot steal a live
Lease or keep a dead one. A replica that starts next to a Lease left by a dead holder
therefore waits one full duration before taking it over.

What it guarantees: the work runs only while this replica holds the Lease. It starts after
a write naming this replica succeeded, and is cancelled (and awaited) once no renewal has
succeeded for ``duration - renew_every`` seconds since the last successful one was sent:
at once when the Lease turns out to be held by another replica, otherwise after failed
renewals were retried until then. Another replica can take the Lease over no sooner than
``duration`` seconds after that renewal was sent (it must first see that renewal, then see
nothing new for ``duration``), so the work has ``renew_every`` seconds to end before anyone
else may start it (with the defaults: cancelled 20 s after the last renewal sent, taken
over 30 s after it at the soonest). On cancellation of :meth:`LeaderLease.run` the work is
cancelled and awaited first, then the Lease released (holder cleared), so a rolling update
hands over at once instead of after expiry. An API server that cannot be reached, or refuses (RBAC
missing), is retried forever and logged once a minute; the work does not run meanwhile.

What it does not guarantee: fencing. It holds only as far as the timing does: when both
replicas' clocks run at about the same rate, when this process is not frozen (a paused VM,
SIGSTOP, a blocked event loop) past the deadline, and when the work stops within
``renew_every`` of being cancelled. Work that ignores cancellation, or a request it sent
before, can still act after another replica took over. Each replica needs its own
identity: two processes claiming the same one both lead.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from ..events import Throttle, event_message
from ..text import one_line
from .client import TIMEOUT_SECONDS, KubeError, translated

log = logging.getLogger("image_backup.lease")

GROUP, VERSION, PLURAL, KIND = "coordination.k8s.io", "v1", "leases", "Lease"
RELEASE_SECONDS = 5.0  # shutdown waits at most this long to hand the Lease over
RETRIES_PER_RENEWAL = 5  # failed renewals are retried every renew_every / this

Object = dict[str, Any]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LeaderLease:
    """One replica's side of the election on Lease `namespace`/`name`; one :meth:`run` at a
    time."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        holder: str,
        duration: int = 30,
        renew_every: float = 10.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`holder` is this replica's identity (its pod's name), unique among the replicas.
        `duration` is the Lease's leaseDurationSeconds, whole seconds as the API has them.
        `renew_every` must be at most a third of it: a renewal that fails is retried until
        ``duration - renew_every``, and the work gets the last ``renew_every`` to end.
        `clock` is the wall clock that renewTime and acquireTime are written in; it decides
        nothing, but must advance: a renewal that writes the renewTime already there changes
        nothing another replica can see."""
        if not holder:
            raise ValueError("the holder identity must not be empty")
        if not name:
            raise ValueError("the Lease needs a name")
        if not isinstance(duration, int) or duration < 1:
            raise ValueError(f"duration must be whole seconds, at least 1, not {duration}")
        if not 0 < renew_every <= duration / 3:
            raise ValueError(
                f"renew_every must be above 0 and at most a third of duration ({duration} s), "
                f"not {renew_every}"
            )
        self._api = api
        self._custom: Any = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.name = name
        self.holder = holder
        self._duration = duration
        self._renew_every = renew_every
        self._hold_for = duration - renew_every  # after the last renewal sent: then cancel
        self._retry_every = renew_every / RETRIES_PER_RENEWAL
        self._request_timeout = min(TIMEOUT_SECONDS, max(1.0, renew_every))
        self._clock = clock
        self._observed: Object | None = None  # the Lease as last read or written
        self._observed_at = 0.0  # time.monotonic() when its resourceVersion last changed
        self._renewed_at: float | None = None  # when our last successful write was sent
        self._replaced = ""  # the holder that write replaced ("" when there was none)
        self._warnings = Throttle()
        self._requests: ThreadPoolExecutor | None = None

    @property
    def leading(self) -> bool:
        """Whether this replica holds the Lease now, as far as it can tell."""
        renewed_at = self._renewed_at
        return renewed_at is not None and time.monotonic() < renewed_at + self._hold_for

    @property
    def leader(self) -> str | None:
        """The holder the Lease named when last read or written (None: nobody, or not read
        yet): for logs and metrics, not for deciding anything."""
        return str(_spec(self._observed).get("holderIdentity") or "") or None

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Forever: compete for the Lease; while this replica holds it, run `work`, renewing
        every `renew_every`. Losing the Lease cancels the work and waits for it to end, then
        competes again (a later win runs `work` anew).

        Returns when `work` returns, and raises what it raises, after releasing the Lease.
        Cancelled, it cancels the work, waits for it, then releases the Lease so another
        replica takes over at once; cancelled again meanwhile, it leaves the Lease to
        expire rather than hand it over while the work may still run."""
        # Requests get threads of their own: renewals must not queue behind other work on
        # the default executor (the work's own calls, say) while the Lease runs out.
        self._requests = ThreadPoolExecutor(2, thread_name_prefix=f"lease-{self.name}")
        try:
            while True:
                if await self._acquire() and await self._lead(work):
                    return
                await asyncio.sleep(self._renew_every)
        finally:
            try:
                if self._renewed_at is not None:
                    await self._release()
            finally:
                self._requests.shutdown(wait=False, cancel_futures=True)

    async def _acquire(self) -> bool:
        """One try as a candidate; an API that fails is logged (once a minute) and retried."""
        try:
            acquired = await self._attempt()
        except KubeError as exc:
            self._warn(exc)
            return False
        if acquired:
            log.info(
                event_message(
                    "lease_acquired",
                    lease=self._what(),
                    holder=self.holder,
                    previousHolder=self._replaced,
                    transitions=str(_spec(self._observed).get("leaseTransitions", 0)),
                )
            )
        return acquired

    async def _lead(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Run the work while renewing the Lease: True when the work returned (its
        exception raised here), False when the Lease was lost and the work cancelled."""
        task = asyncio.ensure_future(work())
        try:
            while not task.done():
                await asyncio.wait([task], timeout=self._renew_every)
                if not task.done() and not await self._renew():
                    break
        finally:
            finished = await self._stopped(task)
        if not finished:
            return False
        task.result()
        return True

    async def _stopped(self, task: asyncio.Future[None]) -> bool:
        """Cancel the work and wait for it to end: until it has, the Lease may be neither
        handed over nor won again. True when it had ended by itself."""
        if task.done():
            return True
        task.cancel()
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            self._renewed_at = None  # it may still run: let the Lease expire instead
            raise
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning(
                event_message(
                    "lease_work_failed",
                    lease=self._what(),
                    holder=self.holder,
                    error=one_line(error) or type(error).__name__,
                )
            )
        return False

    async def _renew(self) -> bool:
        """Renew the Lease, retrying failures until the work has to stop; False when the
        Lease is lost (another replica holds it, or renewals failed until the deadline)."""
        assert self._renewed_at is not None
        deadline = self._renewed_at + self._hold_for
        reason = ""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                while True:
                    try:
                        if await self._attempt():
                            return True
                        reason = f"held by {self.leader or 'nobody'}"
                        break
                    except KubeError as exc:
                        reason = str(exc)
                        self._warn(exc)
                    await asyncio.sleep(self._retry_every)
        except TimeoutError:
            reason = f"not renewed within {self._hold_for:g} s" + (f": {reason}" if reason else "")
        self._renewed_at = None
        log.warning(
            event_message(
                "lease_lost",
                lease=self._what(),
                holder=self.holder,
                reason=reason,
                consequence="work cancelled",
            )
        )
        return False

    async def _attempt(self) -> bool:
        """One round of client-go's tryAcquireOrRenew: True when this replica holds the
        Lease now, False when another one does or won this round. Other failures raise."""
        if self._renewed_at is not None and self._observed is not None:
            # Holding it: write over the version we wrote last, without reading first.
            try:
                return await self._write("renewing", self._renewal(self._observed))
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise
        lease = await self._read()
        if lease is None:
            return await self._create()
        self._observe(lease)
        holder = str(_spec(lease).get("holderIdentity") or "")
        self._replaced = holder
        if holder == self.holder:
            body, doing = self._renewal(lease), "renewing"
        elif holder and not self._expired(lease):
            return False
        else:
            body, doing = self._taken_over(lease), "taking over"
        try:
            return await self._write(doing, body)
        except KubeError as exc:
            if exc.status not in (404, 409):  # changed or deleted since read: lost this round
                raise
            return False

    def _observe(self, lease: Object) -> None:
        """Keep the Lease as read, and when it changed: client-go's observedTime."""
        if _version(lease) != _version(self._observed):
            self._observed_at = time.monotonic()
        self._observed = lease

    def _expired(self, lease: Object) -> bool:
        """Whether the holder let a whole leaseDurationSeconds pass without a change that
        this replica saw."""
        seconds = _spec(lease).get("leaseDurationSeconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            seconds = self._duration
        return time.monotonic() - self._observed_at >= seconds

    def _renewal(self, lease: Object) -> Object:
        now = _micro_time(self._clock())
        body = copy.deepcopy(lease)
        spec = body.setdefault("spec", {})
        spec.update(holderIdentity=self.holder, leaseDurationSeconds=self._duration, renewTime=now)
        spec.setdefault("acquireTime", now)
        spec.setdefault("leaseTransitions", 0)
        return body

    def _taken_over(self, lease: Object) -> Object:
        now = _micro_time(self._clock())
        body = copy.deepcopy(lease)
        spec = body.setdefault("spec", {})
        spec.update(
            holderIdentity=self.holder,
            leaseDurationSeconds=self._duration,
            acquireTime=now,
            renewTime=now,
            leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1,
        )
        return body

    def _released(self, lease: Object) -> Object:
        """As client-go releases: no holder, a one-second duration, the transitions kept."""
        now = _micro_time(self._clock())
        body = copy.deepcopy(lease)
        spec = body.setdefault("spec", {})
        spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=now, renewTime=now)
        return body

    async def _create(self) -> bool:
        now = _micro_time(self._clock())
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.holder,
                "leaseDurationSeconds": self._duration,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        sent = time.monotonic()
        self._replaced = ""
        try:
            created = await self._request(
                "creating", self._custom.create_namespaced_custom_object, body
            )
        except KubeError as exc:
            if exc.status != 409:  # another replica created it first
                raise
            return False
        self._held(created, sent)
        return True

    async def _write(self, doing: str, body: Object) -> bool:
        """Replace the Lease with `body`, conditional on the resourceVersion it carries."""
        sent = time.monotonic()
        written = await self._request(
            doing, self._custom.replace_namespaced_custom_object, self.name, body
        )
        self._held(written, sent)
        return True

    def _held(self, lease: Object, sent: float) -> None:
        self._observe(lease)
        self._renewed_at = sent

    async def _read(self) -> Object | None:
        try:
            lease: Object = await self._request(
                "reading", self._custom.get_namespaced_custom_object, self.name
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            return None
        return lease

    async def _release(self) -> None:
        """Clear the holder so another replica takes over at once. Best effort, briefly:
        if it fails, the Lease expires after its duration anyway."""
        lease = self._observed
        self._renewed_at = None
        try:
            async with asyncio.timeout(RELEASE_SECONDS):
                while lease is not None and _spec(lease).get("holderIdentity") == self.holder:
                    try:
                        self._observe(
                            await self._request(
                                "releasing",
                                self._custom.replace_namespaced_custom_object,
                                self.name,
                                self._released(lease),
                            )
                        )
                    except KubeError as exc:
                        if exc.status != 409:
                            raise
                        lease = await self._read()  # changed meanwhile: still ours?
                        continue
                    log.info(
                        event_message("lease_released", lease=self._what(), holder=self.holder)
                    )
                    return
        except (KubeError, TimeoutError) as exc:
            log.warning(
                event_message(
                    "lease_release_failed",
                    lease=self._what(),
                    holder=self.holder,
                    error=str(exc) or f"no answer within {RELEASE_SECONDS:g} s",
                    consequence="another replica takes over once the lease expires",
                )
            )

    async def _request(
        self, doing: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """One call of a CustomObjectsApi method on this namespace's Leases, on a thread.
        The generic API keeps the Lease a plain dict: MicroTimes are written as formatted
        here, and no field is lost through the client's models."""
        call = functools.partial(
            method,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            *args,
            _request_timeout=self._request_timeout,
            **kwargs,
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._requests, _translated, self._api, f"{doing} {self._what()}", call
        )

    def _warn(self, exc: KubeError) -> None:
        if self._warnings.due():
            log.warning(
                event_message(
                    "lease_unavailable",
                    lease=self._what(),
                    holder=self.holder,
                    error=str(exc),
                    consequence="not leading until the lease can be written; retrying",
                )
            )

    def _what(self) -> str:
        return f"Lease {self.namespace}/{self.name}"


def _translated(api: client.ApiClient, doing: str, call: Callable[[], Any]) -> Any:
    with translated(api, doing):
        return call()


def _spec(lease: Object | None) -> Object:
    spec: Object = (lease or {}).get("spec") or {}
    return spec


def _version(lease: Object | None) -> str | None:
    if lease is None:
        return None
    return str((lease.get("metadata") or {}).get("resourceVersion") or "") or None


def _micro_time(at: datetime) -> str:
    """A MicroTime as the API server writes one: RFC 3339 in UTC, to the microsecond."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
