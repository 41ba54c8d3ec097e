"""Drive a running qwen2 server with the official `openai` Python client.

Usage: QWEN2_BASE_URL=http://127.0.0.1:PORT/v1 python openai_client.py
Run by tests/openai_client.rs, which starts the server and a venv with `openai` installed.
Exits non-zero (an assertion) on any mismatch; prints one line per check.
"""

import json
import os

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["QWEN2_BASE_URL"], api_key=os.environ.get("QWEN2_API_KEY", "none"))

models = client.models.list()
model = models.data[0].id
print("models:", [m.id for m in models.data])

# Chat, non-streaming.
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is 2+2? Answer with one number."}],
    max_tokens=16,
    temperature=0,
)
text = r.choices[0].message.content
assert "4" in text, text
assert r.choices[0].finish_reason == "stop", r.choices[0].finish_reason
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
print("chat:", repr(text))

# Chat, streaming with usage: the deltas concatenate to the non-streaming text.
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is 2+2? Answer with one number."}],
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert "".join(parts) == text, (parts, text)
assert finish == "stop" and usage is not None and usage.completion_tokens == r.usage.completion_tokens
print("stream:", len(parts), "chunks")

# Logprobs in the chat shape.
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Name a color."}],
    max_tokens=5,
    temperature=0,
    logprobs=True,
    top_logprobs=2,
)
lp = r.choices[0].logprobs.content
assert lp and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp)
print("logprobs:", [(t.token, round(t.logprob, 3)) for t in lp])

# Tools: the parsed call comes back as a typed tool call.
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris right now?"}],
    tools=tools,
    max_tokens=80,
    temperature=0,
)
calls = r.choices[0].message.tool_calls
assert calls and calls[0].function.name == "get_weather", r
assert "Paris" in json.loads(calls[0].function.arguments)["city"]
print("tool call:", calls[0].function.name, calls[0].function.arguments)

# tool_choice naming the function: a call even for a prompt that needs none.
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Tell me a joke."}],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    max_tokens=60,
    temperature=0,
)
assert r.choices[0].finish_reason == "tool_calls", r
calls = r.choices[0].message.tool_calls
assert calls and calls[0].function.name == "get_weather", r
assert isinstance(json.loads(calls[0].function.arguments)["city"], str), r
print("tool_choice named:", calls[0].function.arguments)

# Structured output.
schema = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Invent a person."}],
    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    max_tokens=60,
    temperature=0,
)
obj = json.loads(r.choices[0].message.content)
assert isinstance(obj["name"], str) and isinstance(obj["age"], int), obj
print("json_schema:", obj)

# Completions, plain and streaming.
r = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=12, temperature=0)
ctext = r.choices[0].text
assert ctext, r
s = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=12, temperature=0, stream=True)
streamed = "".join(c.choices[0].text for c in s if c.choices)
assert streamed == ctext, (streamed, ctext)
print("completions:", repr(ctext))

# echo + logprobs: the prompt's tokens come first, the very first without a logprob.
r = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=4, temperature=0,
                              echo=True, logprobs=1)
lp = r.choices[0].logprobs
assert r.choices[0].text.startswith("def add(a, b):"), r
assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:]), lp
assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), lp
print("echo logprobs:", [round(x, 3) for x in lp.token_logprobs[1:6]])

# Errors surface as the client's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=0)
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400
print("errors: ok")
print("ALL OK")
