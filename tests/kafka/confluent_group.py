"""confluent-kafka (librdkafka 2) against ringmq.

`confluent_group.py resume BOOTSTRAP TOPIC GROUP`: as kafka_python_group.py, with zstd: an
idempotent acks=all producer, a group consumer that commits, a second one that resumes.

`confluent_group.py member BOOTSTRAP TOPIC GROUP`: one long-running member of the group that
prints a JSON line `{"assigned": [partitions]}` after every rebalance (and keeps consuming),
until killed. tests/kafka.rs runs two and kills one."""

import json
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

mode, bootstrap, topic, group = sys.argv[1:5]


def create(partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)


def produce(values):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "zstd",
        }
    )
    errors = []
    for i, v in enumerate(values):
        producer.produce(
            topic, key=str(i), value=v, on_delivery=lambda e, m: e and errors.append(str(e))
        )
    assert producer.flush(30) == 0, "unflushed messages"
    assert not errors, errors


def consumer(extra=None):
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    config.update(extra or {})
    return Consumer(config)


def consume(expected):
    c = consumer()
    c.subscribe([topic])
    seen = []
    deadline = time.time() + 30
    while len(seen) < expected and time.time() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        assert not m.error(), m.error()
        seen.append(m.value().decode())
    c.commit(asynchronous=False)
    c.close()
    return seen


if mode == "resume":
    create(3)
    first = [f"first-{i}" for i in range(30)]
    produce(first)
    seen_first = consume(len(first))
    second = [f"second-{i}" for i in range(20)]
    produce(second)
    seen_second = consume(len(second))
    print(json.dumps({"first": sorted(seen_first), "second": sorted(seen_second)}))
    sys.exit(0 if sorted(seen_first) == sorted(first) and sorted(seen_second) == sorted(second) else 1)
elif mode == "member":
    c = consumer()

    def on_assign(_consumer, partitions):
        print(json.dumps({"assigned": sorted(p.partition for p in partitions)}), flush=True)

    c.subscribe([topic], on_assign=on_assign)
    while True:
        m = c.poll(0.2)
        if m is not None and m.error():
            print(json.dumps({"error": str(m.error())}), flush=True)
else:
    sys.exit(f"unknown mode {mode}")
