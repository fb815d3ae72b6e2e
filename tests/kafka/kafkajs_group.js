// KafkaJS 2 against ringmq: admin (create a topic), a producer with acks -1, a group consumer
// that reads every message. Usage: node kafkajs_group.js BOOTSTRAP TOPIC GROUP; prints one JSON
// line; exits non-zero on failure.
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, topic, groupId] = process.argv.slice(2);
const kafka = new Kafka({ clientId: 'ringmq-test', brokers: [bootstrap], logLevel: logLevel.WARN });
const COUNT = 25;

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true });
  await admin.disconnect();

  const producer = kafka.producer();
  await producer.connect();
  const messages = Array.from({ length: COUNT }, (_, i) => ({ key: `k${i}`, value: `v${i}` }));
  await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 1000 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${COUNT} in 30 s`)), 30000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.push(message.value.toString());
        if (seen.length >= COUNT) {
          clearTimeout(timer);
          resolve();
        }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  const expected = messages.map((m) => m.value).sort();
  const ok = JSON.stringify(seen.slice().sort()) === JSON.stringify(expected);
  console.log(JSON.stringify({ seen: seen.length, ok }));
  process.exit(ok ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
