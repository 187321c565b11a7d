"""The usage API's OpenAPI 3.1 document, built here and served at ``/openapi.json``.

The repository keeps a copy in ``docs/openapi.json``; ``tests/unit/test_api_openapi.py`` fails
when it differs from :func:`document`. Regenerate it with::

    python -m kmeter.api.openapi > docs/openapi.json

Schemas follow OpenMeter's (``Event``, ``Meter``, ``MeterQueryResult``, ``MeterQueryRow``, the
problem responses), so its clients work unchanged; kmeter's differences are stated in the
descriptions. The integration tests check every answer of a real server against this document
(status codes, content types and body schemas, errors included).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kmeter import __version__
from kmeter.core.events import EXTENSION_NAME_PATTERN, JSON_MEDIA_TYPE_PATTERN, TIME_PATTERN

PROBLEM = "application/problem+json"

_STATUS_TEXT = {
    400: "The request is malformed or cannot be answered; `detail` says why.",
    401: "No valid bearer token.",
    403: "The token is not valid for the namespace named in the path.",
    404: "No such Meter or Quota in the namespace (or no such route).",
    409: "The namespace has no ingest topic yet (it comes with its first Meter).",
    413: "The body or the batch is larger than the limits.",
    415: "The Content-Type is not one of the accepted ones.",
    500: "An unexpected error (logged).",
    503: "Kafka is unreachable, or the Meter's totals are still loading; see Retry-After.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": _STATUS_TEXT[status],
            "content": {PROBLEM: {"schema": _ref("Problem")}},
        }
        for status in statuses
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


NAMESPACE_PARAM = {
    "name": "namespace",
    "in": "path",
    "required": True,
    "description": "A namespace the token is valid for (403 otherwise).",
    "schema": {"type": "string"},
}
METER_PARAM = {
    "name": "meterIdOrSlug",
    "in": "path",
    "required": True,
    "description": "The Meter's name (its slug) in the namespace.",
    "schema": {"type": "string"},
}
RANGE_PARAMS = [
    {
        "name": "from",
        "in": "query",
        "description": "Start (inclusive), RFC 3339; on a boundary of the Meter's stored "
        "windows. Absent: from the first usage.",
        "schema": {"type": "string", "format": "date-time"},
    },
    {
        "name": "to",
        "in": "query",
        "description": "End (exclusive), RFC 3339; on a boundary of the Meter's stored "
        "windows. Absent: to the last usage.",
        "schema": {"type": "string", "format": "date-time"},
    },
]
QUERY_PARAMS = [
    *RANGE_PARAMS,
    {
        "name": "windowSize",
        "in": "query",
        "description": "Roll up into windows of this size in windowTimeZone's calendar. "
        "Absent: one row per subject and group for the whole range.",
        "schema": _ref("WindowSize"),
    },
    {
        "name": "windowTimeZone",
        "in": "query",
        "description": "IANA time zone of the windows (default UTC). An inexact roll-up "
        "(e.g. a DAY-storage Meter by Asia/Kolkata days) is refused with 400.",
        "schema": {"type": "string", "default": "UTC"},
    },
    {
        "name": "subject",
        "in": "query",
        "description": "Only these subjects (repeatable); implies grouping by subject.",
        "schema": {"type": "array", "items": {"type": "string"}},
        "explode": True,
    },
    {
        "name": "groupBy",
        "in": "query",
        "description": "Keep these groupBy names of the Meter apart (repeatable); `subject` "
        "groups by subject. Absent: one total per window over all subjects and groups.",
        "schema": {"type": "array", "items": {"type": "string"}},
        "explode": True,
    },
    {
        "name": "filterGroupBy",
        "in": "query",
        "description": "Exact matches on groupBy values: filterGroupBy[model]=gpt-4o.",
        "style": "deepObject",
        "explode": True,
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    {
        "name": "clientId",
        "in": "query",
        "description": "Accepted for OpenMeter compatibility and ignored.",
        "schema": {"type": "string"},
    },
]

_ERRORS_AUTH = (401, 403, 500)


def _operations() -> dict[str, dict[str, Any]]:
    """The API's operations by path relative to the API prefix."""
    return {
        "/events": {
            "post": {
                "operationId": "ingestEvents",
                "summary": "Ingest events",
                "description": "One CloudEvent or a batch. 204 once Kafka acknowledged every "
                "event (acks=all). A batch with any invalid event is refused whole (400, each "
                "invalid event's index and field in extensions.validationErrors).",
                "tags": ["Events"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/cloudevents+json": {"schema": _ref("Event")},
                        "application/cloudevents-batch+json": {
                            "schema": {"type": "array", "items": _ref("Event")}
                        },
                        "application/json": {
                            "schema": {
                                "oneOf": [_ref("Event"), {"type": "array", "items": _ref("Event")}]
                            }
                        },
                    },
                },
                "responses": {
                    "204": {"description": "Every event is durably in Kafka."},
                    **_problems(400, *_ERRORS_AUTH, 409, 413, 415, 503),
                },
            }
        },
        "/meters": {
            "get": {
                "operationId": "listMeters",
                "summary": "List meters",
                "description": "The Meters of the namespace.",
                "tags": ["Meters"],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Meter")}, "The Meters."),
                    **_problems(400, *_ERRORS_AUTH),
                },
            }
        },
        "/meters/{meterIdOrSlug}": {
            "get": {
                "operationId": "getMeter",
                "summary": "Get meter",
                "tags": ["Meters"],
                "parameters": [METER_PARAM],
                "responses": {
                    "200": _json(_ref("Meter"), "The Meter."),
                    **_problems(400, *_ERRORS_AUTH, 404),
                },
            }
        },
        "/meters/{meterIdOrSlug}/query": {
            "get": {
                "operationId": "queryMeter",
                "summary": "Query meter",
                "description": "Usage per window, subject and group; exact values. JSON by "
                "default, CSV with Accept: text/csv.",
                "tags": ["Meters"],
                "parameters": [METER_PARAM, *QUERY_PARAMS],
                "responses": {
                    "200": {
                        "description": "The usage.",
                        "content": {
                            "application/json": {"schema": _ref("MeterQueryResult")},
                            "text/csv": {
                                "schema": {"type": "string"},
                                "example": "window_start,window_end,subject,model,value\r\n"
                                "2024-05-01T00:00:00Z,2024-05-02T00:00:00Z,customer-1,gpt-4o,"
                                "1234\r\n",
                            },
                        },
                    },
                    **_problems(400, *_ERRORS_AUTH, 404, 503),
                },
            }
        },
        "/meters/{meterIdOrSlug}/subjects": {
            "get": {
                "operationId": "listMeterSubjects",
                "summary": "List meter subjects",
                "description": "Subjects with usage in the range, sorted.",
                "tags": ["Meters"],
                "parameters": [METER_PARAM, *RANGE_PARAMS],
                "responses": {
                    "200": _json({"type": "array", "items": {"type": "string"}}, "Subjects."),
                    **_problems(400, *_ERRORS_AUTH, 404, 503),
                },
            }
        },
        "/quotas": {
            "get": {
                "operationId": "listQuotas",
                "summary": "List quotas",
                "description": "The namespace's Quotas, as their workers publish them, with "
                "how many subjects are over and near their limit this period (docs/quotas.md).",
                "tags": ["Quotas"],
                "responses": {
                    "200": _json(_ref("QuotaList"), "The Quotas, sorted by name."),
                    **_problems(400, *_ERRORS_AUTH),
                },
            }
        },
        "/quotas/{quota}/subjects/{subject}": {
            "get": {
                "operationId": "getQuotaSubject",
                "summary": "A subject's usage of a quota",
                "description": "Used, limit, remaining and when the period resets. A subject "
                "without usage this period has used 0.",
                "tags": ["Quotas"],
                "parameters": [
                    {
                        "name": "quota",
                        "in": "path",
                        "required": True,
                        "description": "The Quota's name in the namespace.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "subject",
                        "in": "path",
                        "required": True,
                        "description": "The subject (customer), URL-encoded.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(_ref("QuotaSubject"), "The subject's standing this period."),
                    **_problems(400, *_ERRORS_AUTH, 404),
                },
            }
        },
    }


def _namespaced(operation: dict[str, Any]) -> dict[str, Any]:
    copy = dict(operation)
    copy["operationId"] = operation["operationId"] + "InNamespace"
    copy["parameters"] = [NAMESPACE_PARAM, *operation.get("parameters", [])]
    return copy


SCHEMAS: dict[str, Any] = {
    "Event": {
        "type": "object",
        "description": "A CloudEvents 1.0 usage event (docs/core.md, 'The event contract').",
        "required": ["specversion", "id", "source", "type", "subject"],
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": {"type": "string", "minLength": 1},
            "source": {"type": "string", "minLength": 1},
            "type": {"type": "string", "minLength": 1},
            "subject": {"type": "string", "minLength": 1},
            "time": {
                "type": ["string", "null"],
                "format": "date-time",
                "pattern": TIME_PATTERN,
                "description": "RFC 3339 with Z or an offset, from 1970-01-01 to before "
                "9000-01-01 in UTC; absent or null: the time of ingest.",
            },
            "datacontenttype": {
                "type": ["string", "null"],
                "pattern": JSON_MEDIA_TYPE_PATTERN,
                "description": "A JSON media type: application/json, text/json or */*+json.",
            },
            "dataschema": {"type": ["string", "null"], "minLength": 1},
            "data": {
                "type": ["object", "null"],
                "description": (
                    "The event's data. The request body nests at most 200 levels in all "
                    "(the event object and a batch's array count)."
                ),
            },
            "data_base64": {
                "type": "null",
                "description": "Refused unless null: kmeter reads data as JSON.",
            },
        },
        # every other attribute name is lower-case letters and digits too
        "propertyNames": {"pattern": f"^(?:{EXTENSION_NAME_PATTERN[1:-1]}|data_base64)$"},
        "additionalProperties": {
            "type": ["string", "number", "boolean", "null"],
            "description": "CloudEvents extension attributes: lower-case ASCII letters and "
            "digits in the name, a string, number or boolean as the value.",
        },
    },
    "WindowSize": {"type": "string", "enum": ["MINUTE", "HOUR", "DAY", "MONTH"]},
    "Meter": {
        "type": "object",
        "description": "A Meter (kmeter.io/v1alpha1) in OpenMeter's shape.",
        "required": ["id", "slug", "aggregation", "eventType", "groupBy", "windowSize"],
        "properties": {
            "id": {"type": "string", "description": "The Meter's uid."},
            "slug": {"type": "string", "description": "The Meter's name."},
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "description": {"type": "string", "description": "Annotation kmeter.io/description."},
            "aggregation": {
                "type": "string",
                "enum": ["SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"],
            },
            "eventType": {"type": "string"},
            "valueProperty": {"type": "string"},
            "groupBy": {"type": "object", "additionalProperties": {"type": "string"}},
            "windowSize": {
                "type": "string",
                "enum": ["MINUTE", "HOUR", "DAY"],
                "description": "The storage window size.",
            },
            "createdAt": {"type": "string", "format": "date-time"},
        },
    },
    "MeterQueryRow": {
        "type": "object",
        "required": ["value", "windowStart", "windowEnd", "subject", "groupBy"],
        "properties": {
            "value": {
                "type": ["number", "null"],
                "description": "Exact: the JSON number text is the exact decimal result.",
            },
            "windowStart": {"type": "string", "format": "date-time"},
            "windowEnd": {"type": "string", "format": "date-time"},
            "subject": {"type": ["string", "null"]},
            "groupBy": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
        },
    },
    "MeterQueryResult": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
            "windowSize": _ref("WindowSize"),
            "data": {"type": "array", "items": _ref("MeterQueryRow")},
        },
    },
    "Quota": {
        "type": "object",
        "description": "A Quota (kmeter.io/v1alpha1) as its Meter's worker evaluates it.",
        "required": [
            "name",
            "meter",
            "limit",
            "period",
            "timeZone",
            "enforcement",
            "subjectsOver",
            "subjectsNear",
        ],
        "properties": {
            "name": {"type": "string"},
            "meter": {"type": "string", "description": "The Meter whose usage is limited."},
            "limit": {"type": "string", "description": "The limit, an exact decimal."},
            "period": {"type": "string", "enum": ["HOUR", "DAY", "MONTH"]},
            "timeZone": {"type": "string", "description": "IANA time zone of the periods."},
            "enforcement": {"type": "string", "enum": ["Block", "Notify"]},
            "subjectsOver": {
                "type": "integer",
                "minimum": 0,
                "description": "Subjects at or over their limit this period.",
            },
            "subjectsNear": {
                "type": "integer",
                "minimum": 0,
                "description": "Subjects past a notifyAt threshold below 100 %, not over.",
            },
        },
    },
    "QuotaList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Quota")}},
    },
    "QuotaSubject": {
        "type": "object",
        "required": [
            "quota",
            "subject",
            "used",
            "limit",
            "remaining",
            "periodStart",
            "resetsAt",
            "blocked",
            "enforcement",
            "notified",
        ],
        "properties": {
            "quota": {"type": "string"},
            "subject": {"type": "string"},
            "used": {"type": "string", "description": "Usage this period, an exact decimal."},
            "limit": {"type": "string", "description": "The subject's limit (its override)."},
            "remaining": {"type": "string", "description": "max(limit - used, 0)."},
            "periodStart": {"type": "string", "format": "date-time"},
            "resetsAt": {
                "type": "string",
                "format": "date-time",
                "description": "The end of the period, when usage starts from 0 again.",
            },
            "blocked": {
                "type": "boolean",
                "description": "Whether the sidecars refuse the subject (429) until resetsAt.",
            },
            "enforcement": {"type": "string", "enum": ["Block", "Notify"]},
            "notified": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "The notifyAt thresholds (percent) fired this period.",
            },
        },
    },
    "ValidationError": {
        "type": "object",
        "required": ["field", "code", "message"],
        "properties": {
            "index": {"type": "integer", "description": "The event's index in a batch."},
            "field": {"type": "string"},
            "code": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details, as OpenMeter sends them.",
        "required": ["type", "title", "status", "detail", "instance"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "extensions": {
                "type": "object",
                "properties": {
                    "validationErrors": {"type": "array", "items": _ref("ValidationError")},
                    "parameter": {"type": "string"},
                },
            },
        },
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    paths: dict[str, Any] = {}
    operations = _operations()
    for path, methods in operations.items():
        paths[f"/api/v1{path}"] = methods
    for path, methods in operations.items():
        paths[f"/api/v1/namespaces/{{namespace}}{path}"] = {
            method: _namespaced(operation) for method, operation in methods.items()
        }
    plain = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    paths["/openapi.json"] = {"get": {"operationId": "getOpenAPI", "responses": {"200": plain}}}
    paths["/healthz"] = {"get": {"operationId": "healthz", "responses": {"200": plain}}}
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "responses": {
                "200": plain,
                "503": {
                    "description": "Totals still loading.",
                    "content": {PROBLEM: {"schema": _ref("Problem")}},
                },
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    for path, methods in paths.items():
        if path.startswith("/api/"):
            for operation in methods.values():
                operation["security"] = [{"bearerAuth": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kmeter usage API",
            "version": __version__,
            "description": "OpenMeter-compatible ingest and query of kmeter's exact usage "
            "totals. Reference: docs/api.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": "Events"}, {"name": "Meters"}, {"name": "Quotas"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def text() -> str:
    """The document as the repository keeps it (``docs/openapi.json``)."""
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(text())
