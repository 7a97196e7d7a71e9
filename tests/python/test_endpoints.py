"""Every inference endpoint other than chat, with the official `openai` package: embeddings,
legacy completions, images, speech and transcriptions, each billed exactly by its own unit, and
a model asked for an endpoint it does not declare.

Expected costs are computed here in integer nano-USD from the price table in conftest.py and
the units the provider reported (tokens, images, characters, seconds of audio).
"""

import io
import json
import math
import wave
from decimal import Decimal
from fractions import Fraction
from math import ceil

import openai
import pytest

NANO = 1_000_000_000
MILLION = 1_000_000

# nano-USD per 1M tokens (input, output): conftest.py's prices × 1e9.
TOKEN_PRICES = {
    "mock/echo-1": (1_000_000_000, 2_000_000_000),
    "anthropic/claude-test": (3_000_000_000, 15_000_000_000),
    "google/gemini-test": (300_000_000, 2_500_000_000),
    "mock/embed": (20_000_000, 0),
    "google/embed": (150_000_000, 0),
}
IMAGE_PRICES = {"1024x1024": 40_000_000, "1792x1024": 80_000_000}  # nano-USD per image
TTS_PER_MCHAR = 15 * NANO  # nano-USD per 1M input characters
WHISPER_PER_MINUTE = 6_000_000  # nano-USD per minute of audio ($0.006)

COMPLETION_MODELS = ["mock/echo-1", "anthropic/claude-test", "google/gemini-test"]


def tokens_nano(model, prompt, completion=0):
    pin, pout = TOKEN_PRICES[model]
    return ceil(Fraction(prompt * pin + completion * pout, MILLION))


def nano(usd_text):
    v = Decimal(usd_text) * NANO
    assert v == v.to_integral_value(), usd_text
    return int(v)


def billed(stack, key, gen_id, expected_nano, *, estimated=False, streamed=False, tokens=None):
    """The generation's cost is exactly `expected_nano`."""
    assert gen_id and gen_id.startswith("gen-"), gen_id
    gen = stack.generation(key, gen_id)
    assert gen["status"] == "success", gen
    assert gen["usage_estimated"] is estimated, gen
    assert gen["streamed"] is streamed, gen
    if tokens is not None:
        assert (gen["tokens_prompt"], gen["tokens_completion"]) == tokens, gen
    assert nano(gen["total_cost_usd"]) == expected_nano, (gen, expected_nano)
    assert round(gen["total_cost"] * 1e9) == expected_nano, (gen, expected_nano)
    return gen


def credits_used_nano(stack, key):
    status, body = stack.get("/v1/credits", key)
    assert status == 200, body
    d = body["data"]
    return round((d["total_credits"] - d["remaining"]) * 1e9)


def wav_bytes(seconds, rate=8000):
    """A mono 16-bit PCM WAV of a 440 Hz tone, `seconds` long."""
    frames = int(seconds * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(int(8000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(2, "little", signed=True) for i in range(frames))
        )
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Embeddings


def test_embeddings_openai_kind(stack, key, client):
    inputs = ["The quick brown fox", "jumps over", "the lazy dog."]
    raw = client.embeddings.with_raw_response.create(model="mock/embed", input=inputs)
    resp = raw.parse()
    assert resp.model == "mock/embed"
    assert len(resp.data) == len(inputs)
    assert [d.index for d in resp.data] == [0, 1, 2]
    dims = {len(d.embedding) for d in resp.data}
    assert len(dims) == 1 and dims.pop() > 0
    assert all(isinstance(x, float) for d in resp.data for x in d.embedding)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0
    billed(stack, key, raw.headers["x-generation-id"], tokens_nano("mock/embed", resp.usage.prompt_tokens),
           tokens=(resp.usage.prompt_tokens, 0))
    assert last_path(stack).endswith("/embeddings")

    # One string in, one vector out; floats asked for explicitly come back as floats.
    raw = client.embeddings.with_raw_response.create(model="mock/embed", input="hello", encoding_format="float")
    resp = raw.parse()
    assert len(resp.data) == 1 and len(resp.data[0].embedding) > 0
    billed(stack, key, raw.headers["x-generation-id"], tokens_nano("mock/embed", resp.usage.prompt_tokens),
           tokens=(resp.usage.prompt_tokens, 0))


def last_path(stack):
    reqs = stack.mock_requests()
    assert reqs
    return reqs[-1]["path"]


@pytest.mark.parametrize("inputs", [["first text to embed", "second one"], "only one text"], ids=["batch", "single"])
def test_embeddings_gemini_kind(stack, key, client, inputs):
    raw = client.embeddings.with_raw_response.create(model="google/embed", input=inputs)
    resp = raw.parse()
    n = len(inputs) if isinstance(inputs, list) else 1
    assert resp.model == "google/embed"
    assert len(resp.data) == n
    assert [d.index for d in resp.data] == list(range(n))
    for d in resp.data:
        assert isinstance(d.embedding, list) and len(d.embedding) > 0
        assert all(isinstance(x, float) for x in d.embedding)
    up = stack.mock_requests()[-1]
    assert up["path"].split("?")[0].endswith(
        "/models/text-embedding-004:" + ("batchEmbedContents" if n > 1 else "embedContent")
    ), up["path"]
    # Gemini reports no tokens for embeddings: the gateway estimates them at 4 bytes per token
    # of the request body, and says so.
    body_len = len(raw.http_request.content)
    est = ceil(body_len / 4)
    billed(stack, key, raw.headers["x-generation-id"], tokens_nano("google/embed", est), estimated=True, tokens=(est, 0))


# --------------------------------------------------------------------------------------------
# Legacy completions


@pytest.mark.parametrize("model", COMPLETION_MODELS)
def test_legacy_completions(stack, key, client, model):
    raw = client.completions.with_raw_response.create(model=model, prompt="Say hello", max_tokens=32)
    resp = raw.parse()
    assert resp.object == "text_completion"
    assert resp.model == model
    assert resp.id
    assert len(resp.choices) == 1
    assert isinstance(resp.choices[0].text, str) and resp.choices[0].text.strip()
    assert resp.choices[0].finish_reason == "stop"
    u = resp.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    billed(stack, key, raw.headers["x-generation-id"], tokens_nano(model, u.prompt_tokens, u.completion_tokens),
           tokens=(u.prompt_tokens, u.completion_tokens))
    up = stack.mock_requests()[-1]
    if model == "mock/echo-1":
        # Passed through to the provider's own legacy endpoint.
        assert up["path"].endswith("/completions") and not up["path"].endswith("/chat/completions")
        assert up["json"]["prompt"] == "Say hello"
    elif model.startswith("anthropic/"):
        # Translated through chat: one user message.
        assert up["path"].endswith("/messages")
        msgs = up["json"]["messages"]
        assert [m["role"] for m in msgs] == ["user"] and "Say hello" in json.dumps(msgs[0]["content"])
        assert up["json"]["max_tokens"] == 32
        assert resp.id.startswith("cmpl-")
    else:
        assert ":generateContent" in up["path"]
        assert "Say hello" in json.dumps(up["json"]["contents"])


@pytest.mark.parametrize("model", COMPLETION_MODELS)
def test_legacy_completions_streaming(stack, key, client, model):
    whole = client.completions.create(model=model, prompt="Say hello", max_tokens=32)

    def run(**extra):
        raw = client.completions.with_raw_response.create(
            model=model, prompt="Say hello", max_tokens=32, stream=True, **extra
        )
        chunks = []
        for c in raw.parse():
            chunks.append(c)
            assert len(chunks) < 10_000
        return chunks, raw.headers["x-generation-id"]

    chunks, gen_id = run(stream_options={"include_usage": True})
    assert len(chunks) > 2
    assert {c.object for c in chunks} == {"text_completion"}
    assert {c.model for c in chunks} == {model}
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert text == whole.choices[0].text
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None, "one usage chunk, last"
    u = usage[0]
    assert (u.prompt_tokens, u.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    cost = tokens_nano(model, u.prompt_tokens, u.completion_tokens)
    billed(stack, key, gen_id, cost, streamed=True, tokens=(u.prompt_tokens, u.completion_tokens))

    chunks, gen_id = run()
    assert all(c.usage is None for c in chunks), "no usage chunk unless asked for"
    assert "".join(ch.text for c in chunks for ch in c.choices) == whole.choices[0].text
    billed(stack, key, gen_id, cost, streamed=True, tokens=(u.prompt_tokens, u.completion_tokens))


# --------------------------------------------------------------------------------------------
# Images, speech, transcriptions


@pytest.mark.parametrize("size,n", [("1024x1024", 2), ("1792x1024", 1)])
def test_images(stack, key, client, size, n):
    raw = client.images.with_raw_response.generate(model="mock/image", prompt="a red fox in the snow", n=n, size=size)
    resp = raw.parse()
    assert len(resp.data) == n
    for img in resp.data:
        assert img.url or img.b64_json
    up = stack.mock_requests()[-1]
    assert up["path"].endswith("/images/generations")
    assert up["json"]["model"] == "image-upstream" and up["json"]["n"] == n and up["json"]["size"] == size
    billed(stack, key, raw.headers["x-generation-id"], n * IMAGE_PRICES[size])


def test_images_unpriced_size_is_refused(stack, key, client):
    stack.mock_clear()
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="mock/image", prompt="a fox", n=1, size="256x256")
    assert "256x256" in e.value.message
    assert stack.mock_requests() == []
    assert credits_used_nano(stack, key) == 0


def test_speech(stack, key, client):
    text = "Héllo, wörld! Ünïcödé counts characters, not bytes ✓ 🎉"
    raw = client.audio.speech.with_raw_response.create(model="mock/tts", voice="alloy", input=text)
    audio = raw.content
    assert isinstance(audio, bytes) and len(audio) > 0
    assert raw.parse().content == audio
    up = stack.mock_requests()[-1]
    assert up["path"].endswith("/audio/speech")
    assert up["json"]["model"] == "tts-upstream" and up["json"]["input"] == text
    chars = len(text)  # code points, as the gateway counts them
    assert chars < len(text.encode())
    billed(stack, key, raw.headers["x-generation-id"], ceil(Fraction(chars * TTS_PER_MCHAR, MILLION)))


def test_speech_streamed_to_file(stack, key, client, tmp_path):
    with client.audio.speech.with_streaming_response.create(model="mock/tts", voice="alloy", input="Hi there") as r:
        gen_id = r.headers["x-generation-id"]
        out = tmp_path / "speech.mp3"
        r.stream_to_file(out)
    assert out.stat().st_size > 0
    billed(stack, key, gen_id, ceil(Fraction(len("Hi there") * TTS_PER_MCHAR, MILLION)))


@pytest.mark.parametrize("seconds", [1.25, 3.0])
def test_transcription(stack, key, client, seconds):
    audio = wav_bytes(seconds)
    raw = client.audio.transcriptions.with_raw_response.create(file=("a.wav", audio, "audio/wav"), model="mock/whisper")
    resp = raw.parse()
    assert isinstance(resp.text, str) and resp.text.strip()
    up = stack.mock_requests()[-1]
    assert up["path"].endswith("/audio/transcriptions")
    assert up["body_len"] > len(audio)
    assert 'name="model"\r\n\r\nwhisper-upstream\r\n' in up["body"], "the form's model is rewritten"
    # What the provider reported is what is billed.
    usage = json.loads(raw.content).get("usage")
    assert usage, f"the provider reported no usage: {raw.content[:200]!r}"
    if usage["type"] == "duration":
        reported = Fraction(Decimal(str(usage["seconds"])))
        expected = ceil(reported * WHISPER_PER_MINUTE / 60)
    else:
        expected = 0  # token-reported transcription on a model priced per minute only
    billed(stack, key, raw.headers["x-generation-id"], expected)


# --------------------------------------------------------------------------------------------
# Endpoints a model does not declare, or its provider does not offer


def _call(client, endpoint, model):
    if endpoint == "chat":
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    if endpoint == "completions":
        return client.completions.create(model=model, prompt="hi", max_tokens=5)
    if endpoint == "embeddings":
        return client.embeddings.create(model=model, input="hi")
    if endpoint == "images":
        return client.images.generate(model=model, prompt="a fox", n=1, size="1024x1024")
    if endpoint == "speech":
        return client.audio.speech.create(model=model, voice="alloy", input="hi").content
    if endpoint == "transcriptions":
        return client.audio.transcriptions.create(file=("a.wav", wav_bytes(0.5), "audio/wav"), model=model)
    raise AssertionError(endpoint)


UNDECLARED = [
    ("chat", "mock/embed", "/chat/completions"),
    ("completions", "mock/image", "/completions"),
    ("embeddings", "mock/echo-1", "/embeddings"),
    ("embeddings", "google/gemini-test", "/embeddings"),
    ("images", "anthropic/claude-test", "/images/generations"),
    ("speech", "mock/whisper", "/audio/speech"),
    ("transcriptions", "mock/tts", "/audio/transcriptions"),
    ("chat", "google/embed", "/chat/completions"),
]


@pytest.mark.parametrize("endpoint,model,path", UNDECLARED, ids=[f"{e}-{m}" for e, m, _ in UNDECLARED])
def test_undeclared_endpoint_is_bad_request(stack, key, client, endpoint, model, path):
    stack.mock_clear()
    with pytest.raises(openai.BadRequestError) as e:
        _call(client, endpoint, model)
    assert e.value.status_code == 400
    assert path in e.value.message, e.value.message
    assert model in e.value.message
    assert e.value.body["code"] == "invalid_request"
    assert e.value.body["param"] == "model"
    assert stack.mock_requests() == [], "the provider must not be called"
    assert credits_used_nano(stack, key) == 0


def test_endpoint_the_provider_kind_does_not_offer(stack, key, client):
    stack.mock_clear()
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="anthropic/claude-embed", input="hi")
    assert "/embeddings" in e.value.message and "anthropic" in e.value.message, e.value.message
    assert stack.mock_requests() == []
    assert credits_used_nano(stack, key) == 0
    # The reservation was released: the whole balance is still available.
    status, body = stack.get("/v1/credits", key)
    assert body["data"].get("reserved", 0) == 0, body


def test_images_b64_json(stack, key, client):
    raw = client.images.with_raw_response.generate(
        model="mock/image", prompt="a fox", n=2, size="1024x1024", response_format="b64_json"
    )
    resp = raw.parse()
    assert len(resp.data) == 2
    import base64

    for img in resp.data:
        assert base64.b64decode(img.b64_json).startswith(b"\x89PNG\r\n\x1a\n")
    billed(stack, key, raw.headers["x-generation-id"], 2 * IMAGE_PRICES["1024x1024"])


def test_speech_format(stack, key, client):
    raw = client.audio.speech.with_raw_response.create(
        model="mock/tts", voice="nova", input="Testing one two three", response_format="wav"
    )
    assert raw.headers["content-type"].startswith("audio/wav")
    assert raw.content[:4] == b"RIFF"
    billed(stack, key, raw.headers["x-generation-id"], ceil(Fraction(len("Testing one two three") * TTS_PER_MCHAR, MILLION)))


def test_transcription_text_format_is_estimated(stack, key, client):
    """`response_format="text"` answers plain text with no usage: the gateway bills an
    estimate of whole seconds, and marks the generation estimated."""
    raw = client.audio.transcriptions.with_raw_response.create(
        file=("a.wav", wav_bytes(1.0), "audio/wav"), model="mock/whisper", response_format="text"
    )
    text = raw.parse()
    assert isinstance(text, str) and text.strip()
    gen = stack.generation(key, raw.headers["x-generation-id"])
    assert gen["status"] == "success" and gen["usage_estimated"] is True, gen
    cost = nano(gen["total_cost_usd"])
    assert cost > 0 and cost % (WHISPER_PER_MINUTE // 60) == 0, gen
