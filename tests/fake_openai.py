"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, for the LLM-judge tests.

It is a real HTTP server in a thread; what it answers depends on a `case:NAME` marker in the
prompt, so each test item exercises one behaviour:
- good: answers for the response containing GOOD (strength 2, confidence 0.9);
- malformed-once: the first answer is prose, then good answers;
- rate-limited: the first request gets 429 (Retry-After: 0), then good answers;
- flaky: the first two requests get 500, then good answers;
- biased: always "A" whatever the order (a position-biased judge);
- always-a-shorter: always "A", strength 2 when the response shown first is the shorter one and
  1 otherwise (position bias whose strength varies with length);
- longer: prefers the longer response, strength 2, a tie for equal lengths (a judge no
  content-free answer or truncated copy fools);
- fooled: prefers a response that is one of FOOLED_BY (content-free answers), otherwise the longer;
- never: never a JSON answer.

Only `POST /v1/chat/completions` (the path under `url`) is answered; any other path gets 404, as a
real server would, so a client that builds a wrong URL fails its test.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"

# The content-free answers the "fooled" judge prefers to any real response.
FOOLED_BY = {":", "Solution", "Thought process:"}


def shown_responses(prompt: str) -> list[tuple[str, str]]:
    """(letter, text) of each response, in the order the prompt shows them."""
    return re.findall(r"# Response ([A-Z])\n(.*?)(?=\n\n# Response |\n\nDecide|\Z)", prompt, re.S)


def verdict(choice: str, strength: int, confidence: float = 0.8) -> dict[str, Any]:
    return completion(
        json.dumps({"choice": choice, "strength": strength if choice != "tie" else 0, "confidence": confidence})
    )


class FakeOpenAI:
    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path != CHAT_PATH:
                    data = json.dumps({"error": {"message": f"no route {self.path}"}}).encode()
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                body = json.loads(raw)
                server.auth.add(self.headers.get("Authorization", ""))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    status, payload, headers = server.answer(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        prompt = body["messages"][1]["content"]
        case = re.search(r"case:([a-z-]+)", prompt).group(1)
        with self.lock:
            self.calls[case] += 1
            n = self.calls[case]
        if case == "rate-limited" and n == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        if case == "flaky" and n <= 2:
            return 500, {"error": {"message": "boom"}}, {}
        if case == "never" or (case == "malformed-once" and n == 1):
            return 200, completion("I think the first one is better, honestly."), {}
        if case == "biased":
            return 200, completion(json.dumps({"choice": "A", "strength": 1, "confidence": 0.8})), {}
        sections = shown_responses(prompt)
        (first, a), (_, b) = sections[0], sections[1]
        if case == "always-a-shorter":
            return 200, verdict(first, 2 if len(a) < len(b) else 1), {}
        if case == "fooled" and (a.strip() in FOOLED_BY) != (b.strip() in FOOLED_BY):
            return 200, verdict("A" if a.strip() in FOOLED_BY else "B", 2), {}
        if case in ("longer", "fooled"):
            return 200, verdict("tie" if len(a) == len(b) else "A" if len(a) > len(b) else "B", 2), {}
        winner = next(letter for letter, text in sections if "GOOD" in text)
        answer = {"choice": winner, "strength": 2, "confidence": 0.9, "explanation": "it is correct"}
        return 200, completion("Here is my verdict:\n```json\n" + json.dumps(answer) + "\n```"), {}


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
