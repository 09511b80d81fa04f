// A downstream service following Harmony Sync's change events on NATS JetStream.
//
// It keeps a durable consumer on the events stream, so after a restart it resumes where it
// left off; it records each event id it has handled before acknowledging, so a message
// delivered twice (a crash between handling and acknowledging) is handled once.
//
// Settings, from the environment:
//   NATS_URL       the server                       (default nats://127.0.0.1:4222)
//   HARMONY_STREAM the events stream                (default HARMONY_EVENTS)
//   FILTER         which events, by subject         (default harmony.events.>)
//                  e.g. harmony.events.acme.ws.>            every workspace-level event of acme
//                       harmony.events.*.*.<id>.*           one integration
//                       harmony.events.*.*.*.SyncFailed     one event type
//   DURABLE        the consumer's name              (default node-consumer)
//   SEEN_FILE      where handled ids are kept       (default ./seen-ids.txt)
//   COUNT          stop after this many new events (default 0: run forever)
//   ACK_WAIT       seconds before an unacknowledged message is delivered again (default 30)
//
// The consumer holds one message at a time (max_ack_pending 1): the next event is delivered
// once this one is acknowledged, so events arrive in log order even across a crash, when the
// unacknowledged one comes back first.
//
// Each handled event is printed as one JSON line: {"id", "type", "subject", "version", "seq"}.
import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { AckPolicy, DeliverPolicy, connect } from "nats";

const url = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const stream = process.env.HARMONY_STREAM ?? "HARMONY_EVENTS";
const filter = process.env.FILTER ?? "harmony.events.>";
const durable = process.env.DURABLE ?? "node-consumer";
const seenFile = process.env.SEEN_FILE ?? "./seen-ids.txt";
const count = Number(process.env.COUNT ?? "0");
const ackWaitSeconds = Number(process.env.ACK_WAIT ?? "30");

const seen = new Set(
  existsSync(seenFile) ? readFileSync(seenFile, "utf8").split("\n").filter(Boolean) : [],
);

const nc = await connect({ servers: url, name: durable });
const jsm = await nc.jetstreamManager();
try {
  await jsm.consumers.info(stream, durable);
} catch {
  // First start: a durable consumer from the beginning of the log, acknowledged one by one,
  // one in flight so that order survives a redelivery.
  await jsm.consumers.add(stream, {
    durable_name: durable,
    filter_subject: filter,
    deliver_policy: DeliverPolicy.All,
    ack_policy: AckPolicy.Explicit,
    max_ack_pending: 1,
    ack_wait: ackWaitSeconds * 1_000_000_000, // nanoseconds
  });
}
const consumer = await nc.jetstream().consumers.get(stream, durable);
const messages = await consumer.consume();
let handled = 0;
for await (const m of messages) {
  let event;
  try {
    event = JSON.parse(m.string());
  } catch {
    // Not an event (someone else published here): acknowledge it and go on.
    m.ack();
    continue;
  }
  if (!seen.has(event.id)) {
    // Handle the event; here, print it.
    console.log(
      JSON.stringify({
        id: event.id,
        type: event.type,
        subject: event.subject,
        version: event.streamversion,
        seq: m.seq,
      }),
    );
    seen.add(event.id);
    appendFileSync(seenFile, `${event.id}\n`);
    handled += 1;
  }
  await m.ackAck();
  if (count > 0 && handled >= count) {
    break;
  }
}
// Every handled message was acknowledged and confirmed (ackAck), so the connection can close
// at once rather than wait for the open pull request to expire.
messages.stop();
await nc.close();
