"""The OpenAPI document of the environments service (tljh_repo2docker/service/openapi.yaml).

These tests need no Docker: the document is a valid OpenAPI 3.1 file, it
describes exactly the routes the service has, and its request schemas agree
with the validation the service does. ``test_service_api.py`` validates real
responses against it with the helpers here.
"""

from __future__ import annotations

import functools
import json
import re
from importlib.resources import files

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from tornado import web

from tljh_repo2docker import validation
from tljh_repo2docker.service import api
from tljh_repo2docker.service import operations as ops
from tljh_repo2docker.service.handlers import BUILD_SCOPE, READ_SCOPE

SPEC_URI = "urn:tljh-repo2docker:openapi"
METHODS = ("get", "post", "put", "patch", "delete")
EXAMPLE_PARAMS = {"name": "demo-env", "build_id": "7", "commit": "0123abc"}


# --- helpers (also used by test_service_api.py) --------------------------------
@functools.cache
def load_spec() -> dict:
    """The document as installed (package data of tljh_repo2docker.service)."""
    return yaml.safe_load(files("tljh_repo2docker.service").joinpath("openapi.yaml").read_text())


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def validator(schema: dict) -> Draft202012Validator:
    """A JSON Schema validator for ``schema``; its ``#/components/...``
    references resolve inside the OpenAPI document."""
    if "$ref" in schema and schema["$ref"].startswith("#"):
        schema = {**schema, "$ref": SPEC_URI + schema["$ref"]}
    return Draft202012Validator(schema, registry=_registry())


def component_schema(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def schema_errors(schema: dict, instance) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator(schema).iter_errors(instance)
    ]


def _deref(obj: dict) -> dict:
    spec = load_spec()
    while "$ref" in obj:
        node = spec
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def path_template(path: str) -> str | None:
    """The documented path (``/environments/{name}``) that ``path`` (relative
    to the server URL, without a query) matches, or None."""
    for template in load_spec()["paths"]:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return template
    return None


def operation(method: str, path: str) -> dict | None:
    template = path_template(path)
    if template is None:
        return None
    return load_spec()["paths"][template].get(method.lower())


def required_scope(method: str, path: str) -> str:
    (requirement,) = operation(method, path)["security"]
    ((_, (scope,)),) = requirement.items()
    return scope


def response_errors(method: str, path: str, status: int, content_type: str, body) -> list[str]:
    """Why a real response does not match the document ([] if it does).

    ``body`` is the parsed JSON, or for ``text/event-stream`` the list of
    ``(event, data)`` pairs of the stream."""
    op = operation(method, path)
    if op is None:
        return [f"{method} {path} is not documented"]
    responses = op["responses"]
    if str(status) not in responses:
        return [f"{method} {path}: status {status} is not documented"]
    response = _deref(responses[str(status)])
    content = response.get("content")
    if not content:
        return [] if body in (None, b"", "") else [f"{status} must have no body"]
    media = content_type.split(";")[0].strip()
    if media not in content:
        return [f"{method} {path} {status}: content type {media} is not documented"]
    if media == "text/event-stream":
        errors = []
        for event, data in body:
            schema = component_schema("Build" if event == "status" else "LogEntry")
            errors += [f"event {event}: {e}" for e in schema_errors(schema, json.loads(data))]
        return errors
    return schema_errors(content[media]["schema"], body)


def operations():
    for template, item in load_spec()["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), template, item[method]


# --- the document itself ---------------------------------------------------------
def test_the_document_is_valid_openapi():
    spec = load_spec()
    validate_spec(spec)
    assert spec["openapi"].startswith("3.1")
    assert spec["servers"] == [
        {"url": "/services/environments/api/v1", "description": spec["servers"][0]["description"]}
    ]
    # the schemas themselves are valid JSON Schema
    for name, schema in spec["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name


def _routes():
    prefix = "/services/environments/api/v1"
    return [
        (re.compile(pattern + "$"), handler)
        for pattern, handler in api.routes(prefix)
        if handler is not api.NotFoundHandler
    ], prefix


def _handler_methods(handler) -> set[str]:
    return {
        m.upper()
        for m in METHODS
        if getattr(handler, m) is not getattr(web.RequestHandler, m, None)
    }


def test_every_route_and_method_is_documented_and_nothing_else():
    routes, prefix = _routes()
    documented = {}
    for template in load_spec()["paths"]:
        url = prefix + template.format(**EXAMPLE_PARAMS)
        matches = [handler for pattern, handler in routes if pattern.fullmatch(url)]
        assert len(matches) == 1, (template, matches)
        (handler,) = matches
        methods = {m.upper() for m in METHODS if m in load_spec()["paths"][template]}
        assert methods == _handler_methods(handler), template
        documented[handler] = template
    assert set(documented) == {handler for _, handler in routes}


def test_every_operation_states_its_scope_and_error_responses():
    seen_ids = set()
    for method, template, op in operations():
        assert op["operationId"] not in seen_ids
        seen_ids.add(op["operationId"])
        scope = required_scope(method, template.format(**EXAMPLE_PARAMS))
        expected = READ_SCOPE if method == "GET" else BUILD_SCOPE
        assert scope == expected, (method, template)
        codes = set(op["responses"])
        assert "403" in codes, (method, template)
        if "{name}" in template:
            assert "404" in codes, (method, template)
        if "requestBody" in op:
            assert "400" in codes, (method, template)
        for code, response in op["responses"].items():
            response = _deref(response)
            if code.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == component_schema("Error"), (method, template, code)
    security = load_spec()["components"]["securitySchemes"]["hubToken"]
    assert security == {**security, "type": "apiKey", "in": "header", "name": "Authorization"}


def test_the_log_stream_is_documented_as_server_sent_events():
    op = operation("GET", "/environments/x/builds/1/log")
    content = op["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    text = op["description"]
    for part in ("id: ", "data: ", "event: status", "Last-Event-ID", "keepalive"):
        assert part in text
    headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
    assert "Last-Event-ID" in headers


def test_request_bodies_are_documented():
    create = _deref(
        operation("POST", "/environments")["requestBody"]["content"]["application/json"]["schema"]
    )
    # exactly what the service accepts
    assert set(create["properties"]) == ops.CREATE_FIELDS | ops.CREDENTIAL_FIELDS
    assert create["required"] == ["name", "repo"]
    update = _deref(
        operation("PATCH", "/environments/x")["requestBody"]["content"]["application/json"][
            "schema"
        ]
    )
    assert set(update["properties"]) == ops.UPDATE_FIELDS
    start = _deref(
        operation("POST", "/environments/x/builds")["requestBody"]["content"]["application/json"][
            "schema"
        ]
    )
    assert set(start["properties"]) == {"username", "token"}
    for schema in (create, update, start):
        assert schema["additionalProperties"] is False


# --- the request schemas agree with the service's validation ---------------------
def _agrees(schema_name: str, check, value):
    by_schema = not schema_errors(component_schema(schema_name), value)
    try:
        check(value)
        by_service = True
    except validation.InvalidInput:
        by_service = False
    return by_schema, by_service


@pytest.mark.parametrize(
    "value",
    [
        "demo",
        "a",
        "py-3.11_x",
        "a" * 63,
        "a" * 64,
        "Demo",
        "-demo",
        "demo-",
        "de..mo",
        "de mo",
        "dé",
        "",
        "a/b",
    ],
)
def test_name_schema_matches_validation(value):
    by_schema, by_service = _agrees("EnvironmentName", validation.environment_name, value)
    assert by_schema == by_service


@pytest.mark.parametrize(
    "value",
    [
        "main",
        "v1.0",
        "feature/x",
        "0123456789abcdef0123456789abcdef01234567",
        "--upload-pack=touch /tmp/x",
        "-x",
        "a..b",
        "a//b",
        "a.lock",
        "a@{1}",
        "a b",
        "",
        "r" * 255,
        "r" * 256,
        "tab\there",
    ],
)
def test_ref_schema_matches_validation(value):
    # the schema is a little wider ('..', '//', '@{' and endings are in the text)
    by_schema, by_service = _agrees("Ref", validation.ref, value)
    if by_service:
        assert by_schema, value
    elif not any(bad in value for bad in ("..", "//", "@{")) and not value.endswith(".lock"):
        assert not by_schema, value


@pytest.mark.parametrize(
    "value",
    ["Python 3", "<script>alert(1)</script>", "x" * 100, "x" * 101, "a\nb", "a\x00b", "a\tb", ""],
)
def test_display_name_schema_matches_validation(value):
    by_schema, by_service = _agrees(
        "DisplayName", lambda v: validation.display_name(v, default=None), value
    )
    assert by_schema == by_service


@pytest.mark.parametrize(
    "value, valid",
    [
        ("512M", True),
        ("2G", True),
        ("1.5GiB", True),
        (None, True),
        ("", True),
        (1024**3, True),
        ("lots", False),
        ("1P", False),
        ("1G; rm -rf /", False),
        ("x" * 10_000, False),
        (-1, False),
        (1, False),
        (2 * 1024**4, False),
        (True, False),
    ],
)
def test_mem_limit_schema_matches_validation(value, valid):
    assert not schema_errors(component_schema("MemLimit"), value) or not valid
    try:
        validation.mem_limit(value)
        ok = True
    except validation.InvalidInput:
        ok = False
    assert ok == valid
    if isinstance(value, int | float) and not isinstance(value, bool):
        assert (not schema_errors(component_schema("MemLimit"), value)) == valid


@pytest.mark.parametrize(
    "value, valid",
    [(0.5, True), (2, True), ("1.5", True), (None, True), (-1, False), (0, False), (1000, False)],
)
def test_cpu_limit_schema_matches_validation(value, valid):
    assert (not schema_errors(component_schema("CpuLimit"), value)) == valid
    try:
        validation.cpu_limit(value)
        ok = True
    except validation.InvalidInput:
        ok = False
    assert ok == valid


@pytest.mark.parametrize(
    "value, valid",
    [
        ({"PYTHON_VERSION": "3.11"}, True),
        ({}, True),
        ("A=1\nB=2", True),
        ({"1BAD": "x"}, False),
        ({"A B": "x"}, False),
        ({"X": 1}, False),
        ({"X": "a\nb"}, False),
        ({"X": "v" * 1025}, False),
        ({f"A{i}": "x" for i in range(21)}, False),
        (["A=1"], False),
    ],
)
def test_build_args_schema_matches_validation(value, valid):
    assert (not schema_errors(component_schema("BuildArgs"), value)) == valid or isinstance(
        value, str
    )
    try:
        validation.build_args(value)
        ok = True
    except validation.InvalidInput:
        ok = False
    assert ok == valid
