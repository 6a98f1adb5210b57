#!/usr/bin/env python3
"""Reads a whole Kafka topic (every partition, from its first offset to the end it has when
the script starts) and prints one JSON line per message: {"partition", "offset", "key",
"headers", "sha256" (of the value bytes), "value"}, where "value" holds the OCSF fields the
test checks (metadata.uid, metadata.event_code, class_uid, activity_id, file.path), or, with
--full, the whole parsed value.

Used by tests/tests/kafka.rs to check what the collector's Kafka sink produced, as a SIEM
connector would read it: with librdkafka (the confluent-kafka wheel), through Metadata,
ListOffsets and Fetch. No consumer group is joined (partitions are assigned directly) and no
offset is committed.
"""

import argparse
import hashlib
import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole read")
    ap.add_argument("--full", action="store_true", help="print whole values")
    args = ap.parse_args()
    started = time.monotonic()
    deadline = started + args.timeout

    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            # Required by the client; never used: no subscribe, no commit.
            "group.id": "nhi-sensor-tests",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # Small fetches: each answered quickly, even by a slow broker.
            "fetch.max.bytes": 4 << 20,
            "max.partition.fetch.bytes": 1 << 20,
        }
    )
    md = consumer.list_topics(args.topic, timeout=20)
    topic = md.topics.get(args.topic)
    if topic is None or topic.error is not None:
        print(f"topic {args.topic}: {topic.error if topic else 'missing'}", file=sys.stderr)
        return 2
    ends = {}
    for p in sorted(topic.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=20)
        ends[p] = high
        print(f"partition {p}: offsets {low}..{high}", file=sys.stderr)
    todo = {p for p, high in ends.items() if high > 0}
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in todo])
    n = 0
    out = sys.stdout

    def done(p):
        if p in todo:
            todo.discard(p)
            print(f"partition {p} read after {time.monotonic() - started:.1f} s", file=sys.stderr)

    while todo:
        if time.monotonic() > deadline:
            print(f"timed out; partitions not read to the end: {sorted(todo)}", file=sys.stderr)
            return 1
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == -191:  # _PARTITION_EOF
                if msg.offset() >= ends.get(msg.partition(), 0):
                    done(msg.partition())
                continue
            raise KafkaException(msg.error())
        p = msg.partition()
        if p in todo and msg.offset() < ends[p]:
            headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
            value = json.loads(msg.value())
            if not args.full:
                value = {
                    "metadata": {
                        "uid": value.get("metadata", {}).get("uid"),
                        "event_code": value.get("metadata", {}).get("event_code"),
                    },
                    "class_uid": value.get("class_uid"),
                    "activity_id": value.get("activity_id"),
                    "file": {"path": (value.get("file") or {}).get("path")},
                }
            out.write(
                json.dumps(
                    {
                        "partition": p,
                        "offset": msg.offset(),
                        "key": msg.key().decode() if msg.key() is not None else None,
                        "headers": headers,
                        "sha256": hashlib.sha256(msg.value()).hexdigest(),
                        "value": value,
                    }
                )
                + "\n"
            )
            n += 1
        if msg.offset() + 1 >= ends.get(p, 0):
            done(p)
    consumer.close()
    print(f"read {n} messages in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
