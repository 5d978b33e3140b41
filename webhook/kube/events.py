"""Kubernetes Events about admitted objects, recorded off the admission path.

An admission is answered in milliseconds; an API call can take seconds, or hang until its
timeout. So ``emit`` only enqueues, and one daemon thread creates the Events with the
synchronous client. Like client-go's recorder, a repeat of an event soon after the last
one raises the count of the Event already made instead of creating another: a workload
admitted again and again does not flood its namespace with copies.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

from kubernetes import client

from ..events import event_message
from ..text import one_line
from .client import TIMEOUT_SECONDS, KubeError, translated

log = logging.getLogger("image_backup.kube_events")

CORRELATION_SECONDS = 600.0  # a repeat within this long of the last one raises its count
MAX_CORRELATED = 4096  # events remembered for that; the least recently seen are forgotten
MAX_MESSAGE = 1024  # events.k8s.io's limit on a note; core/v1 has none, but kubectl shows it
MAX_NAME = 253  # an Event's name is a DNS subdomain
_SUFFIX = 17  # "." and 16 hex digits
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


@dataclass(frozen=True, slots=True)
class InvolvedObject:
    """Who the event is about, as the admission request named it."""

    api_version: str  # "apps/v1", "v1", "batch/v1", "apps.openshift.io/v1"
    kind: str  # "Deployment"
    namespace: str
    name: str  # "" if not known (generateName)
    uid: str = ""  # "" on CREATE: the object does not exist yet


class _Pending(NamedTuple):
    involved: InvolvedObject
    reason: str
    message: str
    warning: bool
    at: float  # time.time() at emit: an Event says when it happened, not when it was sent


_Key = tuple[InvolvedObject, str, str, bool]  # what makes two events the same one


@dataclass(slots=True)
class _Recorded:
    name: str
    count: int
    at: float  # when it last happened


class KubeEvents:
    """Records Events through one worker thread; ``emit`` is safe on the event loop."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        component: str = "image-backup-webhook",
        instance: str = "",
        max_pending: int = 1000,
    ) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._component = component
        self._instance = instance
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_pending)
        self._dropped = 0
        self._closed = False
        self._abandoned = threading.Event()  # close() gave up waiting: stop after this one
        self._recent: OrderedDict[_Key, _Recorded] = OrderedDict()  # the worker's alone
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()

    def emit(
        self, involved: InvolvedObject, reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Queue an event; never blocks, never raises (a full queue drops it and counts the
        drop)."""
        if self._closed:
            return
        if not (involved.name or involved.uid):
            log.debug(event_message("kube_event_skipped", reason=reason, kind=involved.kind))
            return
        try:
            self._queue.put_nowait(_Pending(involved, reason, message, warning, time.time()))
        except queue.Full:
            self._dropped += 1

    @property
    def dropped(self) -> int:
        """Events lost because the queue was full (the API server slow or unreachable)."""
        return self._dropped

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to timeout) and stop the worker."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.0, timeout))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._abandoned.set()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._abandoned.is_set():
                return
            try:
                self._record(item)
            except Exception as exc:  # best effort: the next event may well get through
                error = str(exc) if isinstance(exc, KubeError) else f"{type(exc).__name__}: {exc}"
                log.warning(
                    event_message(
                        "kube_event_not_recorded", reason=item.reason, error=one_line(error)
                    )
                )

    def _record(self, item: _Pending) -> None:
        key: _Key = (item.involved, item.reason, item.message, item.warning)
        known = self._recent.get(key)
        if (
            known is not None
            and item.at - known.at < CORRELATION_SECONDS
            and self._bump(item, known)
        ):
            self._recent.move_to_end(key)
            return
        self._recent.pop(key, None)
        self._recent[key] = _Recorded(self._create(item), 1, item.at)
        if len(self._recent) > MAX_CORRELATED:
            self._recent.popitem(last=False)

    def _bump(self, item: _Pending, known: _Recorded) -> bool:
        """Count a repeat on the Event already made; False if that Event is gone (Events
        expire, an hour after their last change by default)."""
        namespace = _namespace(item.involved)
        count = known.count + 1
        patch = {"count": count, "lastTimestamp": _timestamp(item.at).isoformat()}
        try:
            with translated(self._api, f"updating Event {namespace}/{known.name}"):
                response: Any = self._core.patch_namespaced_event(
                    known.name,
                    namespace,
                    patch,
                    _content_type=STRATEGIC_MERGE,
                    _preload_content=False,
                    _request_timeout=TIMEOUT_SECONDS,
                )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        response.drain_conn()
        known.count, known.at = count, item.at
        return True

    def _create(self, item: _Pending) -> str:
        """Create the Event and return its name. The answer is drained, not parsed into the
        client's model: the name is ours, and that is all a repeat needs."""
        involved = item.involved
        namespace = _namespace(involved)
        name = _event_name(involved)
        at = _timestamp(item.at)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version=involved.api_version,
                kind=involved.kind,
                namespace=involved.namespace,
                name=involved.name,
                uid=involved.uid or None,
            ),
            reason=item.reason,
            message=_truncated(item.message),
            type="Warning" if item.warning else "Normal",
            source=client.V1EventSource(component=self._component),
            reporting_component=self._component,
            reporting_instance=self._instance,
            # The legacy timestamps, not eventTime: core/v1 validation holds an Event with
            # eventTime to the events.k8s.io rules (action, reportingController...).
            first_timestamp=at,
            last_timestamp=at,
            count=1,
        )
        what = f"{involved.kind} {involved.namespace}/{involved.name or involved.uid}"
        with translated(self._api, f"creating Event {item.reason} for {what}"):
            response: Any = self._core.create_namespaced_event(
                namespace, event, _preload_content=False, _request_timeout=TIMEOUT_SECONDS
            )
        response.drain_conn()
        return name


def _namespace(involved: InvolvedObject) -> str:
    """Where the Event goes: with its object, or in "default" for a cluster-scoped one, as
    client-go does."""
    return involved.namespace or "default"


def _event_name(involved: InvolvedObject) -> str:
    """The object's name and a unique suffix, as client-go names Events; cut so the whole
    stays a DNS subdomain (a label must not end in "-" or ".")."""
    base = (involved.name or involved.kind.lower())[: MAX_NAME - _SUFFIX].rstrip("-.")
    return f"{base}.{secrets.token_hex(8)}"


def _truncated(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _timestamp(at: float) -> datetime.datetime:
    """In whole seconds, all metav1.Time keeps; the client writes it in RFC 3339."""
    return datetime.datetime.fromtimestamp(int(at), datetime.UTC)
