"""What an event is on the wire: its stream (one per region and family), its fields, and the
JSON a consumer gets. Shared by the relay that writes entries, the consumers that read them and
the CLI that shows them."""

from __future__ import annotations

from typing import Any

import msgspec

FAMILIES = ("transfer", "saga", "account", "player", "webhook")
STREAM_PREFIX = "regiongate:events"
DEAD_LETTER_SUFFIX = ":dead"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event as consumers see it (docs/events.md; its data follows the JSON Schema of its
    type, events/schemas/v1)."""

    id: str
    type: str
    region: str
    aggregate_type: str
    aggregate_id: str
    version: int
    time: str
    data: dict[str, Any]
    schema_version: int = 1


_encode = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode


def stream_name(region: str, family: str) -> str:
    return f"{STREAM_PREFIX}:{region}:{family}"


def dead_letter_stream(stream: str) -> str:
    return stream + DEAD_LETTER_SUFFIX


def to_fields(event: Event) -> dict[str, str]:
    """The entry's fields: flat strings, the data as JSON."""
    return {
        "id": event.id,
        "type": event.type,
        "region": event.region,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "version": str(event.version),
        "time": event.time,
        "schema_version": str(event.schema_version),
        "data": _encode(event.data).decode(),
    }


def from_fields(fields: dict) -> Event:
    """An entry's fields (bytes or str keys and values, as redis-py gives them) as an Event."""
    text = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    return Event(
        id=text["id"],
        type=text["type"],
        region=text["region"],
        aggregate_type=text["aggregate_type"],
        aggregate_id=text["aggregate_id"],
        version=int(text["version"]),
        time=text["time"],
        data=_decode_data(text["data"]),
        schema_version=int(text.get("schema_version", "1")),
    )


def to_json(event: Event) -> bytes:
    return _encode(event)
