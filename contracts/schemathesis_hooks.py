"""schemathesis hooks for orchestratord's contract run (loaded through SCHEMATHESIS_HOOKS
by contracts/tests/tests/schemathesis.rs).

A `POST /v1/tasks` body that the schema allows can still be refused (400) by the one pool
the test server runs, for exactly these pool-dependent reasons (spec §1):

  model_ref                 no pool serves that model
  ctx                       over the pool's ctx_max, or too small for prompt + max_tokens
  max_tokens                over the pool's max_tokens_out
  sampler_profile_version   not the pool's pinned profile
  deadline_ms               cannot be met given the queue (DEADLINE_UNMET)
  placement.pin_pool_id     a pool that does not exist
  placement.avoid_pools     avoids every pool that serves the model
  engine                    no pool of that engine (503 POOL_UNAVAILABLE)

and one rule between the body and a header, which a schema cannot state: a body that
names a `task_id` comes without an `Idempotency-Key` (the key derives the id; both → 400).

So for schema-valid (positive) bodies only, and only for those fields, this hook puts in
the test pool's values (see `config()` in schemathesis.rs) before the call. Everything
else the fuzzer drew is sent as drawn, and contracts/schemathesis.toml no longer accepts
a 400 for schema-valid submissions: any other 400 is a mismatch between the document and
the server. Negative cases are left untouched.
"""

import schemathesis

MODEL = "mock-model"
POOL = "p"
SAMPLER_PROFILE = "v1"
CTX_MAX = 1_048_576
MAX_TOKENS_OUT = 500_000
DEADLINE_MIN_MS = 3_600_000


def _is_number(v) -> bool:
    # JSON Schema integers include integral floats (`1.0`), which the server takes too
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_positive_body(case) -> bool:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return False
    return isinstance(case.body, dict)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    op = ctx.operation
    if op is None or op.method.upper() != "POST" or op.path != "/v1/tasks":
        return
    if not _is_positive_body(case):
        return
    body = dict(case.body)
    if isinstance(body.get("task_id"), str):
        for name in list(case.headers or {}):
            if name.lower() == "idempotency-key":
                del case.headers[name]
    if isinstance(body.get("engine"), str):
        body["engine"] = "mock"
    if isinstance(body.get("model_ref"), str):
        body["model_ref"] = MODEL
    if _is_number(body.get("ctx")):
        body["ctx"] = CTX_MAX
    if _is_number(body.get("max_tokens")):
        body["max_tokens"] = min(body["max_tokens"], MAX_TOKENS_OUT)
    if isinstance(body.get("sampler_profile_version"), str):
        body["sampler_profile_version"] = SAMPLER_PROFILE
    if _is_number(body.get("deadline_ms")):
        body["deadline_ms"] = max(body["deadline_ms"], DEADLINE_MIN_MS)
    placement = body.get("placement")
    if isinstance(placement, dict):
        placement = dict(placement)
        if isinstance(placement.get("pin_pool_id"), str):
            placement["pin_pool_id"] = POOL
        if isinstance(placement.get("avoid_pools"), list):
            placement["avoid_pools"] = [p for p in placement["avoid_pools"] if p != POOL]
        body["placement"] = placement
    case.body = body
