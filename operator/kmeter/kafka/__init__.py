"""kmeter's Kafka adapters: thin, typed shells over aiokafka, tested against a real broker.

One module per role, as aiokafka itself is laid out:

* :mod:`kmeter.kafka.settings` — how every kmeter process connects (``KafkaSettings``: address,
  TLS, SASL, credentials read from a mounted directory); every producer, consumer and admin
  client takes its options from ``KafkaSettings.client_options()``;
* :mod:`kmeter.kafka.tenant_credentials` — the ``kmeter-kafka`` Secret that carries those
  credentials into the Meters' namespaces, and how workers and sidecars mount it;
* :mod:`kmeter.kafka.admin` — opening and closing the admin client, and the one exception that
  says Kafka cannot be reached (``KafkaUnavailable``); :mod:`kmeter.kafka.clients` — starting
  consumers and producers so that one whose start fails is stopped, not leaked;
* :mod:`kmeter.kafka.topics` — the topic reconciler: desired topics in, Kafka brought to them,
  a typed outcome per topic back; :mod:`kmeter.kafka.groups` — consumer groups;
* :mod:`kmeter.kafka.partitions` — the partition a subject's events go to (Kafka's default
  partitioner), remembered, for the producers of usage events (the usage API, the sidecars).

aiokafka is untyped: its results are turned into this package's frozen dataclasses at the
boundary, and nothing untyped leaves it.
"""
