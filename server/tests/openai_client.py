"""The `openai` Python SDK against rllr-server's OpenAI-compatible endpoints.

Usage: openai_client.py HOST:PORT MODEL [TEXT_PAIR]
Runs a chat completion plain and streamed, and a text completion, and checks that the streamed
text spells the plain answer (greedy decoding) and that the `rllr` extension is present. Run by
server/tests/external.rs (ignored tests; `.ci/run` installs the SDK with pip).
"""
import json
import sys

from openai import OpenAI

addr, model = sys.argv[1], sys.argv[2]
extra = {"text_pair": sys.argv[3]} if len(sys.argv) > 3 else {}
client = OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "a gripping, beautifully acted film"}]

plain = client.chat.completions.create(model=model, messages=messages, max_tokens=24, extra_body=extra)
text = plain.choices[0].message.content
rllr = plain.model_extra["rllr"]
assert plain.object == "chat.completion", plain
assert plain.choices[0].finish_reason in ("stop", "length"), plain
assert plain.usage.completion_tokens > 0, plain.usage
assert "probabilities" in rllr and "rationale" in rllr, rllr

streamed = ""
last = None
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=24, stream=True, extra_body=extra
):
    if chunk.choices and chunk.choices[0].delta.content:
        streamed += chunk.choices[0].delta.content
    last = chunk
assert streamed == text, (streamed, text)
assert last.choices[0].finish_reason == plain.choices[0].finish_reason, last

comp = client.completions.create(model=model, prompt="a dull, lifeless film", max_tokens=24, extra_body=extra)
assert comp.object == "text_completion", comp
assert isinstance(comp.choices[0].text, str)

models = [m.id for m in client.models.list()]
assert model in models, models

try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    raise SystemExit("an unknown model was accepted")
except Exception as e:  # openai.NotFoundError
    assert getattr(e, "status_code", None) == 404, e

print(json.dumps({"text": text, "label": rllr["label"], "streamed_chunks_ok": True, "models": models}))
