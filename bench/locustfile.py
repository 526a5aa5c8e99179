"""Locust users for ``lbproxy demo``: GETs and POSTs on /items/*, every answer checked.

Run: make load, or python bench/load.py (starts and stops the demo), or by hand against a demo
already up: locust -f bench/locustfile.py --host http://127.0.0.1:8080

Each answer must be the demo backend's JSON for this very request: status 200, an instance of
the demo (i-web-1..3) named both in the body and in X-Instance, the path and method sent, the
POST body's size, the Host the authorization sets, X-Forwarded-For and an X-Request-Id added by
lbproxy. A wrong answer is a failure in locust's figures. When the test stops, the answers per
instance are printed: the demo's weights are 3:2:1, so the shares should be near 50/33/17 %.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from locust import FastHttpUser, constant, events, task

INSTANCES = frozenset({"i-web-1", "i-web-2", "i-web-3"})
DEMO_HOST = "www.example.internal"
POST_BODY = json.dumps({"name": "widget", "tags": ["a", "b"], "qty": 3}).encode()
answers_by_instance: Counter[str] = Counter()


def problem(response: Any, method: str, path: str, sent: int) -> str | None:
    """What is wrong with a demo answer, or None."""
    if response.status_code != 200:
        return f"status {response.status_code}"
    try:
        answer = json.loads(response.content)
    except (TypeError, ValueError):
        return f"not JSON: {response.content[:80]!r}"
    instance = answer.get("instance")
    expected = {"method": method, "path": path, "body_bytes": sent, "host": DEMO_HOST}
    wrong = [
        f"{key}={answer.get(key)!r}" for key, value in expected.items() if answer.get(key) != value
    ]
    if instance not in INSTANCES:
        wrong.append(f"instance={instance!r}")
    elif response.headers.get("x-instance") != instance:
        wrong.append(f"X-Instance {response.headers.get('x-instance')!r} is not {instance!r}")
    if not answer.get("x-forwarded-for") or not answer.get("x-request-id"):
        wrong.append("X-Forwarded-For or X-Request-Id missing upstream")
    if wrong:
        return "wrong answer: " + ", ".join(wrong)
    answers_by_instance[instance] += 1
    return None


class ItemsUser(FastHttpUser):
    # No think time: each user sends its next request as soon as the answer is in.
    wait_time = constant(0)

    @task(4)
    def get_item(self) -> None:
        path = f"/items/{random.randrange(1, 10_000)}"
        with self.client.get(path, name="GET /items/[id]", catch_response=True) as response:
            self._judge(response, "GET", path, 0)

    @task(1)
    def post_item(self) -> None:
        path = "/items/new"
        headers = {"Content-Type": "application/json"}
        with self.client.post(
            path, data=POST_BODY, headers=headers, name="POST /items/new", catch_response=True
        ) as response:
            self._judge(response, "POST", path, len(POST_BODY))

    @staticmethod
    def _judge(response: Any, method: str, path: str, sent: int) -> None:
        wrong = problem(response, method, path, sent)
        if wrong is None:
            response.success()
        else:
            response.failure(wrong)


@events.test_stop.add_listener
def _print_shares(**_: Any) -> None:
    total = sum(answers_by_instance.values())
    if total:
        shares = ", ".join(
            f"{name} {count / total:.1%}" for name, count in sorted(answers_by_instance.items())
        )
        print(f"answers by instance ({total} checked): {shares}", flush=True)
