"""`GET /openapi.json`: a valid OpenAPI 3 document that describes exactly the app's routes.

The document is written by hand (`gateway.web.openapi_document`), so these tests are what keeps
it honest: every rule of the Flask url map is documented with its methods, path parameters and
auth, every documented operation exists, and real answers of the gateway match the documented
schemas.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
import schemathesis
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from schemathesis.core.result import Ok

from gateway.web.auth import required_role
from gateway.web.openapi_document import build_document
from tests.conftest import bearer

IGNORED_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask itself for every GET route
CONTRACT_HEADERS = {"X-Model-Version", "X-Routing-Key", "X-Request-Id", "X-Model"}


@pytest.fixture
def sqlite_only(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the document does not depend on the database; checked once, on SQLite")


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/openapi.json")  # no token: the document is public
    assert response.status_code == 200, response.data[:500]
    assert response.mimetype == "application/json"
    return orjson.loads(response.data)


def openapi_path(rule: str) -> str:
    """`/v2/models/<name>/versions/<ref>` -> `/v2/models/{name}/versions/{ref}`."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def app_operations(app) -> dict[tuple[str, str], str]:
    """(OpenAPI path, lower-case method) -> Flask endpoint, for every route but `static`."""
    out = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - IGNORED_METHODS:
            out[(openapi_path(rule.rule), method.lower())] = rule.endpoint
    return out


def documented_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): op for path, item in doc["paths"].items()
            for method, op in item.items()}


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """The node with every local `$ref` inlined (the document has no recursive schemas)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(doc, target)
        return {key: resolve(doc, value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(doc, item) for item in node]
    return node


def check_against(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    OAS30Validator(resolve(doc, schema)).validate(instance)


def response_schema(doc, path: str, method: str, status: int) -> dict[str, Any]:
    response = doc["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]


def test_the_document_is_public_and_valid_openapi_3(sqlite_only, client, document):
    assert document["openapi"].startswith("3.")
    validate_spec(document)  # raises with the failing part of the document
    loaded = schemathesis.openapi.from_dict(document)
    results = list(loaded.get_all_operations())
    broken = [r.err() for r in results if not isinstance(r, Ok)]
    assert not broken, broken
    assert len(results) == len(documented_operations(document))
    # the served bytes are the same document every time (built once per app)
    assert orjson.loads(client.get("/openapi.json").data) == document
    # and the builder shares nothing between calls: no module state to corrupt
    first, second = build_document("1"), build_document("1")
    first["components"]["schemas"]["Error"]["required"].append("oops")
    first["paths"]["/predict"]["post"]["parameters"].clear()
    assert second == build_document("1") and second != first


def test_every_route_is_documented_and_nothing_else(sqlite_only, app, document):
    in_app = app_operations(app)
    in_doc = documented_operations(document)
    assert set(in_app) - set(in_doc) == set(), "routes missing from /openapi.json"
    assert set(in_doc) - set(in_app) == set(), "documented operations the app does not have"
    # the contract's routes are all there, so an empty app could not pass the comparison
    for path in ("/predict", "/v2/models/{name}/versions/{ref}/infer", "/feedback",
                 "/admin/models/{name}/traffic", "/analytics/models/{name}/outcomes",
                 "/dashboard", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert path in document["paths"], path
    assert len(in_doc) >= 36


def test_path_parameters_match_the_routes(sqlite_only, app, document):
    for (path, method), op in documented_operations(document).items():
        params = [resolve(document, p) for p in op.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"{([^}]+)}", path)), (path, method)
        assert all(p["required"] for p in params if p["in"] == "path"), (path, method)
        assert len({(p["name"], p["in"]) for p in params}) == len(params), (path, method)


def test_security_matches_what_the_auth_hook_enforces(sqlite_only, app, document):
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"],
        "type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearerAuth": []}]
    ops = documented_operations(document)
    public = set()
    for key, endpoint in app_operations(app).items():
        blueprint = endpoint.rpartition(".")[0] or None
        needed = required_role(blueprint)
        op = ops[key]
        if needed is None:
            assert op.get("security") == [], key
            public.add(key[0])
        else:
            assert "security" not in op, key  # inherits bearerAuth
            assert op["x-required-role"] == needed, key
    assert {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready",
            "/openapi.json"} <= public
    assert not any(p.startswith(("/admin", "/predict", "/analytics", "/feedback"))
                   for p in public)


def test_contract_headers_and_bodies_are_described(sqlite_only, document):
    predict = resolve(document, document["paths"]["/predict"]["post"])
    assert {p["name"] for p in predict["parameters"] if p["in"] == "header"} == CONTRACT_HEADERS
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"model", "inputs"} and body["required"] == ["inputs"]
    assert {"X-Model-Version", "X-Request-Id"} <= set(predict["responses"]["200"]["headers"])
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{ref}/infer"):
        infer = resolve(document, document["paths"][path]["post"])
        names = {p["name"] for p in infer["parameters"] if p["in"] == "header"}
        assert {"X-Routing-Key", "X-Request-Id", "Inference-Header-Content-Length"} <= names
        assert "X-Model-Version" in infer["responses"]["200"]["headers"]

    register = resolve(document, document["paths"]["/admin/models/{name}/versions"]["post"])
    form = register["requestBody"]["content"]["multipart/form-data"]
    assert set(form["schema"]["properties"]) == {"file", "metadata"}
    assert form["schema"]["properties"]["file"]["format"] == "binary"
    assert set(form["schema"]["properties"]["metadata"]["properties"]) == {
        "description", "dataset", "params", "metrics", "parent_version", "aliases"}

    traffic = resolve(document, document["paths"]["/admin/models/{name}/traffic"]["put"])
    assert "If-Match" in {p["name"] for p in traffic["parameters"]}
    policy = traffic["requestBody"]["content"]["application/json"]["schema"]
    assert set(policy["properties"]) == {"weights", "shadow", "reason", "force"}
    assert policy["properties"]["force"]["type"] == "boolean"  # the evaluation gate override
    assert policy["additionalProperties"] is False


def test_every_error_response_has_the_contract_shape(sqlite_only, document):
    error = {"$ref": "#/components/schemas/Error"}
    v2_error = {"$ref": "#/components/schemas/V2Error"}
    for (path, method), op in documented_operations(document).items():
        for status, response in op["responses"].items():
            if not status.startswith("4") or "application/json" not in response.get("content",
                                                                                    {}):
                continue
            schema = response["content"]["application/json"]["schema"]
            expected = v2_error if path.startswith("/v2") else error
            assert schema == expected, (path, method, status)


def test_real_errors_match_the_documented_error_schemas(client, document, role_tokens):
    app_token = bearer(role_tokens["app"])
    response = client.post("/predict", data=b'{"inputs": [', headers=app_token)
    assert response.status_code == 400
    check_against(document, response_schema(document, "/predict", "post", 400),
                  response.get_json())
    response = client.get("/admin/models")
    assert response.status_code == 401
    check_against(document, response_schema(document, "/admin/models", "get", 401),
                  response.get_json())
    response = client.get("/v2/models/nope", headers=app_token)
    assert response.status_code == 404
    check_against(document, response_schema(document, "/v2/models/{name}", "get", 404),
                  response.get_json())
    with pytest.raises(Exception, match="is not of type"):  # the schemas are not vacuous
        check_against(document, {"$ref": "#/components/schemas/V2Error"},
                      {"error": {"code": "x", "message": "y"}})


def test_real_answers_match_the_documented_schemas(client, document, digits, role_tokens):
    ops, app_token = bearer(role_tokens["ops"]), bearer(role_tokens["app"])
    row = digits["X"][0].tolist()
    predict_body = {"model": "digits", "inputs": [row]}
    check_against(document, document["components"]["schemas"]["PredictRequest"], predict_body)
    answer = client.post("/predict", json=predict_body, headers=app_token)
    assert answer.status_code == 200
    check_against(document, response_schema(document, "/predict", "post", 200),
                  answer.get_json())
    v2 = client.post("/v2/models/digits/infer", headers=app_token, json={
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]})
    assert v2.status_code == 200
    check_against(document, response_schema(document, "/v2/models/{name}/infer", "post", 200),
                  v2.get_json())
    policy = {"weights": {"1": 90, "2": 10}, "shadow": {"3": 100}, "reason": "canary"}
    check_against(document, document["components"]["schemas"]["TrafficPolicyBody"], policy)
    put = client.put("/admin/models/digits/traffic", json=policy, headers=ops)
    assert put.status_code == 200
    check_against(document, response_schema(document, "/admin/models/{name}/traffic", "put",
                                             200), put.get_json())
    for path, doc_path in (("/admin/models", "/admin/models"),
                           ("/admin/models/digits/versions/2",
                            "/admin/models/{name}/versions/{ref}"),
                           ("/v2/models/digits", "/v2/models/{name}"),
                           ("/admin/audit", "/admin/audit"),
                           ("/admin/models/digits/traffic/history",
                            "/admin/models/{name}/traffic/history")):
        response = client.get(path, headers=ops)
        assert response.status_code == 200, (path, response.data[:300])
        check_against(document, response_schema(document, doc_path, "get", 200),
                      response.get_json())
