"""``regiongate events tail | replay``: what the relay published, for an operator. The streams
come from the local cluster's state (``--data-dir``) or ``--redis-url``; every entry prints as
one JSON line with its cursor (the stream entry id), which ``replay --from`` takes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from events.streams import FAMILIES, from_fields, stream_name

EXIT_OK, EXIT_FAILED = 0, 1
TAIL_COUNT_MAX = 10_000


def add_commands(commands) -> None:
    events = commands.add_parser(
        "events", help="the event streams: tail them, replay them to a consumer group"
    ).add_subparsers(dest="events_command", required=True)
    tail = events.add_parser("tail", help="print a region's latest events, then follow")
    _stream_arguments(tail)
    tail.add_argument(
        "--count", type=int, default=20, help=f"the last N (at most {TAIL_COUNT_MAX})"
    )
    tail.add_argument("--follow", action="store_true", help="keep printing new events")
    tail.set_defaults(handler=cmd_tail)
    replay = events.add_parser(
        "replay",
        help="from a cursor: print the events, or with --group rewind that consumer group so "
        "its consumers receive them again",
    )
    _stream_arguments(replay)
    replay.add_argument("--from", dest="cursor", required=True, help="a cursor tail printed")
    replay.add_argument("--group", help="the consumer group to rewind (its inbox dedupes)")
    replay.add_argument("--count", type=int, default=1_000, help="with no --group: print N")
    replay.set_defaults(handler=cmd_replay)


def _stream_arguments(parser) -> None:
    parser.add_argument("--region", required=True)
    parser.add_argument("--family", choices=FAMILIES, action="append", help="repeatable; all")
    parser.add_argument("--data-dir", default=".local", help="the local cluster")
    parser.add_argument("--redis-url", help="the events' Redis (else the local cluster's)")


def _redis_url(args) -> str:
    if args.redis_url:
        return args.redis_url
    from infra.local import read_state

    return read_state(Path(args.data_dir))["events_redis"]


def _print(stream: str, entry_id, fields) -> None:
    event = from_fields(fields)
    cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    line = {"cursor": cursor, "stream": stream, **json.loads(json.dumps(event, default=_plain))}
    print(json.dumps(line, sort_keys=False), flush=True)


def _plain(value):
    return {name: getattr(value, name) for name in value.__struct_fields__}


def cmd_tail(args) -> int:
    if not 1 <= args.count <= TAIL_COUNT_MAX:
        print(f"--count must be in [1, {TAIL_COUNT_MAX}]", file=sys.stderr)
        return EXIT_FAILED
    return asyncio.run(_tail(args))


async def _tail(args) -> int:
    client = aioredis.from_url(_redis_url(args))
    streams = [stream_name(args.region, f) for f in args.family or FAMILIES]
    try:
        latest = []
        last = {}
        for stream in streams:
            entries = await client.xrevrange(stream, "+", "-", count=args.count)
            latest.extend((entry_id, stream, fields) for entry_id, fields in entries)
            last[stream] = entries[0][0] if entries else "0-0"
        latest.sort(key=lambda item: _order(item[0]))
        for entry_id, stream, fields in latest[-args.count :]:
            _print(stream, entry_id, fields)
        while args.follow:
            replies = await client.xread(last, block=1_000, count=100)
            for stream, entries in replies or []:
                name = stream.decode() if isinstance(stream, bytes) else stream
                for entry_id, fields in entries:
                    _print(name, entry_id, fields)
                    last[name] = entry_id
    except KeyboardInterrupt:
        pass
    finally:
        await client.aclose()
    return EXIT_OK


def _order(entry_id) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def cmd_replay(args) -> int:
    return asyncio.run(_replay(args))


async def _replay(args) -> int:
    client = aioredis.from_url(_redis_url(args))
    streams = [stream_name(args.region, f) for f in args.family or FAMILIES]
    try:
        if args.group:
            rewound = 0
            for stream in streams:
                try:
                    groups = [g["name"].decode() for g in await client.xinfo_groups(stream)]
                except ResponseError:  # no such stream (nothing published to it yet)
                    continue
                if args.group not in groups:
                    continue
                await client.xgroup_setid(stream, args.group, _before(args.cursor))
                print(f"{stream}: group {args.group} rewound to read from {args.cursor}")
                rewound += 1
            if not rewound:
                print(f"no consumer group {args.group} on {', '.join(streams)}", file=sys.stderr)
                return EXIT_FAILED
            return EXIT_OK
        for stream in streams:
            for entry_id, fields in await client.xrange(stream, args.cursor, "+", count=args.count):
                _print(stream, entry_id, fields)
        return EXIT_OK
    finally:
        await client.aclose()


def _before(cursor: str) -> str:
    """The id a group's last-delivered must be for its next read to start at cursor."""
    ms, seq = _order(cursor)
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms else "0-0"
