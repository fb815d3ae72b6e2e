"""kafka-python 3 as the producer of a SIGKILL test: an idempotent acks=all producer sends
COUNT unique values round-robin over PARTITIONS partitions, in flushed rounds of 50, and
prints one JSON line per outcome as it comes: {"value", "partition", "offset"} for an
acknowledged record, {"value", "error"} for one that failed. Retries are unbounded within a
two-minute delivery timeout, so the broker being killed and restarted meanwhile shows as
retried batches, not as failures.

Usage: kafka_python_durable.py BOOTSTRAP TOPIC PARTITIONS COUNT. Prints {"done": N} last."""

import json
import sys

from kafka import KafkaProducer

bootstrap, topic, partitions, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

producer = KafkaProducer(
    bootstrap_servers=bootstrap,
    acks="all",
    enable_idempotence=True,
    retries=2**31 - 1,
    retry_backoff_ms=50,
    reconnect_backoff_ms=50,
    reconnect_backoff_max_ms=200,
    request_timeout_ms=5000,
    delivery_timeout_ms=120000,
    linger_ms=2,
    max_in_flight_requests_per_connection=5,
)


def report(value):
    def acked(metadata):
        print(json.dumps({"value": value, "partition": metadata.partition, "offset": metadata.offset}), flush=True)

    def failed(error):
        print(json.dumps({"value": value, "error": repr(error)}), flush=True)

    return acked, failed


# Rounds of 50 sends, each round flushed: traffic keeps flowing while the broker is killed,
# and a round's batches are in flight (and retried) together.
for i in range(count):
    value = f"kp-{i}"
    future = producer.send(topic, value=value.encode(), partition=i % partitions)
    acked, failed = report(value)
    future.add_callback(acked)
    future.add_errback(failed)
    if i % 50 == 49:
        producer.flush(timeout=130)
producer.flush(timeout=130)
producer.close(timeout=10)
print(json.dumps({"done": count}), flush=True)
