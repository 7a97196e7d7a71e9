"""The official `openai` package against Tollgate, exactly as a user would point it."""

import json
import urllib.request

import openai
import pytest
from openai import OpenAI


def make_client(stack, key, base="/v1"):
    return OpenAI(api_key=key, base_url=stack.base + base, max_retries=0, timeout=20)


@pytest.mark.parametrize("base", ["/v1", "/api/v1"])
def test_non_streaming(stack, key, base):
    client = make_client(stack, key, base)
    resp = client.chat.completions.create(
        model="mock/echo-1", messages=[{"role": "user", "content": "Hello"}]
    )
    assert resp.model == "mock/echo-1"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0


def test_raw_response_headers(stack, key):
    client = make_client(stack, key)
    raw = client.chat.completions.with_raw_response.create(
        model="mock/echo-1", messages=[{"role": "user", "content": "Hello"}]
    )
    assert raw.headers.get("x-generation-id", "").startswith("gen-")
    assert raw.headers.get("x-request-id")
    assert int(raw.headers["x-tollgate-overhead-us"]) >= 0
    assert raw.parse().model == "mock/echo-1"


def test_streaming(stack, key):
    client = make_client(stack, key)
    raw = client.chat.completions.with_raw_response.create(
        model="mock/echo-1", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    gen_id = raw.headers["x-generation-id"]
    stream = raw.parse()
    text, models, usages, ids = "", set(), [], set()
    for chunk in stream:
        models.add(chunk.model)
        ids.add(chunk.id)
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text.startswith("Hello from the mock provider")
    assert models == {"mock/echo-1"}
    assert ids == {f"chatcmpl-{gen_id}"}, "every chunk carries the gateway's id"
    assert usages == [], "no usage chunk unless the client asks"


def test_streaming_with_include_usage(stack, key):
    client = make_client(stack, key)
    stream = client.chat.completions.create(
        model="mock/echo-1",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.completion_tokens > 0
    assert final.model == "mock/echo-1"


def test_errors_surface_as_sdk_exceptions(stack, key):
    client = make_client(stack, key)
    with pytest.raises(openai.AuthenticationError):
        make_client(stack, "sk-tg-not-a-real-key").chat.completions.create(
            model="mock/echo-1", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope/none", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mock/echo-1", messages=[])
    with pytest.raises(openai.APIStatusError) as e:
        make_client(stack, stack.account("0")).chat.completions.create(
            model="mock/echo-1", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 402
    assert e.value.body["code"] == "insufficient_balance"
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(
            model="mock/echo-1",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-status": "500"},
        )
    assert e.value.status_code == 502
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="mock/echo-1",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-status": "429"},
        )
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="dead/model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503


def test_error_mid_stream_ends_the_stream(stack, key):
    client = make_client(stack, key)
    stream = client.chat.completions.create(
        model="mock/echo-1",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_headers={"x-mock-stream-error-after": "2"},
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_models_list_and_retrieve(stack):
    client = OpenAI(api_key="unused", base_url=stack.base + "/v1", max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert "mock/echo-1" in ids
    with urllib.request.urlopen(stack.base + "/v1/models/mock/echo-1", timeout=5) as r:
        model = json.loads(r.read())
    assert model["context_length"] == 32768


def test_generation_and_credits_add_up(stack, key):
    client = make_client(stack, key)
    raw = client.chat.completions.with_raw_response.create(
        model="mock/echo-1", messages=[{"role": "user", "content": "Hello"}]
    )
    resp = raw.parse()
    gen_id = raw.headers["x-generation-id"]
    expected = resp.usage.prompt_tokens * 1_000 + resp.usage.completion_tokens * 2_000  # nano-USD

    def get(path):
        req = urllib.request.Request(stack.base + path, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    import time

    for _ in range(100):
        try:
            gen = get(f"/v1/generation?id={gen_id}")["data"]
            break
        except urllib.error.HTTPError:
            time.sleep(0.05)
    assert round(gen["total_cost"] * 1e9) == expected
    # The body's id is the gateway's own: the generation id behind OpenAI's prefix.
    assert resp.id == f"chatcmpl-{gen_id}"
    assert get(f"/v1/generation?id={resp.id}")["data"]["id"] == gen_id
    credits = get("/v1/credits")["data"]
    assert round((credits["total_credits"] - credits["remaining"]) * 1e9) == expected
