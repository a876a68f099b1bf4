"""Reject the JSON-Schema keywords xgrammar would not enforce, naming each one.

xgrammar turns a schema into a grammar but silently drops some keywords (it logs a warning at
most): `not`, `if`/`then`/`else`, `uniqueItems`, `contains`, `dependentRequired`, `multipleOf` on
numbers, everything next to `$ref` / `const` / `enum` / `anyOf` / `oneOf` / `allOf` (it builds
the grammar from the first of these it finds), `pattern` next to a known `format`, lengths next to
`pattern`, and more. Output under such a schema could fail validation, so a schema that relies on
one of them is refused with the keyword and its location, never quietly weakened.

Keywords xgrammar enforces more strictly than JSON Schema asks are fine (output still validates):
`pattern` is matched in full, objects without `additionalProperties` get no undeclared properties
(strict mode), known `format`s are enforced.
"""
from __future__ import annotations

import json
from typing import Any

ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment",
    "$schema", "$id", "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$vocabulary", "contentEncoding",
    "contentMediaType", "contentSchema", "$defs", "definitions",
})
NEVER = {
    "not": "negation", "if": "conditionals", "then": "conditionals", "else": "conditionals",
    "dependentRequired": "property dependencies", "dependentSchemas": "property dependencies",
    "dependencies": "property dependencies", "contains": "contains", "minContains": "contains",
    "maxContains": "contains", "$dynamicRef": "dynamic references", "$recursiveRef": "dynamic references",
}
NUMERIC = frozenset({"multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
STRING = frozenset({"minLength", "maxLength", "pattern", "format"})
ARRAY = frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
                   "contains", "minContains", "maxContains", "unevaluatedItems"})
OBJECT = frozenset({"properties", "required", "additionalProperties", "minProperties", "maxProperties",
                    "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas", "dependencies",
                    "unevaluatedProperties"})
# NOTE: the order xgrammar picks the one keyword that shapes a node (json_schema_converter.cc).
DISPATCH = ("$ref", "const", "enum", "anyOf", "oneOf", "allOf")
KNOWN_FORMATS = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
    "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
})
INTEGER_MULTIPLE_OF_MAX = 1024  # larger (or fractional) multipleOf on integers is dropped by xgrammar
INTEGER_MULTIPLE_OF_RANGE_MAX = 10000  # and so is a bounded range wider than this, or a half-bounded one
TYPES = ("string", "number", "integer", "boolean", "null", "array", "object")


def check_schema(schema: Any) -> None:
    """Raise ValueError("json_schema: ...") for a schema whose output xgrammar could not guarantee."""
    _Checker(schema).node(schema, "#", root=True)


def _fail(path: str, message: str) -> None:
    raise ValueError(f"json_schema: {message} (at {path})")


class _Checker:
    def __init__(self, root: Any) -> None:
        self.root = root

    def node(self, s: Any, path: str, root: bool = False, implied: str | None = None) -> None:
        """Check one subschema; `implied` is the type its values always have (propertyNames: string)."""
        if isinstance(s, bool):
            return
        if not isinstance(s, dict):
            _fail(path, f"a schema must be an object or a boolean, got {json.dumps(s)[:60]}")
        for key in s:
            if key in NEVER:
                _fail(path, f"keyword '{key}' ({NEVER[key]}) is not supported for structured output")
        if s.get("uniqueItems") is True:
            _fail(path, "keyword 'uniqueItems' is not supported for structured output")
        if "$id" in s and not root:
            _fail(path, "a nested '$id' is not supported; use '$defs' and '#/$defs/...' references")
        assertions = [k for k in s if k not in ANNOTATIONS]
        dispatch = next((k for k in DISPATCH if k in s), None)
        if dispatch is not None:
            self.dispatched(s, path, dispatch, assertions)
        else:
            self.typed(s, path, assertions, implied)
        self.children(s, path)

    # ---- nodes shaped by $ref / const / enum / anyOf / oneOf / allOf --------------------------
    def dispatched(self, s: dict, path: str, dispatch: str, assertions: list[str]) -> None:
        allowed = {dispatch, "type"} if dispatch in ("const", "enum") else {dispatch}
        extra = [k for k in assertions if k not in allowed and _is_assertion(k)]
        if extra:
            _fail(path, f"keyword '{extra[0]}' next to '{dispatch}' is not enforced; move it into the "
                        f"{'referenced schema' if dispatch == '$ref' else 'subschemas' if dispatch.endswith('Of') else 'values'}")
        if dispatch == "$ref":
            self.resolve(s["$ref"], path)
        elif dispatch in ("const", "enum"):
            values = [s["const"]] if dispatch == "const" else s["enum"]
            if not isinstance(values, list) or not values:
                _fail(path, "'enum' must be a non-empty list")
            types = _types(s)
            for v in values:
                if types is not None and not any(_has_type(v, t) for t in types):
                    _fail(path, f"{dispatch} value {json.dumps(v)[:60]} does not have type {'/'.join(types)}")
        else:
            branches = s[dispatch]
            if not isinstance(branches, list) or not branches:
                _fail(path, f"'{dispatch}' must be a non-empty list of schemas")
            if dispatch == "allOf" and len(branches) > 1:
                _fail(path, "'allOf' with more than one subschema is not supported; merge them into one schema")
            if dispatch == "oneOf":
                self.disjoint(branches, path)

    def resolve(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            _fail(path, f"only local references '#' or '#/...' are supported, got $ref {ref!r}")
        target = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                _fail(path, f"$ref {ref!r} points nowhere")
        return target

    def disjoint(self, branches: list, path: str) -> None:
        """oneOf is enforced only as anyOf; that is exact only when no value can match two branches."""
        shapes = [self.shape(b, path) for b in branches]
        for i in range(len(shapes)):
            for j in range(i + 1, len(shapes)):
                if not _provably_disjoint(shapes[i], shapes[j]):
                    _fail(path, f"'oneOf' branches {i} and {j} may both match one value, and only anyOf can be "
                                "enforced; use anyOf, or make the branches disjoint (different types, different "
                                "const/enum values, or a required property with different const values)")

    def shape(self, s: Any, path: str, depth: int = 0) -> dict | None:
        """What a branch admits, as far as the disjointness test needs: types, values, discriminators."""
        if depth > 32 or not isinstance(s, dict):
            return None
        if "$ref" in s:
            return self.shape(self.resolve(s["$ref"], path), path, depth + 1)
        values = [s["const"]] if "const" in s else s.get("enum") if isinstance(s.get("enum"), list) else None
        types = _types(s)
        if values is not None:
            types = {_type_of(v) for v in values}
        consts = {}
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        for name in s.get("required", []) if isinstance(s.get("required"), list) else []:
            sub = props.get(name)
            sub = self.resolve(sub["$ref"], path) if isinstance(sub, dict) and "$ref" in sub else sub
            if isinstance(sub, dict) and ("const" in sub or isinstance(sub.get("enum"), list)):
                consts[name] = {_canonical(v) for v in ([sub["const"]] if "const" in sub else sub["enum"])}
        if types is None and ("properties" in s or "required" in s):
            types = {"object"}
        return {"types": types, "values": None if values is None else {_canonical(v) for v in values},
                "consts": consts}

    # ---- nodes shaped by their type -------------------------------------------------------------
    def typed(self, s: dict, path: str, assertions: list[str], implied: str | None) -> None:
        types = _types(s) or ([implied] if implied else None)
        if types is None:  # xgrammar infers object / array from these keywords, else any value
            if any(k in s for k in ("properties", "additionalProperties", "unevaluatedProperties")):
                types = ["object"]
            elif any(k in s for k in ("items", "prefixItems", "unevaluatedItems")):
                types = ["array"]
            else:
                specific = [k for k in assertions if k in NUMERIC | STRING | ARRAY | OBJECT and k != "format"]
                if specific:
                    _fail(path, f"keyword '{specific[0]}' needs a 'type' here (xgrammar does not enforce it on "
                                "untyped values)")
                return
        if "integer" in types or "number" in types:
            self.numeric(s, path, types)
        if "string" in types:
            self.string(s, path)
        if "object" in types:
            self.object(s, path)
        if "array" in types and isinstance(s.get("items"), list):
            _fail(path, "'items' as a list (the draft-4 tuple form) is not supported; use 'prefixItems'")

    def numeric(self, s: dict, path: str, types: list[str]) -> None:
        if "multipleOf" not in s:
            return
        if "number" in types:
            _fail(path, "keyword 'multipleOf' is not supported on type number")
        m = s["multipleOf"]
        if not (isinstance(m, int) or (isinstance(m, float) and m.is_integer())) or not 0 < m <= INTEGER_MULTIPLE_OF_MAX:
            _fail(path, f"'multipleOf' on integers must be a whole number in [1, {INTEGER_MULTIPLE_OF_MAX}], got {m!r}")
        lower = [s[k] for k in ("minimum", "exclusiveMinimum") if k in s]
        upper = [s[k] for k in ("maximum", "exclusiveMaximum") if k in s]
        if (lower or upper) and not (lower and upper and min(upper) - max(lower) <= INTEGER_MULTIPLE_OF_RANGE_MAX):
            _fail(path, "'multipleOf' with a half-open range, or a range wider than "
                        f"{INTEGER_MULTIPLE_OF_RANGE_MAX}, is not supported; bound both ends closer")

    def string(self, s: dict, path: str) -> None:
        fmt = s.get("format") if s.get("format") in KNOWN_FORMATS else None
        shapers = ([f"format '{fmt}'"] if fmt else []) + (["pattern"] if "pattern" in s else []) + \
            [k for k in ("minLength", "maxLength") if k in s]
        if len(shapers) > 1 and not (len(shapers) == 2 and set(shapers) == {"minLength", "maxLength"}):
            _fail(path, f"'{shapers[1]}' next to {shapers[0]} is not enforced; a string takes one of a known "
                        "format, a pattern, or minLength/maxLength (put lengths into the pattern)")

    def object(self, s: dict, path: str) -> None:
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        for name in s.get("required", []) if isinstance(s.get("required"), list) else []:
            if name not in props:
                _fail(path, f"required property {name!r} is not in 'properties' (xgrammar does not enforce it)")
        if "propertyNames" in s and props:
            _fail(path, "'propertyNames' next to 'properties' is not enforced")

    # ---- recursion --------------------------------------------------------------------------------
    def children(self, s: dict, path: str) -> None:
        for key in ("properties", "patternProperties", "$defs", "definitions"):
            if isinstance(s.get(key), dict):
                for name, sub in s[key].items():
                    self.node(sub, f"{path}/{key}/{name}")
        for key in ("additionalProperties", "unevaluatedProperties", "propertyNames", "items", "unevaluatedItems"):
            if isinstance(s.get(key), dict):
                self.node(s[key], f"{path}/{key}", implied="string" if key == "propertyNames" else None)
        for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
            if isinstance(s.get(key), list):
                for i, sub in enumerate(s[key]):
                    self.node(sub, f"{path}/{key}/{i}")


def _is_assertion(key: str) -> bool:
    return key in NUMERIC | STRING | ARRAY | OBJECT | set(DISPATCH) | {"type"} and key != "format"


def _types(s: dict) -> list[str] | None:
    t = s.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list) and t:
        return [x for x in t if isinstance(x, str)]
    return None


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        return "integer"
    if isinstance(v, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), "unknown")


def _has_type(v: Any, t: str) -> bool:
    actual = _type_of(v)
    return actual == t or (t == "number" and actual == "integer")


def _canonical(v: Any) -> str:
    """One string per JSON value (1 == 1.0, but never == true)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return json.dumps([_type_of(v), v], sort_keys=True)


def _provably_disjoint(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return False
    if a["values"] is not None and b["values"] is not None and not a["values"] & b["values"]:
        return True
    if a["types"] is not None and b["types"] is not None:
        ta = set(a["types"]) | ({"integer"} if "number" in a["types"] else set())
        tb = set(b["types"]) | ({"integer"} if "number" in b["types"] else set())
        if not ta & tb:
            return True
    return any(name in b["consts"] and not a["consts"][name] & b["consts"][name] for name in a["consts"])
