"""Schemathesis hooks for orderflow's fuzz run (crates/orderflow/tests/fuzz.rs).

Four rules of the API depend on state, or on two values at once, not on the
shape of one value, so no JSON Schema can state them, and a request
generated as valid would be refused by them with 422:

- an order (and a cart) names products that exist, in one currency, and
  one product's quantities summed over its lines stay within 1..=100;
- an Idempotency-Key reused with a different body is refused
  (idempotency-key-reused);
- a registration password must not be one of the bundled common passwords;
- a sales range's `from` comes before its `to`, at most a week of minute
  windows (3,660 days) apart.

Only for requests schemathesis generated as *valid* (positive mode), this
hook keeps those rules the way a real client would: each order line gets a
distinct product of the test catalog, a reused key with another body gets a
fresh key, a common password is replaced by one of the same length, and a
sales range keeps only its start.
Every other part of the request is sent as generated, and invalid requests
are never touched, so the server's refusals are still fuzzed in full.
"""

import hashlib
import json
import os
import uuid

import schemathesis

# Ids of the test catalog, all in one currency; as many as an order may have lines.
PRODUCTS = [p for p in os.environ.get("ORDERFLOW_FUZZ_PRODUCTS", "").split(",") if p]
COMMON_PASSWORDS = set()
_path = os.environ.get("ORDERFLOW_FUZZ_COMMON_PASSWORDS")
if _path:
    with open(_path, encoding="utf-8") as lines:
        COMMON_PASSWORDS = {
            line.strip() for line in lines if line.strip() and not line.startswith("#")
        }

# Idempotency-Key -> hash of the body first sent with it.
_keys: dict[str, str] = {}


def _positive(case) -> bool:
    meta = getattr(case, "meta", None)
    generation = getattr(meta, "generation", None) if meta else None
    mode = getattr(generation, "mode", None) if generation else None
    return bool(mode is not None and mode.is_positive)


def _header(case, name):
    for key in list((case.headers or {}).keys()):
        if key.lower() == name.lower():
            return key
    return None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not _positive(case):
        return
    path = case.operation.path
    method = case.method.upper()
    if method == "POST" and path == "/api/v1/orders" and isinstance(case.body, dict):
        items = case.body.get("items")
        if isinstance(items, list):
            for index, line in enumerate(items):
                if isinstance(line, dict) and index < len(PRODUCTS):
                    line["product_id"] = PRODUCTS[index]
        key_name = _header(case, "Idempotency-Key")
        if key_name is not None:
            key = case.headers[key_name]
            digest = hashlib.sha256(json.dumps(case.body, sort_keys=True).encode()).hexdigest()
            if _keys.setdefault(key, digest) != digest:
                key = uuid.uuid4().hex
                case.headers[key_name] = key
                _keys[key] = digest
    if method == "PUT" and path == "/api/v1/cart" and isinstance(case.body, dict):
        items = case.body.get("items")
        if isinstance(items, list):
            for index, line in enumerate(items):
                if isinstance(line, dict) and index < len(PRODUCTS):
                    line["product_id"] = PRODUCTS[index]
    if method == "PUT" and path == "/api/v1/cart/items/{product_id}" and PRODUCTS:
        # A product of the catalog; the cart never holds more products
        # than the catalog has (as many as an order may have lines).
        case.path_parameters["product_id"] = PRODUCTS[0]
    if method == "GET" and path.startswith("/api/v1/admin/sales") and isinstance(case.query, dict):
        # Given both, `to` is dropped: the server then reads the default
        # number of windows after `from`, as generated.
        if "from" in case.query and "to" in case.query:
            del case.query["to"]
    if method == "POST" and path == "/api/v1/auth/register" and isinstance(case.body, dict):
        password = case.body.get("password")
        if isinstance(password, str) and password.lower() in COMMON_PASSWORDS:
            case.body["password"] = (uuid.uuid4().hex * 8)[: len(password)]
