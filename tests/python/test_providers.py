"""Chat completions through every provider kind, with the official `openai` package.

The same scenarios run against a model of each kind: `mock/echo-1` (OpenAI wire format, passed
through), `anthropic/claude-test` (the Messages API, translated both ways) and
`google/gemini-test` (`generateContent`, translated both ways), all served by one
`tollgate mock-upstream`. Each test checks what the SDK sees, what the provider was sent (the
mock's request log) and that the generation record's cost is the price table applied to the
provider-reported tokens, to the nano-USD.
"""

import base64
import json
from decimal import Decimal
from fractions import Fraction
from math import ceil

import pytest

# USD per 1M tokens, in nano-USD per 1M tokens: (input, output). Must match conftest.py.
PRICES = {
    "mock/echo-1": (1_000_000_000, 2_000_000_000),
    "anthropic/claude-test": (3_000_000_000, 15_000_000_000),
    "google/gemini-test": (300_000_000, 2_500_000_000),
}
KINDS = {"mock/echo-1": "openai", "anthropic/claude-test": "anthropic", "google/gemini-test": "gemini"}
MODELS = list(PRICES)

# A 1×1 transparent PNG.
PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def token_cost_nano(model, prompt_tokens, completion_tokens):
    """Σ tokens × price per 1M, rounded up once to a whole nano-USD (no markup: tiers = [])."""
    pin, pout = PRICES[model]
    return ceil(Fraction(prompt_tokens * pin + completion_tokens * pout, 1_000_000))


def nano(usd_text):
    """An exact decimal USD string as integer nano-USD."""
    v = Decimal(usd_text) * 1_000_000_000
    assert v == v.to_integral_value(), usd_text
    return int(v)


def assert_billed(stack, key, gen_id, model, usage, streamed=False):
    """The generation `gen_id` cost exactly the price table applied to `usage`."""
    assert gen_id and gen_id.startswith("gen-"), gen_id
    gen = stack.generation(key, gen_id)
    assert gen["status"] == "success", gen
    assert gen["model"] == model
    assert gen["streamed"] is streamed, gen
    assert gen["usage_estimated"] is False, gen
    assert (gen["tokens_prompt"], gen["tokens_completion"]) == (usage.prompt_tokens, usage.completion_tokens), gen
    expected = token_cost_nano(model, usage.prompt_tokens, usage.completion_tokens)
    assert expected > 0
    assert nano(gen["total_cost_usd"]) == expected, (gen, expected)
    assert round(gen["total_cost"] * 1e9) == expected, (gen, expected)
    return gen


def last_upstream(stack):
    reqs = stack.mock_requests()
    assert reqs, "the mock received nothing"
    return reqs[-1]


def upstream_turns(req, kind):
    """(role, parts) of each conversation turn the provider was sent, in its own format."""
    body = req["json"]
    if kind == "openai":
        return [(m["role"], m.get("content")) for m in body["messages"]]
    if kind == "anthropic":
        return [(m["role"], m["content"]) for m in body["messages"]]
    return [(c.get("role"), c["parts"]) for c in body["contents"]]


def _text_bytes(content):
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        return sum(len(p["text"].encode()) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def provider_usage(stack, kind, answer_text):
    """The usage the mock provider reports for its last request, by its documented counting
    (mock/openai.rs, anthropic.rs, gemini.rs): Σ over turns (and the system prompt) of
    ceil(text bytes / 4) + 3 prompt tokens; one completion token per word of the answer."""
    body = last_upstream(stack)["json"]
    turn = lambda content: -(-_text_bytes(content) // 4) + 3
    if kind == "openai":
        prompt = sum(turn(m.get("content")) for m in body["messages"])
    elif kind == "anthropic":
        prompt = sum(turn(m["content"]) for m in body["messages"])
        if body.get("system") is not None:
            prompt += turn(body["system"])
    else:
        prompt = sum(turn(c["parts"]) for c in body["contents"])
        si = body.get("systemInstruction") or body.get("system_instruction")
        if si is not None:
            prompt += turn(si["parts"])
    return prompt, len(answer_text.split())


def assert_provider_usage(stack, model, resp):
    """The usage the client sees is the provider's, untouched by translation."""
    got = (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert got == provider_usage(stack, KINDS[model], resp.choices[0].message.content)


def chat(client, **kw):
    """A non-streamed chat completion: (parsed response, X-Generation-Id)."""
    raw = client.chat.completions.with_raw_response.create(**kw)
    return raw.parse(), raw.headers.get("x-generation-id")


def stream_chat(client, **kw):
    """A streamed chat completion, consumed: (chunks, X-Generation-Id)."""
    raw = client.chat.completions.with_raw_response.create(stream=True, **kw)
    gen_id = raw.headers.get("x-generation-id")
    chunks = []
    for chunk in raw.parse():
        chunks.append(chunk)
        assert len(chunks) < 10_000, "runaway stream"
    return chunks, gen_id


def reassemble(chunks):
    """Text, tool calls (by index) and finish reasons of a streamed choice 0."""
    text, calls, finishes = "", {}, []
    for c in chunks:
        for choice in c.choices:
            assert choice.index == 0
            d = choice.delta
            text += d.content or ""
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "type": None, "name": "", "arguments": ""})
                if tc.id:
                    assert slot["id"] in (None, tc.id), "a tool call's id changed mid-stream"
                    slot["id"] = tc.id
                if tc.type:
                    slot["type"] = tc.type
                if tc.function is not None:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return text, calls, finishes


def usage_chunk(chunks):
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1, f"expected one usage chunk, got {len(with_usage)}"
    assert with_usage[0] is chunks[-1] and with_usage[0].choices == []
    return with_usage[0].usage


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_plain(stack, key, client, model):
    resp, gen_id = chat(client, model=model, messages=[{"role": "user", "content": "Hello there"}])
    assert resp.object == "chat.completion"
    assert resp.model == model
    assert resp.id
    msg = resp.choices[0].message
    assert msg.role == "assistant"
    assert isinstance(msg.content, str) and msg.content.strip()
    assert not msg.tool_calls
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert_provider_usage(stack, model, resp)
    assert_billed(stack, key, gen_id, model, resp.usage)
    # The body's id finds the same generation.
    assert stack.generation(key, resp.id)["id"] == gen_id


@pytest.mark.parametrize("model", MODELS)
def test_system_message(stack, key, client, model):
    system = "You are a terse assistant. Answer in one word."
    resp, gen_id = chat(
        client,
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hello there"}],
    )
    assert resp.model == model
    assert resp.choices[0].message.content.strip()
    assert resp.choices[0].finish_reason == "stop"
    up = last_upstream(stack)
    kind = KINDS[model]
    body = up["json"]
    if kind == "openai":
        assert body["messages"][0] == {"role": "system", "content": system}
    elif kind == "anthropic":
        sys_text = body["system"] if isinstance(body["system"], str) else "".join(b["text"] for b in body["system"])
        assert system in sys_text
        assert [m["role"] for m in body["messages"]] == ["user"]
    else:
        si = body.get("systemInstruction") or body.get("system_instruction")
        assert system in "".join(p.get("text", "") for p in si["parts"])
        assert [c.get("role") for c in body["contents"]] == ["user"]
    assert_provider_usage(stack, model, resp)
    assert_billed(stack, key, gen_id, model, resp.usage)


@pytest.mark.parametrize("model", MODELS)
def test_multi_turn(stack, key, client, model):
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    resp, gen_id = chat(client, model=model, messages=messages)
    assert resp.model == model
    assert resp.choices[0].message.content.strip()
    turns = upstream_turns(last_upstream(stack), KINDS[model])
    want_roles = {"openai": ["user", "assistant", "user"], "anthropic": ["user", "assistant", "user"],
                  "gemini": ["user", "model", "user"]}[KINDS[model]]
    assert [r for r, _ in turns] == want_roles
    assert "Nice to meet you, Ada." in json.dumps(turns[1][1])
    assert "What is my name?" in json.dumps(turns[2][1])
    assert_provider_usage(stack, model, resp)
    assert_billed(stack, key, gen_id, model, resp.usage)


@pytest.mark.parametrize("model", MODELS)
def test_streaming(stack, key, client, model):
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole, _ = chat(client, model=model, messages=messages)

    # With include_usage: the provider's usage arrives as the last chunk and is what is billed.
    chunks, gen_id = stream_chat(client, model=model, messages=messages, stream_options={"include_usage": True})
    assert len(chunks) > 2
    assert {c.id for c in chunks} == {chunks[0].id}, "one id for the whole stream"
    assert chunks[0].id
    assert {c.model for c in chunks} == {model}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    text, calls, finishes = reassemble(chunks)
    assert text == whole.choices[0].message.content
    assert calls == {}
    assert finishes == ["stop"]
    usage = usage_chunk(chunks)
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    assert_billed(stack, key, gen_id, model, usage, streamed=True)

    # Without it: no usage chunk reaches the client, and the bill is the same.
    chunks, gen_id = stream_chat(client, model=model, messages=messages)
    assert all(c.usage is None for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.model for c in chunks} == {model}
    text, _, finishes = reassemble(chunks)
    assert text == whole.choices[0].message.content
    assert finishes == ["stop"]
    assert_billed(stack, key, gen_id, model, usage, streamed=True)


def _check_tool_calls(tool_calls):
    assert tool_calls, "the model called no tool"
    ids = set()
    for tc in tool_calls:
        assert tc["type"] == "function"
        assert tc["name"] == "get_weather"
        args = json.loads(tc["arguments"])
        assert isinstance(args, dict), tc["arguments"]
        assert tc["id"], "a tool call needs an id to answer it"
        ids.add(tc["id"])
    assert len(ids) == len(tool_calls), "tool call ids are unique"


def _tool_results(tool_calls):
    return [
        {"role": "tool", "tool_call_id": tc["id"], "content": json.dumps({"city": "Paris", "temp_c": 21, "sky": "clear"})}
        for tc in tool_calls
    ]


def _assistant_turn(tool_calls):
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": tc["id"], "type": "function", "function": {"name": tc["name"], "arguments": tc["arguments"]}}
            for tc in tool_calls
        ],
    }


def _check_tool_result_upstream(stack, kind, tool_calls):
    """The provider was sent the call and its result, in its own format."""
    body = last_upstream(stack)["json"]
    dump = json.dumps(body)
    assert "temp_c" in dump
    if kind == "openai":
        tools_msgs = [m for m in body["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in tools_msgs] == [tc["id"] for tc in tool_calls]
    elif kind == "anthropic":
        uses = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_use"]
        results = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_result"]
        assert [u["id"] for u in uses] == [tc["id"] for tc in tool_calls]
        assert [r["tool_use_id"] for r in results] == [tc["id"] for tc in tool_calls]
        assert body["messages"][-1]["role"] == "user"
    else:
        parts = [p for c in body["contents"] for p in c["parts"]]
        calls = [p for p in parts if "functionCall" in p or "function_call" in p]
        results = [p for p in parts if "functionResponse" in p or "function_response" in p]
        assert len(calls) == len(tool_calls) and len(results) == len(tool_calls)
        for r in results:
            assert (r.get("functionResponse") or r.get("function_response"))["name"] == "get_weather"


@pytest.mark.parametrize("model", MODELS)
def test_tool_call_round_trip(stack, key, client, model):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    resp, gen_id = chat(client, model=model, messages=messages, tools=[WEATHER_TOOL])
    assert resp.model == model
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.role == "assistant"
    calls = [
        {"id": tc.id, "type": tc.type, "name": tc.function.name, "arguments": tc.function.arguments}
        for tc in choice.message.tool_calls or []
    ]
    _check_tool_calls(calls)
    assert_billed(stack, key, gen_id, model, resp.usage)
    # The provider was offered the tool in its own format.
    up = last_upstream(stack)["json"]
    assert "get_weather" in json.dumps(up.get("tools"))

    # Send the result back: the model answers with text.
    messages += [_assistant_turn(calls)] + _tool_results(calls)
    resp, gen_id = chat(client, model=model, messages=messages, tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert not choice.message.tool_calls
    _check_tool_result_upstream(stack, KINDS[model], calls)
    assert_billed(stack, key, gen_id, model, resp.usage)


@pytest.mark.parametrize("model", MODELS)
def test_tool_call_streamed(stack, key, client, model):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    chunks, gen_id = stream_chat(
        client, model=model, messages=messages, tools=[WEATHER_TOOL], stream_options={"include_usage": True}
    )
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.model for c in chunks} == {model}
    text, calls_by_index, finishes = reassemble(chunks)
    assert finishes == ["tool_calls"], finishes
    assert sorted(calls_by_index) == list(range(len(calls_by_index))), "indices are 0..n"
    calls = [calls_by_index[i] for i in sorted(calls_by_index)]
    for c in calls:
        c["type"] = c["type"] or "function"
    _check_tool_calls(calls)
    assert_billed(stack, key, gen_id, model, usage_chunk(chunks), streamed=True)

    # The round trip, streamed too: the answer is text.
    messages += [_assistant_turn(calls)] + _tool_results(calls)
    chunks, gen_id = stream_chat(
        client, model=model, messages=messages, tools=[WEATHER_TOOL], stream_options={"include_usage": True}
    )
    text, calls_after, finishes = reassemble(chunks)
    assert finishes == ["stop"], finishes
    assert text.strip()
    assert calls_after == {}
    _check_tool_result_upstream(stack, KINDS[model], calls)
    assert_billed(stack, key, gen_id, model, usage_chunk(chunks), streamed=True)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("source", ["data_url", "http_url"])
def test_vision(stack, key, client, model, source):
    url = f"data:image/png;base64,{PNG_1X1}" if source == "data_url" else "https://example.com/images/cat.png"
    resp, gen_id = chat(
        client,
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )
    assert resp.model == model
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content.strip()
    # The image reached the provider in its own format.
    body = last_upstream(stack)["json"]
    kind = KINDS[model]
    if kind == "openai":
        parts = body["messages"][0]["content"]
        assert parts[1] == {"type": "image_url", "image_url": {"url": url}}
    elif kind == "anthropic":
        blocks = body["messages"][0]["content"]
        image = [b for b in blocks if b.get("type") == "image"]
        assert len(image) == 1
        if source == "data_url":
            assert image[0]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG_1X1}
        else:
            assert image[0]["source"] == {"type": "url", "url": url}
    else:
        parts = body["contents"][0]["parts"]
        if source == "data_url":
            inline = [p.get("inline_data") or p.get("inlineData") for p in parts if "inline_data" in p or "inlineData" in p]
            assert len(inline) == 1 and inline[0]["data"] == PNG_1X1
            assert (inline[0].get("mime_type") or inline[0].get("mimeType")) == "image/png"
        else:
            files = [p.get("file_data") or p.get("fileData") for p in parts if "file_data" in p or "fileData" in p]
            assert len(files) == 1 and (files[0].get("file_uri") or files[0].get("fileUri")) == url
    assert_billed(stack, key, gen_id, model, resp.usage)


@pytest.mark.parametrize("model", MODELS)
def test_json_mode(stack, key, client, model):
    resp, gen_id = chat(
        client,
        model=model,
        messages=[
            {"role": "system", "content": "Reply with a JSON object."},
            {"role": "user", "content": "Give me a JSON object with a greeting."},
        ],
        response_format={"type": "json_object"},
    )
    assert resp.model == model
    content = resp.choices[0].message.content
    try:
        parsed = json.loads(content)
    except (TypeError, ValueError):
        pytest.fail(f"json mode answered non-JSON content: {content!r}")
    assert isinstance(parsed, dict)
    assert_billed(stack, key, gen_id, model, resp.usage)


TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}, "hour24": {"type": "boolean"}},
            "required": ["tz", "hour24"],
        },
    },
}


@pytest.mark.parametrize("model", MODELS)
def test_forced_tool_choice(stack, key, client, model):
    """A named `tool_choice` reaches the provider in its own form: the forced tool is called,
    not the first one declared."""
    resp, gen_id = chat(
        client,
        model=model,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = resp.choices[0].message.tool_calls
    assert resp.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in calls] == ["get_time"]
    args = json.loads(calls[0].function.arguments)
    assert isinstance(args, dict) and set(args) >= {"tz", "hour24"}, args
    assert_billed(stack, key, gen_id, model, resp.usage)


@pytest.mark.parametrize("model", MODELS)
def test_tool_choice_none_answers_with_text(stack, key, client, model):
    resp, gen_id = chat(
        client,
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert resp.choices[0].finish_reason == "stop"
    assert not resp.choices[0].message.tool_calls
    assert resp.choices[0].message.content.strip()
    assert_billed(stack, key, gen_id, model, resp.usage)


@pytest.mark.parametrize("model", MODELS)
def test_json_mode_streamed(stack, key, client, model):
    chunks, gen_id = stream_chat(
        client,
        model=model,
        messages=[{"role": "user", "content": "Give me a JSON object with a greeting."}],
        response_format={"type": "json_object"},
        stream_options={"include_usage": True},
    )
    assert {c.model for c in chunks} == {model}
    text, calls, finishes = reassemble(chunks)
    try:
        parsed = json.loads(text)
    except ValueError:
        pytest.fail(f"json mode streamed non-JSON content: {text!r}")
    assert isinstance(parsed, dict)
    assert finishes == ["stop"]
    assert_billed(stack, key, gen_id, model, usage_chunk(chunks), streamed=True)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_max_tokens_cuts_the_answer(stack, key, client, model, stream):
    kw = dict(model=model, messages=[{"role": "user", "content": "Tell me everything"}], max_tokens=3)
    if stream:
        chunks, gen_id = stream_chat(client, stream_options={"include_usage": True}, **kw)
        text, _, finishes = reassemble(chunks)
        usage = usage_chunk(chunks)
        finish = finishes[-1] if finishes else None
    else:
        resp, gen_id = chat(client, **kw)
        text, usage, finish = resp.choices[0].message.content, resp.usage, resp.choices[0].finish_reason
    assert finish == "length"
    assert usage.completion_tokens == 3 == len(text.split())
    assert_billed(stack, key, gen_id, model, usage, streamed=stream)
