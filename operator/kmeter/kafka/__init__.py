"""kmeter's Kafka adapters: thin, typed shells over aiokafka, tested against a real broker.

One module per role, as aiokafka itself is laid out:

* :mod:`kmeter.kafka.admin` — connection settings, opening and closing the admin client, and
  the one exception that says Kafka cannot be reached (``KafkaUnavailable``);
* :mod:`kmeter.kafka.topics` — the topic reconciler: desired topics in, Kafka brought to them,
  a typed outcome per topic back.

The producer and consumer adapters (usage API, sidecar, aggregation workers) come later, beside
these, and take their connection options from the same
:class:`~kmeter.kafka.admin.KafkaSettings`.

aiokafka is untyped: its results are turned into this package's frozen dataclasses at the
boundary, and nothing untyped leaves it.
"""
