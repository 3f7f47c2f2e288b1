"""The REST APIs (auth and console) under generated requests from their own OpenAPI documents: client
mistakes get 4xx with a JSON body, never a 5xx, and the API keeps answering."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.threaded_stack import RunningStack, threaded_stack

pytestmark = [
    pytest.mark.e2e,
    # The services' own background tasks use the random module while strategies draw.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
FUZZ = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def stack(infra) -> Iterator[RunningStack]:
    with threaded_stack(infra) as running:
        yield running


def _operations(base_url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz_operation(operation, stack: RunningStack, base_url: str) -> dict[int, int]:
    label = f"{operation.method.upper()} {operation.path}"
    codes: dict[int, int] = {}

    @FUZZ
    @given(case=operation.as_strategy())
    def check(case) -> None:
        headers = {**(case.headers or {}), "authorization": f"Bearer {stack.admin_token}"}
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        codes[response.status_code] = codes.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{label}: {response.status_code} for {case.as_curl_command()}"
        if 400 <= response.status_code < 500 and response.content:
            content_type = response.headers.get("content-type", [""])
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert content_type.startswith(("application/json", "application/problem+json")), (
                f"{label}: a {response.status_code} without a JSON body"
            )

    check()
    return codes


def _fuzz(stack: RunningStack, base_url: str) -> dict[str, dict[int, int]]:
    return {
        f"{op.method.upper()} {op.path}": _fuzz_operation(op, stack, base_url) for op in _operations(base_url)
    }


def test_auth_rest_api_refuses_bad_input_without_server_errors(stack):
    seen = _fuzz(stack, stack.http["auth"])
    assert len(seen) >= 10  # every documented route was exercised
    assert httpx.get(f"{stack.http['auth']}/.well-known/jwks.json", timeout=5).status_code == 200


def test_console_rest_api_refuses_bad_input_without_server_errors(stack):
    seen = _fuzz(stack, stack.http["console"])
    assert seen
    assert httpx.get(f"{stack.http['console']}/healthz", timeout=5).status_code == 200
