"""The OpenAPI 3 document of every route (served at GET /openapi.json, kept true by a test)."""

from __future__ import annotations

from heserve.server import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    return {str(code): {"description": "error", "content": {"application/json": {"schema": ERROR}}} for code in codes}


def _json(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _static(description: str) -> dict:
    types = ("text/html", "text/javascript", "text/css", "application/wasm")
    return {"description": description, "content": {t: {"schema": {"type": "string"}} for t in types}}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> dict:
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {
                "type": "string",
                "enum": ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"],
            },
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    infer_request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": tensor},
            "outputs": {"type": "array"},
        },
    }
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    header = {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    }
    model_get = {
        "get": {"parameters": [_path_param("name")], "responses": {"200": _json("model metadata"), **_errors(401, 404)}}
    }
    model_ver_get = {
        "get": {
            "parameters": [_path_param("name"), _path_param("version")],
            "responses": {"200": _json("model metadata"), **_errors(401, 404)},
        }
    }
    unavailable = {"503": _json("known but unavailable (unloaded, or its artifact failed to load), with the reason")}
    ready_get = {"get": {**model_get["get"], "responses": {**model_get["get"]["responses"], **unavailable}}}
    ready_ver_get = {"get": {**model_ver_get["get"], "responses": {**model_ver_get["get"]["responses"], **unavailable}}}
    infer = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": infer_request}, **binary}},
        "responses": {
            "200": {
                "description": "outputs (JSON, or binary extension for ciphertexts)",
                "content": {"application/json": {"schema": {"type": "object"}}, **binary},
            },
            **_errors(400, 401, 403, 404, 408, 413, 415, 429, 503),
        },
    }
    control_body = {
        "required": False,
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"parameters": {"type": "object"}}}}
        },
    }
    control = {
        "post": {
            "parameters": [_path_param("name")],
            "requestBody": control_body,
            "responses": {"200": _json("done"), **_errors(400, 401, 403, 404, 413, 415, 429)},
        }
    }
    index_row = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
            "reason": {"type": "string"},
        },
    }
    index = {"200": _json("every model in the repository", {"type": "array", "items": index_row})}
    stats = {"200": _json("statistics (Triton's shape), totals of every worker"), **_errors(401, 404, 429)}
    static_file = {
        "get": {
            "security": [],
            "parameters": [_path_param("filename")],
            "responses": {"200": _static("a file of the page"), **_errors(404)},
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "heserve: encrypted inference (Open Inference Protocol V2 + CKKS extensions)",
            "version": __version__,
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        # e.g. key_not_found, rate_limited, seal_frame_too_large: the README lists them all
                        "code": {"type": "string", "description": "machine-readable kind of error"},
                    },
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v2/health/live": {"get": {"security": [], "responses": {"200": _json("liveness")}}},
            "/v2/health/ready": {
                "get": {
                    "security": [],
                    "responses": {"200": _json("readiness"), "503": _json("not ready: no models, or key store down")},
                }
            },
            "/v2": {"get": {"responses": {"200": _json("server metadata"), **_errors(401)}}},
            "/v2/models": {"get": {"responses": {"200": _json("model index"), **_errors(401)}}},
            "/v2/models/{name}": model_get,
            "/v2/models/{name}/versions/{version}": model_ver_get,
            "/v2/models/{name}/ready": ready_get,
            "/v2/models/{name}/versions/{version}/ready": ready_ver_get,
            "/v2/models/{name}/infer": {"post": {"parameters": [_path_param("name"), header], **infer}},
            "/v2/models/{name}/versions/{version}/infer": {
                "post": {"parameters": [_path_param("name"), _path_param("version"), header], **infer}
            },
            "/v2/repository/index": {
                "get": {"responses": {**index, **_errors(401, 429)}},
                "post": {
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                            }
                        },
                    },
                    "responses": {**index, **_errors(400, 401, 413, 415, 429)},
                },
            },
            "/v2/repository/models/{name}/load": control,
            "/v2/repository/models/{name}/unload": control,
            "/v2/models/{name}/config": {
                "get": {
                    "parameters": [_path_param("name")],
                    "responses": {"200": _json("configuration (Triton's shape)"), **_errors(401, 404, 429)},
                }
            },
            "/v2/models/{name}/versions/{version}/config": {
                "get": {
                    "parameters": [_path_param("name"), _path_param("version")],
                    "responses": {"200": _json("configuration (Triton's shape)"), **_errors(401, 404, 429)},
                }
            },
            "/v2/models/stats": {"get": {"responses": stats}},
            "/v2/models/{name}/stats": {"get": {"parameters": [_path_param("name")], "responses": stats}},
            "/v2/models/{name}/versions/{version}/stats": {
                "get": {"parameters": [_path_param("name"), _path_param("version")], "responses": stats}
            },
            "/v2/keys": {
                "post": {
                    "parameters": [header],
                    "requestBody": {"required": True, "content": binary},
                    "responses": {"201": _json("key registered"), **_errors(400, 401, 408, 413, 429, 503)},
                }
            },
            "/v2/keys/{key_id}": {
                "get": {
                    "parameters": [_path_param("key_id")],
                    "responses": {"200": _json("key status"), **_errors(401, 404, 429, 503)},
                },
                "delete": {
                    "parameters": [_path_param("key_id")],
                    "responses": {"200": _json("erased"), **_errors(401, 404, 429, 503)},
                },
            },
            "/v2/privacy": {"get": {"responses": {"200": _json("privacy report"), **_errors(401, 429)}}},
            "/v2/quota": {
                "get": {
                    "responses": {"200": _json("the caller's use of its quotas, and the limits"), **_errors(401, 429)}
                }
            },
            "/openapi.json": {"get": {"responses": {"200": _json("this document"), **_errors(401)}}},
            # The browser page (static files, no API key): html, JavaScript, CSS, WebAssembly.
            "/app/": {"get": {"security": [], "responses": {"200": _static("the page (index.html)"), **_errors(404)}}},
            "/app/{filename}": static_file,
            "/app/sdk/{filename}": static_file,
            "/app/vendor/{filename}": static_file,
            "/metrics": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401),
                    }
                }
            },
        },
    }
