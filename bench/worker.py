"""One copy by our engine, in its own process: ``python -m bench.worker ...`` (see bench.copy).

Times only ``engine.copy`` (as a long-running webhook runs it: interpreter start, imports
and building the engine excluded) and prints one JSON line: seconds, the copied digest,
the engine's stats and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import uvloop

from webhook import config as config_module
from webhook.config import Config
from webhook.engine import open_engine
from webhook.reference import parse
from webhook.registry.client import Repository

DEADLINE_SECONDS = 600.0


async def run(config: Config, args: argparse.Namespace) -> dict[str, object]:
    host = config.backup_registry.host
    source = parse(args.source)
    async with open_engine(config) as engine:
        if args.warm:  # untimed: the target now holds the blobs and the engine knows where
            await engine.copy(
                source,
                Repository(host, args.warm),
                tag=args.tag,
                deadline=time.monotonic() + DEADLINE_SECONDS,
            )
        start = time.perf_counter()
        result = await engine.copy(
            source,
            Repository(host, args.target),
            tag=args.tag,
            deadline=time.monotonic() + DEADLINE_SECONDS,
        )
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "digest": result.digest,
        "stats": dataclasses.asdict(result.stats),
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--config", required=True, help="engine configuration (JSON)")
    parser.add_argument("--source", required=True, help="source image reference")
    parser.add_argument("--target", required=True, help="target repository path")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--warm", help="first copy, untimed, into this repository path")
    args = parser.parse_args()
    with open(args.config) as f:
        config = config_module.parse(json.load(f), args.config)
    print(json.dumps(uvloop.run(run(config, args))), flush=True)


if __name__ == "__main__":
    main()
