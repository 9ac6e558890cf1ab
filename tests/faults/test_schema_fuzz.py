"""One bounded schemathesis pass: the gateway's own OpenAPI document (`/openapi.json`, behind the key)
drives generated requests at the running gateway. Checks: no 5xx that is the gateway's own fault, an
OpenAI error object for every failure, exactly one log row per request with the status the client got.

schemathesis's pytest plugin does not run under this pytest (9.x), so its case strategy is driven by
hypothesis directly: the same generation, without the plugin.
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.faults.conftest import GatewayProcess


def test_schemathesis_pass_over_the_chat_endpoint(gateway: GatewayProcess):
    anonymous = httpx.get(f"{gateway.root}/openapi.json", timeout=10)
    assert anonymous.status_code == 401  # behind the keys, like everything else
    document = httpx.get(f"{gateway.root}/openapi.json", headers=gateway.headers, timeout=10).json()
    operation = schemathesis.openapi.from_dict(document)["/v1/chat/completions"]["POST"]
    statuses = []

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def call(case) -> None:
        if isinstance(case.body, dict) and len(statuses) % 2:  # half of them to a model that exists
            case.body["model"] = "echo"
        response = case.call(base_url=gateway.root, headers=gateway.headers, timeout=30)
        statuses.append(response.status_code)
        assert response.status_code < 500 or response.status_code in (502, 504), response.text
        if response.status_code != 200:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and "Traceback" not in error["message"]
        request_id = response.headers["x-request-id"]
        rows = gateway.rows(request_id[0] if isinstance(request_id, list) else request_id)
        assert len(rows) == 1 and rows[0]["status"] == response.status_code

    call()
    assert 200 in statuses  # the schema is good enough to produce valid requests too
