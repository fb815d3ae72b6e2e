"""Stands in for kafka-python's `test/service.py`, which its source distribution does not ship
and which `test/integration/fixtures.py` imports. With `KAFKA_URI` set the fixtures use only an
external service (host, port, no process); spawning a broker or ZooKeeper is not possible here.
tests/kafka.rs (kafka_python_integration_suite) copies the sdist's `test/` into a temporary
directory and this file into it as `test/service.py`."""


class ExternalService:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def open(self):
        pass

    def close(self):
        pass


class SpawnedService:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("ringmq's run of the suite uses an external broker (KAFKA_URI) only")
