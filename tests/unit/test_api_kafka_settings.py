"""``kmeter api`` connects to Kafka with the TLS and SASL settings the chart gives it."""

from __future__ import annotations

import pytest

from kmeter.api.app import ApiSettings


def test_the_api_reads_tls_and_sasl_from_the_environment_and_its_bootstrap_from_the_flag() -> None:
    kafka = ApiSettings(kafka_bootstrap="kafka-0:9093").kafka(
        {
            "KMETER_KAFKA_BOOTSTRAP": "ignored:1",
            "KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KMETER_KAFKA_CA_FILE": "/etc/kafka/ca.crt",
            "KMETER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KMETER_KAFKA_SASL_USERNAME": "api",
            "KMETER_KAFKA_SASL_PASSWORD": "secret",
        }
    )
    assert (kafka.bootstrap_servers, kafka.client_id) == ("kafka-0:9093", "kmeter-api")
    assert (kafka.security_protocol, kafka.ssl_cafile) == ("SASL_SSL", "/etc/kafka/ca.crt")
    assert (kafka.sasl_mechanism, kafka.sasl_username) == ("SCRAM-SHA-256", "api")


def test_sasl_without_credentials_is_refused_with_what_is_missing() -> None:
    with pytest.raises(ValueError, match="needs a SASL mechanism"):
        ApiSettings(kafka_bootstrap="kafka:9093").kafka(
            {"KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
        )
