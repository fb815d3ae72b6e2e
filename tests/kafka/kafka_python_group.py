"""kafka-python 3 against ringmq: create a topic, an idempotent acks=all producer, a group
consumer that commits, and a second consumer of the group that resumes after the commit.

Usage: kafka_python_group.py BOOTSTRAP TOPIC GROUP. Prints one JSON line with what it saw;
exits non-zero on any failure (tests/kafka.rs checks both). KAFKA_SECURITY, when set, is a
JSON object of kafka-python settings every client gets (security_protocol, sasl_mechanism,
sasl_plain_username, sasl_plain_password, ssl_cafile: tests/kafka_security.rs)."""

import json
import os
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

bootstrap, topic, group = sys.argv[1:4]
PARTITIONS = 3
security = json.loads(os.environ.get("KAFKA_SECURITY", "{}"))

admin = KafkaAdminClient(bootstrap_servers=bootstrap, **security)
admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
admin.close()


def produce(values):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, retries=5, **security
    )
    futures = [
        producer.send(topic, key=str(i).encode(), value=v.encode()) for i, v in enumerate(values)
    ]
    producer.flush()
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close()
    return offsets


def consume(expected):
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        consumer_timeout_ms=20000,
        **security,
    )
    seen = []
    for message in consumer:
        seen.append(message.value.decode())
        if len(seen) >= expected:
            break
    consumer.commit()
    committed = {
        p: consumer.committed(p) for p in consumer.assignment()
    }
    consumer.close()
    return seen, {f"{tp.partition}": off for tp, off in committed.items()}


first = [f"first-{i}" for i in range(30)]
produce(first)
seen_first, committed_first = consume(len(first))
second = [f"second-{i}" for i in range(20)]
produce(second)
seen_second, committed_second = consume(len(second))
print(
    json.dumps(
        {
            "first": sorted(seen_first),
            "second": sorted(seen_second),
            "committed_first": committed_first,
            "committed_second": committed_second,
        }
    )
)
# Offsets are dense from 0 on each partition, so the committed positions (next offset to
# read) sum to the records produced so far: 30 after the first run, 50 after the second.
ok = (
    sorted(seen_first) == sorted(first)
    and sorted(seen_second) == sorted(second)
    and sum(committed_first.values()) == len(first)
    and sum(committed_second.values()) == len(first) + len(second)
    and len(committed_second) == PARTITIONS
)
sys.exit(0 if ok else 1)
