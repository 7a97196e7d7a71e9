#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/seed-*, from the test fixtures and
conf/tollgate.toml. Run from the repository root: python3 fuzz/make_seeds.py

Stream targets read [flags, k, k two-byte cut positions, stream...] (fuzz/src/lib.rs, Split);
the body targets read [flags, body...]. Seeds are small on purpose (a few KB each): libFuzzer
mutates from them, and its inputs default to at most the largest seed's size.
"""
import glob
import os
import re
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def split_header(flags, stream, cuts=(0.33, 0.71)):
    """Flags, then cuts at fractions of the stream (one lands mid-event in practice)."""
    head = bytes([flags, len(cuts)])
    for frac in cuts:
        head += struct.pack("<H", int(len(stream) * frac))
    return head + stream


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def fixtures(pattern):
    return sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", pattern)))


def stem(path):
    return os.path.basename(path).replace(".", "_")


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)

    openai_sse = [read(p) for p in fixtures("*/stream_*.openai.sse")]
    anthropic_sse = fixtures("anthropic/stream_*.anthropic.sse")
    gemini_sse = fixtures("gemini/stream_*.gemini.sse")

    # sse_decoder: every recorded stream, one with CRLF line ends and a BOM, one with a small
    # limit (flags >= 128: limit (flags - 128) * 4 bytes).
    for p in anthropic_sse + gemini_sse:
        write("sse_decoder", stem(p), split_header(0, read(p)))
    crlf = b"\xef\xbb\xbf" + read(anthropic_sse[0]).replace(b"\n", b"\r\n")
    write("sse_decoder", "crlf_bom", split_header(0, crlf, (0.5,)))
    write("sse_decoder", "small_limit", split_header(128 + 16, b": ping\nevent: x\nid: 1\ndata: a\ndata: b\n\nretry: 5\ndata:" + b"z" * 70 + b"\n\n"))

    # openai_stream: flags bit 0 strips the gateway's usage chunk, bit 1 re-frames as legacy
    # completions.
    for i, s in enumerate(openai_sse):
        write("openai_stream", "fixture%d" % i, split_header(i % 4, s))

    # anthropic_stream / gemini_stream: bit 0 include_usage, bit 1 legacy completions.
    for i, p in enumerate(anthropic_sse):
        write("anthropic_stream", stem(p), split_header(i % 4, read(p)))
    for i, p in enumerate(gemini_sse):
        write("gemini_stream", stem(p), split_header(i % 4, read(p)))

    # body_rewrite: bit 0 add include_usage; bit 7 multipart with the low 6 bits the boundary's
    # length, taken from the start of the body.
    requests = fixtures("*/request_*.openai.json")
    for i, p in enumerate(requests):
        write("body_rewrite", stem(p), bytes([i % 2]) + read(p))
    write("body_rewrite", "stream_request", b"\x01" + b'{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1},"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"n":2}')
    for i, p in enumerate(fixtures("anthropic/response_*.openai.json")[:2]):
        write("body_rewrite", stem(p), b"\x00" + read(p))
    chunk = openai_sse[0].split(b"\n\n")[1].removeprefix(b"data: ")
    write("body_rewrite", "chunk", b"\x00" + chunk)
    write("body_rewrite", "legacy", b"\x00" + b'{"model":"m","prompt":["Say hi"],"max_tokens":5,"stream":true}')
    boundary = b"----tollgate7MA4YWxkTrZu0gW"
    form = (
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
        b"Content-Type: audio/wav\r\n\r\nRIFF\x00\x01WAVE\r\n"
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n"
        b"--" + boundary + b"--\r\n"
    )
    write("body_rewrite", "multipart", bytes([0x80 | len(boundary)]) + boundary + form)

    # translate_request: bit 0 only what parse_chat_request accepts, bit 1 no default limit.
    for i, p in enumerate(requests):
        write("translate_request", stem(p), bytes([i % 4]) + read(p))
    write("translate_request", "embeddings", b"\x00" + b'{"model":"e","input":["a","b"],"dimensions":8}')

    # translate_response: flags % 3 picks Anthropic, Gemini or Gemini embeddings.
    for p in fixtures("anthropic/response_*.anthropic.json"):
        flags = 0x80 if "json" in p else 0
        write("translate_response", stem(p), bytes([flags]) + read(p))
    for p in fixtures("gemini/response_*.gemini.json"):
        write("translate_response", stem(p), b"\x01" + read(p))
    write("translate_response", "embeddings", b"\x02" + b'{"embeddings":[{"values":[0.1,-2e-3]},{"values":[1]}]}')

    # config_parse: conf/tollgate.toml without comments, cut into files that each validate on
    # their own (the shared sections, then a few models each).
    text = read("conf/tollgate.toml").decode()
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    text = "\n".join(lines) + "\n"
    first_model = text.index("[[models]]")
    head, models = text[:first_model], text[first_model:]
    blocks = ["[[models]]" + b for b in models.split("[[models]]")[1:]]
    write("config_parse", "head", head.encode())
    group, n = [], 0
    for b in blocks:
        group.append(b)
        if sum(map(len, group)) > 2500:
            write("config_parse", "models%d" % n, (head + "".join(group)).encode())
            group, n = [], n + 1
            if n == 3:
                break
    # The aliases block is commented out in the shipped config: one of each shape by hand.
    write("config_parse", "aliases", (head + blocks[0] + '[[aliases]]\nname = "best"\nmodels = ["%s"]\n' % re.search(r'slug = "([^"]+)"', blocks[0]).group(1)).encode())


if __name__ == "__main__":
    main()
