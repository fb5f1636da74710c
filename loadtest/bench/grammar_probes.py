"""What the grammar benchmark feeds the libraries: two workloads (a JSON document for JSON mode, and a document for a
schema with nested objects, enums and arrays) and one probe per JSON Schema keyword: a schema using it, an instance
that validates and one that does not. A library enforces a keyword if it takes the first and refuses the second,
ignores it if it takes both, and refuses it if it will not compile the schema. JSON is written as json.dumps does
(", " and ": "), the layout serving's grammars impose."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Workload:
    name: str
    schema: dict[str, Any]
    document: str


@dataclass(frozen=True)
class Probe:
    keyword: str
    schema: dict[str, Any]
    valid: str
    invalid: str


JSON_MODE = Workload("JSON mode (json_object)", {"type": "object"}, (
    '{"id": 1042, "title": "Quarterly report", "tags": ["finance", "q3"], "author": {"name": "Ada Lovelace", '
    '"email": "ada@example.com"}, "pages": 12, "draft": false, "score": 4.5, "notes": null}'))

_ITEM = {"type": "object", "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1},
                                          "labels": {"type": "array", "items": {"enum": ["fragile", "gift", "bulk"]}}},
         "required": ["sku", "quantity", "labels"], "additionalProperties": False}
ORDER = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
        "customer": {"type": "object", "properties": {"name": {"type": "string"},
                                                      "tier": {"enum": ["free", "pro", "enterprise"]}},
                     "required": ["name", "tier"], "additionalProperties": False},
        "items": {"type": "array", "items": _ITEM, "minItems": 1},
        "shipping": {"type": "object", "properties": {
            "method": {"enum": ["ground", "air"]},
            "address": {"type": "object", "properties": {"city": {"type": "string"},
                                                         "country": {"enum": ["FR", "DE", "US", "JP"]}},
                        "required": ["city", "country"], "additionalProperties": False}},
                     "required": ["method", "address"], "additionalProperties": False},
        "gift": {"type": "boolean"},
    },
    "required": ["order_id", "status", "customer", "items", "shipping", "gift"],
    "additionalProperties": False,
}
NESTED_SCHEMA = Workload("JSON schema (nested objects, enums, arrays)", ORDER, (
    '{"order_id": "A-2291", "status": "shipped", "customer": {"name": "Grace Hopper", "tier": "pro"}, '
    '"items": [{"sku": "KB-104", "quantity": 2, "labels": ["fragile"]}, {"sku": "MS-220", "quantity": 1, '
    '"labels": []}], "shipping": {"method": "air", "address": {"city": "Lyon", "country": "FR"}}, "gift": false}'))
WORKLOADS = (JSON_MODE, NESTED_SCHEMA)


def _object(properties: dict, **keywords) -> dict:
    return {"type": "object", "properties": properties, **keywords}


PROBES = (
    Probe("type (primitives)", {"type": "integer"}, "3", "3.5"),
    Probe("type (list, nullable)", {"type": ["string", "null"]}, "null", "1"),
    Probe("properties, required", _object({"a": {"type": "integer"}}, required=["a"]), '{"a": 1}', "{}"),
    Probe("additionalProperties: false", _object({"a": {"type": "integer"}}, additionalProperties=False),
          '{"a": 1}', '{"a": 1, "b": 2}'),
    Probe("additionalProperties (schema)", {"type": "object", "additionalProperties": {"type": "integer"}},
          '{"x": 1}', '{"x": "s"}'),
    Probe("enum", {"enum": ["red", "green"]}, '"red"', '"blue"'),
    Probe("const", {"const": "x"}, '"x"', '"y"'),
    Probe("anyOf", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, '"a"', "true"),
    Probe("oneOf", {"oneOf": [{"type": "integer"}, {"type": "string"}]}, "1", "null"),
    Probe("allOf", {"allOf": [_object({"a": {"type": "integer"}}, required=["a"]),
                              _object({"b": {"type": "integer"}}, required=["b"])]}, '{"a": 1, "b": 2}', '{"a": 1}'),
    Probe("$ref, $defs", {"$defs": {"n": {"type": "integer"}}, **_object({"a": {"$ref": "#/$defs/n"}}, required=["a"])},
          '{"a": 1}', '{"a": "x"}'),
    Probe("$ref (recursive)", {"$defs": {"node": _object(
        {"next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}, required=["next"],
        additionalProperties=False)}, "$ref": "#/$defs/node"}, '{"next": {"next": null}}', '{"next": {"next": 1}}'),
    Probe("items", {"type": "array", "items": {"type": "integer"}}, "[1, 2]", '[1, "a"]'),
    Probe("prefixItems", {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
          '[1, "a"]', '["a", 1]'),
    Probe("minItems, maxItems", {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
          "[1]", "[1, 2, 3]"),
    Probe("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 2]", "[1, 1]"),
    Probe("contains", {"type": "array", "contains": {"const": 5}}, "[1, 5]", "[1, 2]"),
    Probe("minLength, maxLength", {"type": "string", "minLength": 2, "maxLength": 3}, '"ab"', '"abcd"'),
    Probe("pattern", {"type": "string", "pattern": "^[a-z]+-[0-9]+$"}, '"ab-12"', '"ab12"'),
    Probe("format: date-time", {"type": "string", "format": "date-time"}, '"2024-05-01T10:00:00Z"', '"yesterday"'),
    Probe("format: date", {"type": "string", "format": "date"}, '"2024-05-01"', '"May 1"'),
    Probe("format: email", {"type": "string", "format": "email"}, '"a@b.com"', '"not an email"'),
    Probe("format: uuid", {"type": "string", "format": "uuid"}, '"123e4567-e89b-12d3-a456-426614174000"', '"123"'),
    Probe("minimum, maximum", {"type": "integer", "minimum": 1, "maximum": 10}, "5", "11"),
    Probe("exclusiveMinimum, exclusiveMaximum", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
          "0.5", "0"),
    Probe("multipleOf", {"type": "integer", "multipleOf": 5}, "10", "7"),
    Probe("minProperties, maxProperties", {"type": "object", "additionalProperties": {"type": "integer"},
                                           "minProperties": 1}, '{"a": 1}', "{}"),
    Probe("patternProperties", {"type": "object", "patternProperties": {"^x_": {"type": "integer"}},
                                "additionalProperties": False}, '{"x_a": 1}', '{"y": 1}'),
    Probe("propertyNames", {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
                            "additionalProperties": {"type": "integer"}}, '{"ab": 1}', '{"AB": 1}'),
    Probe("dependentRequired", _object({"a": {"type": "integer"}, "b": {"type": "integer"}},
                                       dependentRequired={"a": ["b"]}), '{"a": 1, "b": 2}', '{"a": 1}'),
    Probe("not", {"not": {"type": "string"}}, "1", '"a"'),
    Probe("if, then, else", {"if": {"type": "integer"}, "then": {"minimum": 0}, "else": {"type": "string"}},
          "1", "-1"),
    Probe("title, description, default, examples", {"type": "integer", "title": "T", "description": "d",
                                                    "default": 1, "examples": [1]}, "1", '"a"'),
)
