"""`image-backup`: the command line.

Each command imports what it uses when it runs: building the parser (and so `--help`) loads
the standard library only, and `copy` never loads the Kubernetes client, `cryptography` or
the server. A command-line tool's start-up and memory are the whole cost of a small copy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from certs import SECRET_NAME

if TYPE_CHECKING:
    from certs.bootstrap import Names

    from .cluster import Cluster
    from .config import Config, Server
    from .imagestreams import HistoryBackup
    from .metrics import Metrics
    from .reference import Reference
    from .registry.client import Repository
    from .registry.copy import CopyEngine
    from .registry.referrers import Artifact
    from .tls import ReloadingCertificate

EXIT_FAILED = 1
EXIT_USAGE = 2
CONFIG_HELP = "configuration file (YAML); given again, each file is merged over the ones before"

# What the user got wrong (exit 2) and what went wrong (exit 1), by class. Named rather than
# imported: the module raising an error is loaded by then, and importing the others just
# to tell errors apart would cost every command the start-up the lazy imports saved.
EXIT_CODES = {
    "webhook.config.ConfigError": EXIT_USAGE,
    "webhook.registry.credentials.CredentialsError": EXIT_USAGE,
    "webhook.reference.InvalidReference": EXIT_USAGE,
    "webhook.naming.BackupNameError": EXIT_USAGE,
    "webhook.offline.ManifestError": EXIT_USAGE,
    "webhook.tls.CertificateError": EXIT_USAGE,
    "webhook.registry.errors.RegistryError": EXIT_FAILED,
    "webhook.server.ServerError": EXIT_FAILED,
    "webhook.kube.client.KubeError": EXIT_FAILED,
}

Command = Callable[[argparse.Namespace, "Config"], Coroutine[Any, Any, int]]


class _ProgressBar:
    """Bytes and rate on a terminal; the engine reports each blob it streams."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def expect(self, nbytes: int) -> None:
        self._bar.total = (self._bar.total or 0) + nbytes
        self._bar.refresh()

    def advance(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


def run() -> NoReturn:
    """`image-backup`: main(), then exit at once. Tearing down what the process built,
    module by module (interpreter finalization), costs every command some 45 ms and frees
    nothing that exiting does not."""
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, usage errors (already printed)
        if not isinstance(exc.code, int):
            raise
        code = exc.code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args.command, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        _fail(str(exc))
        return code


def exit_code(exc: BaseException) -> int | None:
    """EXIT_USAGE or EXIT_FAILED for an error the CLI reports in words; None for a bug."""
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get(f"{cls.__module__}.{cls.__qualname__}")
        if code is not None:
            return code
    return None


async def _copy(args: argparse.Namespace, config: Config) -> int:
    import time

    from .engine import open_engine
    from .reference import parse

    source = parse(args.source)
    bar = _ProgressBar() if sys.stderr.isatty() else None
    deadline = time.monotonic() + config.copy_settings.timeout_seconds
    try:
        async with open_engine(config, bar) as engine, _about(args.source):
            if args.to is None:
                result = await engine.backup(source, deadline=deadline)
            else:
                target, tag = _target(args.to, source)
                result = await engine.copy(source, target, tag=tag, deadline=deadline)
    finally:
        if bar is not None:
            bar.close()
    print(result.backup)
    for artifact in result.referrers.artifacts if result.referrers else ():
        # Beside the backup, not in place of it: stdout stays the one reference scripts read.
        print(_referrer_line(artifact), file=sys.stderr)
    return 0


def _referrer_line(artifact: Artifact) -> str:
    """One artifact that travels with the image, as `image-backup copy` reports it."""
    kind = f" ({artifact.artifact_type})" if artifact.artifact_type else ""
    line = f"{artifact.outcome.value}: {artifact.name}{kind}, refers to {artifact.subject}"
    return f"{line}: {artifact.error}" if artifact.error else line


async def _resolve(args: argparse.Namespace, config: Config) -> int:
    import time

    from .engine import open_engine
    from .reference import parse

    ref = parse(args.reference)
    deadline = time.monotonic() + config.copy_settings.timeout_seconds
    async with open_engine(config) as engine, _about(args.reference):
        print(await engine.resolve(ref, deadline=deadline))
    return 0


@contextlib.asynccontextmanager
async def _about(image: str) -> AsyncIterator[None]:
    """Registry and naming errors say what failed and leave naming the image to the caller:
    here, the image as the user typed it."""
    from .naming import BackupNameError
    from .registry.errors import RegistryError

    try:
        yield
    except (RegistryError, BackupNameError) as exc:
        raise type(exc)(f"{image}: {exc}") from None


async def _serve(args: argparse.Namespace, config: Config) -> int:
    """The webhook: serve until SIGTERM, then finish the reviews in flight."""
    from .server import configure_logging
    from .tls import ReloadingCertificate

    configure_logging()
    settings = config.server
    async with _self_signed(args, settings):
        # The certificate first: a missing one is the commonest deployment mistake, and it
        # needs no registry to report.
        certificate = ReloadingCertificate(settings.cert_file, settings.key_file)
        certificate.load()
        await _serve_with(config, args.config, certificate)
    return 0


async def _serve_with(
    config: Config, config_files: Sequence[str], certificate: ReloadingCertificate
) -> None:
    from .admission.handler import Admission
    from .cluster import connect, warm
    from .engine import open_engine
    from .events import EventLog
    from .metrics import Metrics
    from .server import serve

    settings = config.server
    metrics = Metrics()
    async with connect(config, metrics) as cluster:
        coordinator = cluster.coordinator if cluster is not None else None
        observer = coordinator or metrics
        async with open_engine(config, coordinator=coordinator, observer=observer) as engine:
            if cluster is not None:
                await warm(cluster, engine)
            reviewer = Admission(
                engine,
                config,
                metrics,
                EventLog(),
                pull=cluster.pull if cluster is not None else None,
                notices=cluster.events if cluster is not None else None,
                uses=cluster.records if cluster is not None else None,
                streams=cluster.stream_names if cluster is not None else None,
                recorded=cluster.records if cluster is not None else None,
            )
            try:
                async with _backfilling(config, config_files, cluster, engine, metrics):
                    await serve(reviewer, metrics, certificate, settings=settings)
            finally:
                reviewer.flush_records()


@contextlib.asynccontextmanager
async def _backfilling(
    config: Config,
    config_files: Sequence[str],
    cluster: Cluster | None,
    engine: CopyEngine,
    metrics: Metrics,
) -> AsyncIterator[None]:
    """Backfill passes in the background, on the replica holding the Lease, while serving:
    each an `image-backup backfill` process with the same configuration; and, where the
    API serves ImageStreams, their watch (its copies are few, and share the engine)."""
    interval = config.backfill.interval_seconds
    if cluster is None or interval <= 0:
        yield
        return
    import asyncio
    import functools

    from .backfill import keep_backfilling, pass_in_a_process
    from .imagestreams import keep_watching

    argv = [sys.executable, "-m", "webhook", "backfill", "--output", "json"]
    argv += [argument for path in config_files for argument in ("--config", path)]
    # Its own name for the ImageBackup records: it copies beside this process, not as it.
    env = {**os.environ, "POD_NAME": f"{cluster.backfill_lease.holder}-backfill"}
    run_pass = functools.partial(pass_in_a_process, argv, env)
    histories = _history_backup(engine, cluster, config, metrics)

    async def lead() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(keep_backfilling(run_pass, metrics, interval=interval))
            group.create_task(keep_watching(histories, cluster.image_streams, cluster.workloads))

    passes = asyncio.create_task(cluster.backfill_lease.run(lead), name="backfill")
    try:
        yield
    finally:
        passes.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await passes


@contextlib.asynccontextmanager
async def _self_signed(args: argparse.Namespace, settings: Server) -> AsyncIterator[None]:
    """With --self-signed: the certificate files from the shared Secret before serving, and
    re-checked in the background while serving (ReloadingCertificate picks renewals up)."""
    if not args.self_signed:
        yield
        return
    import asyncio

    from certs.bootstrap import ensure_files, keep_files_current

    from .kube.client import api_client

    names = _names(args)
    with api_client() as api:
        files = (Path(settings.cert_file), Path(settings.key_file))
        await asyncio.to_thread(ensure_files, api, names, *files)
        keeper = asyncio.create_task(
            keep_files_current(api, names, *files, interval=args.cert_check_interval),
            name="certificate-keeper",
        )
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper


async def _certs(args: argparse.Namespace, config: Config) -> int:
    """One shot (a Job or an init container): the Secret and the caBundle, maybe the files."""
    import asyncio

    from certs.bootstrap import ensure_certificate, ensure_files

    from .kube.client import api_client
    from .server import configure_logging

    configure_logging()
    names = _names(args)
    with api_client() as api:
        if args.write_dir is None:
            await asyncio.to_thread(ensure_certificate, api, names)
        else:
            files = (args.write_dir / "tls.crt", args.write_dir / "tls.key")
            await asyncio.to_thread(ensure_files, api, names, *files)
    return 0


async def _backfill(args: argparse.Namespace, config: Config) -> int:
    """One pass over what already runs, as `serve` makes it periodically."""
    from .backfill import Backfill

    async with _recorded(config, "backfill") as (cluster, engine):
        backfill = Backfill(
            engine,
            cluster.workloads,
            config,
            pull=cluster.pull,
            notices=cluster.events,
            streams=cluster.stream_names,
            histories=_history_backup(engine, cluster, config),
            uses=cluster.records,
        )
        with _counter("workloads") as done:
            summary = await backfill.run(
                namespaces=args.namespaces or (),
                dry_run=args.dry_run,
                rewrite=True if args.rewrite else None,
                done=done,
            )
        await cluster.records.touch_used()  # the namespaces shown to read each source
    if args.output == "json":
        sys.stdout.buffer.write(summary.to_json() + b"\n")
    else:
        print("\n".join(summary.lines()))
    return EXIT_FAILED if summary.every_failure() else 0


async def _imagestreams(args: argparse.Namespace, config: Config) -> int:
    """One pass over the opted-in namespaces' ImageStreams: every tag's history."""
    from .kube.client import KubeError

    async with _recorded(config, "imagestreams") as (cluster, engine):
        histories = _history_backup(engine, cluster, config)
        if not await histories.available():
            raise KubeError("imagestreams: the API serves no ImageStreams (not OpenShift)")
        summary = await histories.run(namespaces=args.namespaces or (), dry_run=args.dry_run)
    if args.output == "json":
        sys.stdout.buffer.write(summary.to_json() + b"\n")
    else:
        print("\n".join(summary.lines()))
    return EXIT_FAILED if summary.failures else 0


async def _revert(args: argparse.Namespace, config: Config) -> int:
    """Workloads back to the original images they record: the patches, sent with --apply."""
    from .config import ConfigError

    if (args.kind is None) != (args.name is None) or (
        args.kind is not None and (len(args.namespaces or ()) != 1 or args.selector)
    ):
        raise ConfigError(
            "--kind and --name name one object: give both, exactly one --namespace, no --selector"
        )
    from .engine import open_engine
    from .metrics import Metrics
    from .revert import Revert

    async with _cluster(config, Metrics(), "revert") as cluster, open_engine(config) as engine:
        one = None
        if args.kind is not None:
            kind = await cluster.workloads.kind_named(args.kind)
            if kind is None:
                names = ", ".join(k.kind for k in await cluster.workloads.kinds())
                raise ConfigError(f"--kind {args.kind}: not one of {names}")
            one = (kind, args.name)
        revert = Revert(
            engine,
            cluster.workloads,
            pull=cluster.pull,
            streams=cluster.stream_names is not None,
            timeout=config.copy_settings.timeout_seconds,
        )
        with _counter("workloads") as done:
            summary = await revert.run(
                namespaces=args.namespaces or (),
                selector=args.selector or "",
                one=one,
                apply=args.apply,
                force=args.force,
                done=done,
            )
    if args.output == "json":
        sys.stdout.buffer.write(summary.to_json() + b"\n")
    else:
        print("\n".join(summary.lines()))
    return EXIT_FAILED if summary.failed() else 0


def _history_backup(
    engine: CopyEngine, cluster: Cluster, config: Config, metrics: Metrics | None = None
) -> HistoryBackup:
    from .imagestreams import HistoryBackup

    return HistoryBackup(
        engine,
        cluster.image_streams,
        cluster.workloads,
        config,
        pull=cluster.pull,
        records=cluster.records,
        metrics=metrics,
    )


async def _status(args: argparse.Namespace, config: Config) -> int:
    """Every running container's image: protected, backed up, unprotected or excluded; with
    --imagestream, that ImageStream's history instead."""
    if args.imagestream is not None:
        return await _stream_history(args, config)
    from . import status
    from .admission.exclusion import Exclusions
    from .admission.plan import Planner
    from .engine import open_engine
    from .metrics import Metrics

    # The engine only names backups here: it is asked nothing that needs a registry.
    async with _cluster(config, Metrics(), "status") as cluster, open_engine(config) as engine:
        found = await status.rows(
            workloads=cluster.workloads,
            ready=await cluster.records.ready(),
            planner=Planner(engine, config.exclude.images),
            exclusions=Exclusions(config.exclude.namespaces),
            namespaces=args.namespaces or (),
            streams=cluster.stream_names,
        )
    print(status.table(found) if args.output == "table" else status.as_json(found))
    return 0


async def _stream_history(args: argparse.Namespace, config: Config) -> int:
    """Which images an ImageStream's tags pointed at, since when, and their backups: the
    records only (no workload is read, no engine opened)."""
    from . import status
    from .metrics import Metrics

    namespace, image_stream, tag = args.imagestream
    async with _cluster(config, Metrics(), "status") as cluster:
        backups = await cluster.records.stream_backups(
            namespace=namespace, image_stream=image_stream
        )
    found = status.history(backups, tag=tag)
    if args.output == "json":
        print(status.history_json(found))
        return 0
    print(status.history_table(found))
    if not found:
        print(f"no backup of ImageStream {namespace}/{image_stream} is recorded", file=sys.stderr)
    return 0


async def _restore(args: argparse.Namespace, config: Config) -> int:
    """The backups copied back into registries: from the records, or the backup registry."""
    from .config import ConfigError
    from .engine import open_engine
    from .restore import Restore, Selection, Summary, Target

    selection = Selection(
        tuple(args.source_registries or ()),
        tuple(args.namespaces or ()),
        tuple(args.images or ()),
        args.all,
    )
    if not (selection.source_registries or selection.namespaces or selection.globs or args.all):
        raise ConfigError(
            "restore: say which images: --all, --source-registry, --namespace or --image"
        )
    if args.from_backup_registry and (args.namespaces or args.imagestreams):
        raise ConfigError(
            "restore: --namespace and --imagestreams read the ImageBackup records,"
            " which --from-backup-registry does without"
        )
    target = Target(args.to_registry, dict(args.namespace_map or ()))
    bar = _ProgressBar() if sys.stderr.isatty() and not args.dry_run else None
    settings = config.copy_settings
    summary = Summary(dry_run=args.dry_run)
    try:
        async with open_engine(config, bar) as engine, contextlib.AsyncExitStack() as stack:
            restore = Restore(
                engine, timeout=settings.timeout_seconds, concurrency=settings.concurrency
            )
            cluster = None
            if args.from_backup_registry:
                found, summary.skipped = await restore.from_registry(engine.scheme)
                known = len(found)
            else:
                from .kube.client import KubeError
                from .kube.records import ready_among
                from .metrics import Metrics
                from .offline import load_documents
                from .restore import exported, from_records

                if args.records is None or args.imagestreams:
                    cluster = await stack.enter_async_context(
                        _cluster(config, Metrics(), "restore")
                    )
                    if args.imagestreams and not await cluster.image_streams.available():
                        raise KubeError("restore --imagestreams: the API serves no ImageStreams")
                if args.records is not None:
                    text = _read_input(args.records)
                    ready = ready_among(exported(load_documents(args.records, text)))
                else:
                    assert cluster is not None
                    ready = await cluster.records.ready()
                recorded, summary.skipped = from_records(ready)
                known = len(recorded)
                # Tags are read only where they can change the choice: for --image.
                found = await restore.with_tags(
                    [image for image in recorded if selection.globs or selection.wants(image)]
                )
            images = [image for image in found if selection.wants(image)]
            summary.outcomes = await restore.run(images, target, dry_run=args.dry_run)
            if cluster is not None and args.imagestreams:
                from .restore import point_image_streams

                summary.streams, summary.stream_failures = await point_image_streams(
                    cluster.image_streams, summary.outcomes, target.namespaces, dry_run=args.dry_run
                )
    finally:
        if bar is not None:
            bar.close()
    if not known:
        where = "the backup registry holds" if args.from_backup_registry else "is recorded"
        print(f"image-backup: restore: no backup {where}", file=sys.stderr)
    elif not images:
        print(f"image-backup: restore: none of the {known} backups is selected", file=sys.stderr)
    print("\n".join(summary.lines()))
    return EXIT_FAILED if summary.failed else 0


def _to_registry(text: str) -> str:
    """--to-registry HOST[/PREFIX]: a registry host, and a path prefix if any."""
    from .reference import InvalidReference, Reference

    host, slash, prefix = text.partition("/")
    try:
        Reference(host, f"{prefix}/x" if slash else "x")
    except InvalidReference as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST[/PREFIX]: {exc.problem}") from None
    return text.rstrip("/")


def _namespace_pair(text: str) -> tuple[str, str]:
    """--namespace-map OLD=NEW: the first path component OLD becomes NEW."""
    old, equals, new = text.partition("=")
    if not (old and equals and new) or "/" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not OLD=NEW")
    return old, new


def _image_stream(text: str) -> tuple[str, str, str | None]:
    """--imagestream NAMESPACE/NAME[:TAG]: (namespace, name, tag or None)."""
    namespace, _, rest = text.partition("/")
    name, colon, tag = rest.partition(":")
    if not (namespace and name) or "/" in rest or (colon and not tag):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME[:TAG]")
    return namespace, name, tag if colon else None


@contextlib.asynccontextmanager
async def _cluster(config: Config, metrics: Metrics, command: str) -> AsyncIterator[Cluster]:
    from .cluster import connect
    from .kube.client import KubeError

    async with connect(config, metrics) as cluster:
        if cluster is None:
            raise KubeError(f"{command} reads the cluster: no Kubernetes API (KUBECONFIG unset)")
        yield cluster


@contextlib.asynccontextmanager
async def _recorded(config: Config, command: str) -> AsyncIterator[tuple[Cluster, CopyEngine]]:
    """The cluster, and a copy engine whose copies (and the referrers each carries) its
    ImageBackup records keep: for a pass."""
    from .engine import open_engine
    from .metrics import Metrics

    async with (
        _cluster(config, Metrics(), command) as cluster,
        open_engine(
            config, coordinator=cluster.coordinator, observer=cluster.coordinator
        ) as engine,
    ):
        yield cluster, engine


@contextlib.contextmanager
def _counter(unit: str) -> Iterator[Callable[[object], None]]:
    """A running count on a terminal; elsewhere nothing (a CronJob's log gets the summary)."""
    if not sys.stderr.isatty():
        yield _ignore
        return
    from tqdm import tqdm

    with tqdm(unit=f" {unit}", leave=False) as bar:

        def advance(_: object) -> None:
            bar.update()

        yield advance


def _ignore(_: object) -> None:
    pass


def _names(args: argparse.Namespace) -> Names:
    from certs.bootstrap import Names

    from .config import ConfigError, own_namespace

    namespace = args.namespace or own_namespace()
    if not namespace:
        raise ConfigError(
            "--namespace is needed outside a pod (no POD_NAMESPACE, no service-account mount)"
        )
    return Names(namespace, args.service, args.webhook_config, args.secret)


async def _review(args: argparse.Namespace, config: Config) -> int:
    """Manifests on disk through the same decisions as admission (enforce really copies)."""
    from .admission.handler import Admission
    from .engine import open_engine
    from .metrics import Metrics
    from .offline import dump_documents, load_documents, review_documents

    inputs = [(name, _read_input(name)) for name in args.files or ["-"]]
    parsed = [(name, load_documents(name, text)) for name, text in inputs]
    documents, notes, denials = [], [], []
    async with open_engine(config) as engine:
        admission = Admission(engine, config, Metrics())
        for name, docs in parsed:
            report = await review_documents(admission, name, docs, args.mode)
            documents.extend(report.documents)
            notes.extend(report.notes)
            denials.extend(report.denials)
    if args.mode == "audit":
        print("\n".join([*notes, *denials]) or "nothing to back up")
        return 0
    for line in [*notes, *denials]:
        print(line, file=sys.stderr)
    if denials:
        return EXIT_FAILED  # no manifests printed: half-rewritten output is worse than none
    print(dump_documents(documents), end="")
    return 0


def _read_input(name: str) -> str:
    from .offline import ManifestError

    if name == "-":
        return sys.stdin.read()
    try:
        with open(name) as file:
            return file.read()
    except OSError as exc:
        raise ManifestError(f"cannot read {name}: {exc.strerror}") from None


def _target(text: str, source: Reference) -> tuple[Repository, str | None]:
    """`--to REPO[:TAG]`: without a tag of its own the target keeps the source's tag."""
    from .reference import InvalidReference, parse
    from .registry.client import Repository

    target = parse(text)
    if target.digest is not None:
        raise InvalidReference(text, "a copy target names a repository and tag, not a digest")
    explicit_tag = ":" in text.rsplit("/", 1)[-1]
    return Repository(
        target.registry, target.repository
    ), target.tag if explicit_tag else source.tag


def _config(args: argparse.Namespace) -> Config:
    from . import config as config_module
    from .reference import parse

    if getattr(args, "config", None):
        return config_module.load(*args.config)
    # Without a file, `--to` supplies the only registry we must know about.
    to = getattr(args, "to", None)
    if args.command is _copy and to is None:
        raise config_module.ConfigError("copy needs --config (for the backup registry) or --to")
    if args.command is _review:
        raise config_module.ConfigError("review needs --config (for the backup registry)")
    host = parse(to).registry if to else "localhost"
    return config_module.parse({"backupRegistry": {"host": host}}, "defaults")


def _run(command: Command, args: argparse.Namespace) -> int:
    import asyncio

    work = command(args, _config(args))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def _fail(message: str) -> None:
    """One line per problem (a configuration can have several), each saying it is an error."""
    for line in message.splitlines() or ["failed"]:
        print(f"image-backup: error: {line}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image-backup",
        description="Back up container images into a registry you control.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    copy = commands.add_parser(
        "copy", help="copy an image (all platforms) into the backup registry"
    )
    copy.add_argument("source", metavar="SOURCE", help="image reference to back up")
    copy.add_argument(
        "--to", metavar="TARGET", help="target repository[:tag] (default: the naming scheme)"
    )
    copy.add_argument("--config", metavar="FILE", action="append", help=CONFIG_HELP)
    copy.set_defaults(command=_copy)

    resolve = commands.add_parser("resolve", help="print the digest a reference points at")
    resolve.add_argument("reference", metavar="REF")
    resolve.add_argument("--config", metavar="FILE", action="append", help=CONFIG_HELP)
    resolve.set_defaults(command=_resolve)

    serve_command = commands.add_parser(
        "serve", help="run the admission webhook (HTTPS) until SIGTERM"
    )
    serve_command.add_argument(
        "--config", metavar="FILE", action="append", required=True, help=CONFIG_HELP
    )
    serve_command.add_argument(
        "--self-signed",
        action="store_true",
        help="issue the certificate into the Secret, set the caBundle, write certFile/keyFile "
        "and keep them renewed",
    )
    _add_certificate_options(serve_command, required=False)
    serve_command.add_argument(
        "--cert-check-interval",
        metavar="SECONDS",
        type=float,
        default=3600.0,
        help="with --self-signed: how often to re-check the certificate (default: hourly)",
    )
    serve_command.set_defaults(command=_serve)

    certs = commands.add_parser(
        "certs",
        help="create or renew the webhook's certificate in its Secret and set the caBundle",
    )
    _add_certificate_options(certs, required=True)
    certs.add_argument(
        "--write-dir", metavar="DIR", type=Path, help="also write tls.crt and tls.key here"
    )
    certs.set_defaults(command=_certs)

    review = commands.add_parser(
        "review",
        help="rewrite (enforce) or report on (audit) manifests on disk, as admission would",
    )
    review.add_argument(
        "-f",
        "--filename",
        action="append",
        dest="files",
        metavar="FILE",
        help="manifest file (multi-document YAML, kind: List), - for standard input; repeatable",
    )
    review.add_argument("--mode", choices=["enforce", "audit"], default="enforce")
    review.add_argument("--config", metavar="FILE", action="append", help=CONFIG_HELP)
    review.set_defaults(command=_review)

    backfill = commands.add_parser(
        "backfill",
        help="back up the images of the workloads already running in opted-in namespaces",
    )
    _add_pass_options(backfill)
    backfill.add_argument(
        "--rewrite",
        action="store_true",
        help="also update top-level workloads to run from their backups (each rolls out); "
        "default: backfill.rewrite",
    )
    backfill.add_argument("--config", metavar="FILE", action="append", help=CONFIG_HELP)
    backfill.set_defaults(command=_backfill)

    imagestreams = commands.add_parser(
        "imagestreams",
        help="back up every ImageStream tag, with its history, in opted-in namespaces (OpenShift)",
    )
    _add_pass_options(imagestreams)
    imagestreams.add_argument("--config", metavar="FILE", action="append", help=CONFIG_HELP)
    imagestreams.set_defaults(command=_imagestreams)

    revert = commands.add_parser(
        "revert",
        help="rewrite workloads back to the original images they record (dry run unless --apply)",
    )
    _add_namespaces(
        revert,
        help_text="only this namespace, opted in or not; repeatable (default: every opted-in one)",
    )
    revert.add_argument(
        "-l", "--selector", metavar="SELECTOR", help="only the objects this label selector selects"
    )
    revert.add_argument("--kind", metavar="KIND", help="with --name: only this object")
    revert.add_argument("--name", metavar="NAME", help="with --kind: only this object")
    revert.add_argument(
        "--apply", action="store_true", help="send the patches (default: print them)"
    )
    revert.add_argument(
        "--force", action="store_true", help="also revert to originals that cannot be read"
    )
    revert.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="the report's form"
    )
    revert.add_argument(
        "--config", metavar="FILE", action="append", required=True, help=CONFIG_HELP
    )
    revert.set_defaults(command=_revert)

    status = commands.add_parser(
        "status", help="which running images are protected by a backup, and which are not"
    )
    which = status.add_mutually_exclusive_group()
    _add_namespaces(which)
    which.add_argument(
        "--imagestream",
        metavar="NAMESPACE/NAME[:TAG]",
        type=_image_stream,
        help="instead: which images this OpenShift ImageStream's tags (or this tag) pointed "
        "at, newest first, and their backups",
    )
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.add_argument("--config", metavar="FILE", action="append", help=CONFIG_HELP)
    status.set_defaults(command=_status)

    restore = commands.add_parser(
        "restore",
        help="copy backups back into registries (digest-exact, all platforms, resumable)",
    )
    which_images = restore.add_argument_group("which images (at least one; any of them)")
    which_images.add_argument("--all", action="store_true", help="every backup")
    which_images.add_argument(
        "--source-registry",
        action="append",
        dest="source_registries",
        metavar="HOST",
        help="images that came from this registry; repeatable",
    )
    which_images.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="images whose record says NS's credentials read them (records only); repeatable",
    )
    which_images.add_argument(
        "--image",
        action="append",
        dest="images",
        metavar="GLOB",
        help="images whose source (HOST/PATH, HOST/PATH:TAG or HOST/PATH@DIGEST) matches; "
        "repeatable",
    )
    listed_by = restore.add_mutually_exclusive_group()
    listed_by.add_argument(
        "--from-backup-registry",
        action="store_true",
        help="list the backups from the backup registry, not the ImageBackup records "
        "(a new cluster without them)",
    )
    listed_by.add_argument(
        "--records",
        metavar="FILE",
        help="read the ImageBackup records from this export of them (kubectl get imagebackups "
        "-o yaml; - for standard input), not from the cluster",
    )
    restore.add_argument(
        "--to-registry",
        metavar="HOST[/PREFIX]",
        type=_to_registry,
        help="restore under this registry, keeping each source path (default: the source "
        "registry itself)",
    )
    restore.add_argument(
        "--namespace-map",
        action="append",
        metavar="OLD=NEW",
        type=_namespace_pair,
        help="rename the first path component OLD (an OpenShift namespace) to NEW; repeatable",
    )
    restore.add_argument(
        "--imagestreams",
        action="store_true",
        help="also point each recorded ImageStream tag at its restored newest image (OpenShift)",
    )
    restore.add_argument(
        "--dry-run", action="store_true", help="copy nothing: say what would be restored where"
    )
    restore.add_argument(
        "--config", metavar="FILE", action="append", required=True, help=CONFIG_HELP
    )
    restore.set_defaults(command=_restore)
    return parser


def _add_pass_options(parser: argparse.ArgumentParser) -> None:
    """What a pass (backfill, imagestreams) is given: where, whether to copy, its summary."""
    _add_namespaces(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="copy nothing: say what would be backed up"
    )
    parser.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="the summary's form"
    )


def _add_namespaces(
    parser: argparse._ActionsContainer,
    *,
    help_text: str = "only this opted-in namespace; repeatable (default: all of them)",
) -> None:
    parser.add_argument(
        "--namespace", action="append", dest="namespaces", metavar="NS", help=help_text
    )


def _add_certificate_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Where the webhook runs; `serve` defaults them, `certs` wants them said."""
    parser.add_argument(
        "--namespace",
        metavar="NS",
        help="the webhook's namespace (default: POD_NAMESPACE or the service-account mount)",
    )
    default = None if required else "image-backup"
    parser.add_argument(
        "--service",
        metavar="SVC",
        required=required,
        default=default,
        help="the webhook's Service" + ("" if required else " (default: image-backup)"),
    )
    parser.add_argument(
        "--webhook-config",
        metavar="NAME",
        required=required,
        default=default,
        help="the MutatingWebhookConfiguration whose caBundle to set"
        + ("" if required else " (default: image-backup)"),
    )
    parser.add_argument(
        "--secret",
        metavar="NAME",
        default=SECRET_NAME,
        help=f"the Secret holding the certificate (default: {SECRET_NAME})",
    )
