"""Drive orchestratord's OpenAI door with the official `openai` SDK and report what
happened as one JSON object on stdout (the Rust test asserts on it).

usage: openai_sdk.py BASE_URL API_KEY MODEL LIMITED_KEY
  LIMITED_KEY belongs to a tenant whose tokens_per_minute (10) admits one small task:
  its second task must surface as openai.RateLimitError.
"""
import json
import sys

import openai
from openai import OpenAI

base, key, model, limited = sys.argv[1:5]
out = {"sdk_version": openai.__version__}
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)

out["models"] = [m.id for m in client.models.list().data]

MESSAGES = [{"role": "system", "content": "You repeat codes."},
            {"role": "user", "content": "The secret code is 4821. Repeat the secret code."}]
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=MESSAGES, max_tokens=8, temperature=0, seed=7)
chat = raw.parse()
out["chat"] = {
    "task_id": raw.headers.get("x-orch-task-id"),
    "content": chat.choices[0].message.content,
    "role": chat.choices[0].message.role,
    "finish_reason": chat.choices[0].finish_reason,
    "usage": chat.usage.model_dump() if chat.usage else None,
    "object": chat.object,
}

stream = client.chat.completions.create(
    model=model, messages=MESSAGES, max_tokens=8, temperature=0, seed=7, stream=True,
    stream_options={"include_usage": True})
deltas, finish, usage, roles = [], None, None, []
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage.model_dump()
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            deltas.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["chat_stream"] = {"content": "".join(deltas), "chunks": len(deltas), "roles": roles,
                      "finish_reason": finish, "usage": usage}

comp = client.completions.create(model=model, prompt="Count: 1, 2, 3,", max_tokens=6,
                                  temperature=0, seed=7)
out["completion"] = {"text": comp.choices[0].text, "finish_reason": comp.choices[0].finish_reason,
                     "usage": comp.usage.model_dump() if comp.usage else None}
pieces = [c.choices[0].text for c in client.completions.create(
    model=model, prompt="Count: 1, 2, 3,", max_tokens=6, temperature=0, seed=7, stream=True)
    if c.choices]
out["completion_stream"] = {"text": "".join(pieces)}

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                   n=2, max_tokens=4)
    out["unsupported"] = "accepted"
except openai.BadRequestError as e:
    out["unsupported"] = {"status": e.status_code, "param": (e.body or {}).get("param")}

try:
    OpenAI(base_url=base + "/v1", api_key="oqk_not-a-key", max_retries=0).models.list()
    out["bad_key"] = "accepted"
except openai.AuthenticationError as e:
    out["bad_key"] = {"status": e.status_code}

lim = OpenAI(base_url=base + "/v1", api_key=limited, max_retries=0, timeout=60)
first = lim.completions.create(model=model, prompt="Count: 1, 2, 3,", max_tokens=6, temperature=0)
try:
    lim.completions.create(model=model, prompt="Count: 1, 2, 3,", max_tokens=10, temperature=0)
    out["rate_limited"] = "accepted"
except openai.RateLimitError as e:
    out["rate_limited"] = {"status": e.status_code,
                           "retry_after": e.response.headers.get("retry-after"),
                           "code": (e.body or {}).get("code")}

print(json.dumps(out))
