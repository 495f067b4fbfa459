"""Stream one completion through orchestratord's OpenAI door with the official `openai`
SDK and print what the client received as one JSON object on stdout.

usage: openai_stream.py BASE_URL MODEL PROMPT MAX_TOKENS
"""
import json
import sys

from openai import OpenAI

base, model, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
stream = client.completions.create(
    model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True)
text, finish, chunks = [], None, 0
for chunk in stream:
    chunks += 1
    for c in chunk.choices:
        text.append(c.text or "")
        finish = c.finish_reason or finish
print(json.dumps({"text": "".join(text), "finish_reason": finish, "chunks": chunks}))
