"""Reads every record of orderflow's Kafka topics with the CloudEvents
Python SDK and checks each one against the AsyncAPI document.

For every record: the SDK's Kafka protocol binding decodes it
(`from_kafka_event` picks binary or structured mode by itself, as any
consumer would); the event must be CloudEvents 1.0 from `urn:orderflow`,
the record key must be its `partitionkey`, the record must be on the topic
the AsyncAPI document gives its type, and the record value must validate
against that message's payload schema (formats checked too).

Usage: python3 read_cloudevents.py BOOTSTRAP TOPIC_PREFIX ASYNCAPI_URL
Prints {"types": {type: count}, "records": n} as JSON; exits 1 on the
first record that breaks the contract.
"""

import json
import sys
import urllib.request
import uuid

import jsonschema
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event
from confluent_kafka import Consumer, TopicPartition

bootstrap, prefix, asyncapi_url = sys.argv[1:4]
with urllib.request.urlopen(asyncapi_url) as answer:
    doc = json.load(answer)

# type name -> (topic, message id)
expected = {}
for channel in doc["channels"].values():
    for ref in channel["messages"].values():
        message_id = ref["$ref"].rsplit("/", 1)[1]
        expected[doc["components"]["messages"][message_id]["name"]] = (channel["address"], message_id)


def validator(message_id):
    # The whole document as the root, so the payload's $refs resolve in it;
    # JSON Schema ignores the AsyncAPI keywords around them.
    root = dict(doc)
    root["$ref"] = f"#/components/messages/{message_id}/payload"
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"cloudevents-reader-{uuid.uuid4()}",
    "enable.auto.commit": False,
})
assignments = []
for name in sorted({topic for topic, _ in expected.values()}):
    topic = prefix + name
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    if metadata.error is not None:
        fail(f"topic {topic}: {metadata.error}")
    for partition in metadata.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high > low:
            assignments.append((name, TopicPartition(topic, partition, low), high))

types = {}
records = 0
for name, partition, high in assignments:
    consumer.assign([partition])
    offset = partition.offset
    while offset < high:
        record = consumer.poll(10)
        if record is None:
            fail(f"{partition.topic}[{partition.partition}]: nothing at offset {offset} of {high}")
        if record.error():
            fail(f"{partition.topic}: {record.error()}")
        offset = record.offset() + 1
        headers = {key: value for key, value in (record.headers() or [])}
        event = from_kafka_event(KafkaMessage(headers=headers, key=record.key(), value=record.value()))
        where = f"{record.topic()}[{record.partition()}]@{record.offset()}"
        if headers.get("content-type", b"").split(b";")[0] != b"application/cloudevents+json":
            fail(f"{where}: content-type {headers.get('content-type')!r}")
        if event.get_specversion() != "1.0" or event.get_source() != "urn:orderflow":
            fail(f"{where}: specversion {event.get_specversion()} source {event.get_source()}")
        event_type = event.get_type()
        if event_type not in expected:
            fail(f"{where}: type {event_type} is not in the AsyncAPI document")
        topic, message_id = expected[event_type]
        if topic != name:
            fail(f"{where}: {event_type} belongs on {topic}")
        if record.key().decode() != event.get_extension("partitionkey"):
            fail(f"{where}: key {record.key()!r} is not the partitionkey")
        errors = sorted(validator(message_id).iter_errors(json.loads(record.value())), key=str)
        if errors:
            fail(f"{where}: {event_type} breaks its AsyncAPI payload: {errors[0].message} at {list(errors[0].absolute_path)}")
        types[event_type] = types.get(event_type, 0) + 1
        records += 1
consumer.close()
print(json.dumps({"types": types, "records": records}))
