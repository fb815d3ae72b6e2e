#!/usr/bin/env bash
# Installs the real Kafka clients the "kafka clients" test stage drives, each pinned:
#   kcat (librdkafka's command-line client) from the distribution's packages (apt-get),
#   kafka-python 3.0.12 and confluent-kafka 2.16.1 in a Python venv,
#   KafkaJS 2.2.4 from npm,
#   kafka-python's own source distribution (its test/integration suite).
# Everything but kcat goes under $RINGMQ_KAFKA_CLIENTS (default target/kafka-clients), so a
# clean clone installs them again and `cargo clean` removes them. Idempotent: what is already
# there at the pinned version is kept. Prints the directory on its last line.
#
# Layout: venv/ (python), node/node_modules/kafkajs, kafka-python-src/ (unpacked sdist).
set -euo pipefail
cd "$(dirname "$0")/.."
# Installers' output goes to standard error; standard output carries only the directory.
exec 3>&1 1>&2
dir="${RINGMQ_KAFKA_CLIENTS:-$PWD/target/kafka-clients}"
mkdir -p "$dir"

KAFKA_PYTHON=3.0.12
CONFLUENT_KAFKA=2.16.1
KAFKAJS=2.2.4

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    env DEBIAN_FRONTEND=noninteractive "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo env DEBIAN_FRONTEND=noninteractive "$@"
  else
    echo "installing $* needs root or sudo" >&2
    return 1
  fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root apt-get install -y -qq --no-install-recommends "$@"
}

command -v kcat >/dev/null 2>&1 || apt_install kcat
if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi
if ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi

venv="$dir/venv"
if ! "$venv/bin/python" -c "import kafka, confluent_kafka, pytest, sys
sys.exit(0 if (kafka.__version__, confluent_kafka.version()[0]) == ('$KAFKA_PYTHON', '$CONFLUENT_KAFKA') else 1)" 2>/dev/null; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "kafka-python==$KAFKA_PYTHON" "confluent-kafka==$CONFLUENT_KAFKA" pytest
fi

node="$dir/node"
if [ "$(cd "$node" 2>/dev/null && node -p 'require("kafkajs/package.json").version' 2>/dev/null)" != "$KAFKAJS" ]; then
  mkdir -p "$node"
  (cd "$node" && npm install --silent --no-audit --no-fund --no-save "kafkajs@$KAFKAJS" >/dev/null)
fi

src="$dir/kafka-python-src"
if [ ! -f "$src/test/integration/test_producer_integration.py" ]; then
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --disable-pip-version-check --no-binary :all: --no-deps \
    "kafka-python==$KAFKA_PYTHON" -d "$tmp"
  rm -rf "$src"
  mkdir -p "$src"
  tar xzf "$tmp"/kafka_python-"$KAFKA_PYTHON".tar.gz -C "$src" --strip-components=1
  rm -rf "$tmp"
fi

echo "$dir" >&3
