#!/usr/bin/env python3
"""Writes the hostile-input corpus: tests/corpus/NN-name.msg (the exact body bytes) and
tests/corpus/manifest.json (file, expected error code, why). Bodies may contain the tokens
__RUN_ID__ (an active run of workspace 1 / tenant 10, replaced by the test) and use command id
"corpus-reused" (applied by the test with another body first).

Run from the repository root: python3 scripts/make_corpus.py
"""
import json
import os

OUT = "tests/corpus"
MAX_BYTES = 256 * 1024

def d(**fields):
    body = {"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync",
            "context": {"policy_id": "p"}}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not REMOVE}

def p(kind, **fields):
    body = {"kind": kind, "command_id": "corpus-" + kind, "run_id": "__RUN_ID__", "workspace_id": 1, "tenant_id": 10}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not REMOVE}

REMOVE = object()

def nest(depth):
    v = "leaf"
    for _ in range(depth):
        v = {"n": v}
    return v

cases = [
    # not JSON
    ("empty-body", b"", "invalid_json"),
    ("plain-text", b"hello, operation runs", "invalid_json"),
    ("truncated-object", b'{"kind": "dispatch", "workspace_id": 1', "invalid_json"),
    ("trailing-garbage", b'{"kind": "dispatch"} trailing', "invalid_json"),
    ("single-quotes", b"{'kind': 'dispatch'}", "invalid_json"),
    ("nan-literal", b'{"kind": "dispatch", "workspace_id": NaN}', "invalid_json"),
    # not UTF-8
    ("latin1-bytes", b'{"kind": "dispatch", "initiator_name": "Jos\xe9"}', "invalid_utf8"),
    ("lone-continuation-byte", b'{"kind": "\x80"}', "invalid_utf8"),
    ("utf16-bom", "{\"kind\": \"dispatch\"}".encode("utf-16"), "invalid_utf8"),
    # JSON, not an object
    ("array", b'[{"kind": "dispatch"}]', "not_an_object"),
    ("string", b'"dispatch"', "not_an_object"),
    ("number", b"42", "not_an_object"),
    ("null", b"null", "not_an_object"),
    ("boolean", b"true", "not_an_object"),
    # wrong field types, missing fields, unknown fields
    ("kind-missing", {"workspace_id": 1}, "invalid_field"),
    ("kind-number", {"kind": 7}, "invalid_field"),
    ("workspace-id-string", d(workspace_id="1"), "invalid_field"),
    ("workspace-id-zero", d(workspace_id=0), "invalid_field"),
    ("tenant-id-float", d(tenant_id=10.5), "invalid_field"),
    ("type-number", d(type=12), "invalid_field"),
    ("context-array", d(context=["policy_id"]), "invalid_field"),
    ("context-missing", d(context=REMOVE), "invalid_field"),
    ("camel-case-tenant", dict(d(tenant_id=REMOVE), tenantId=10), "invalid_field"),
    ("run-id-negative", p("update_run", run_id=-4, status="running"), "invalid_field"),
    ("status-unknown", p("update_run", status="finished"), "invalid_field"),
    ("outcome-number", p("update_run", status="completed", outcome=1), "invalid_field"),
    ("progress-without-tenant-field", p("update_run", tenant_id=REMOVE, status="running"), "invalid_field"),
    ("empty-command-id", p("append_failures", command_id="", failures=[]), "invalid_field"),
    ("failures-object", p("append_failures", failures={"code": "x", "message": "y"}), "invalid_failure"),
    # unknown kind / type
    ("kind-unknown", {"kind": "delete_everything", "command_id": "x"}, "unknown_kind"),
    ("kind-wrong-case", {"kind": "Dispatch", "command_id": "x"}, "unknown_kind"),
    ("type-unknown", d(type="coffee.brew"), "unknown_type"),
    ("type-wrong-case", d(type="Policy.Sync"), "unknown_type"),
    # identity
    ("identity-key-missing", d(context={"other": 1}), "missing_identity_key"),
    ("identity-key-null", d(context={"policy_id": None}), "missing_identity_key"),
    ("retry-missing-second-key", d(type="backup_schedule.retry", context={"backup_schedule_id": 1}), "missing_identity_key"),
    ("scheduled-for-not-a-time", d(type="backup_schedule.scheduled", context={"backup_schedule_id": 1, "scheduled_for": "tomorrow 9am"}), "invalid_identity_value"),
    ("scheduled-for-number", d(type="backup_schedule.scheduled", context={"backup_schedule_id": 1, "scheduled_for": 1767225600}), "invalid_identity_value"),
    # counts
    ("count-negative", p("increment_summary_counts", counts={"processed": -1}), "invalid_summary_value"),
    ("count-huge", p("increment_summary_counts", counts={"processed": 2**60}), "invalid_summary_value"),
    ("count-fraction", p("increment_summary_counts", counts={"processed": 0.5}), "invalid_summary_value"),
    ("count-string", p("increment_summary_counts", counts={"processed": "3"}), "invalid_summary_value"),
    ("count-key-unknown", p("increment_summary_counts", counts={"bananas": 1}), "invalid_summary_key"),
    ("update-count-key-unknown", p("update_run", summary_counts={"Total": 1}), "invalid_summary_key"),
    # failures
    ("failure-code-punctuation", p("append_failures", failures=[{"code": "Graph/Error!", "message": "x"}]), "invalid_failure"),
    ("failure-code-too-long", p("append_failures", failures=[{"code": "a" * 129, "message": "x"}]), "invalid_failure"),
    ("failure-code-spaces", p("append_failures", failures=[{"code": "bad code", "message": "x"}]), "invalid_failure"),
    ("failure-without-message", p("append_failures", failures=[{"code": "x"}]), "invalid_failure"),
    ("failure-extra-field", p("append_failures", failures=[{"code": "x", "message": "y", "stack": "..."}]), "invalid_failure"),
    ("too-many-failures", p("append_failures", failures=[{"code": "x", "message": "y"}] * 101), "invalid_failure"),
    # size and depth
    ("oversized-body", d(context={"policy_id": "p", "blob": "x" * (MAX_BYTES + 1)}), "message_too_large"),
    ("context-too-deep", d(context={"policy_id": "p", "deep": nest(20)}), "context_too_deep"),
    ("json-too-deep", b'{"kind": "dispatch", "context": ' + b"[" * 200 + b"]" * 200 + b"}", "context_too_deep"),
    # progress without command id
    ("progress-without-command-id", p("increment_summary_counts", command_id=REMOVE, counts={"items": 1}), "missing_command_id"),
    # scope and existence (need the database)
    ("workspace-unknown", d(workspace_id=9999, tenant_id=None), "unknown_workspace"),
    ("tenant-unknown", d(tenant_id=9999), "unknown_tenant"),
    ("tenant-of-another-workspace", d(tenant_id=20), "unknown_tenant"),
    ("user-unknown", d(user_id=9999), "unknown_user"),
    ("scope-mismatch-tenant", p("update_run", tenant_id=11, status="running"), "run_not_found"),
    ("scope-mismatch-workspace", p("update_run", workspace_id=2, tenant_id=20, status="running"), "run_not_found"),
    ("scope-mismatch-workspace-scope", p("increment_summary_counts", tenant_id=None, counts={"items": 1}), "run_not_found"),
    ("run-unknown", p("update_run", run_id=987654321, status="running"), "run_not_found"),
    ("complete-without-outcome", p("update_run", status="completed"), "invalid_transition"),
    ("outcome-while-running", p("update_run", status="running", outcome="succeeded"), "invalid_transition"),
    ("command-id-reused-with-another-body", p("increment_summary_counts", command_id="corpus-reused", counts={"items": 99}), "command_id_conflict"),
    # repeated keys (written as bytes: a Python dict cannot hold two equal keys); last-wins would
    # turn the first into a workspace-scoped run
    ("duplicate-tenant-id-last-null", b'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync", "context": {"policy_id": "p"}, "tenant_id": null}', "duplicate_key"),
    ("duplicate-kind", b'{"kind": "update_run", "kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync", "context": {"policy_id": "p"}}', "duplicate_key"),
    ("duplicate-key-escaped-spelling", b'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "tenant\\u005fid": 11, "type": "policy.sync", "context": {"policy_id": "p"}}', "duplicate_key"),
    ("duplicate-identity-key-in-context", b'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync", "context": {"policy_id": "p", "policy_id": "q"}}', "duplicate_key"),
    ("duplicate-key-deep-in-context", b'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync", "context": {"policy_id": "p", "a": [{"b": {"c": 1, "c": 1}}]}}', "duplicate_key"),
    ("duplicate-count-key", b'{"kind": "increment_summary_counts", "command_id": "corpus-dup-count", "run_id": __RUN_ID__, "workspace_id": 1, "tenant_id": 10, "counts": {"items": 1, "items": 1000}}', "duplicate_key"),
    ("duplicate-failure-field", b'{"kind": "append_failures", "command_id": "corpus-dup-failure", "run_id": __RUN_ID__, "workspace_id": 1, "tenant_id": 10, "failures": [{"code": "x", "message": "y", "message": "z"}]}', "duplicate_key"),
    # NUL characters (Postgres text and jsonb cannot store them)
    ("nul-in-context-value", d(context={"policy_id": "p", "note": "a\u0000b"}), "invalid_string"),
    ("nul-in-context-key", d(context={"policy_id": "p", "no\u0000te": 1}), "invalid_string"),
    ("nul-in-identity-value", d(context={"policy_id": "p\u0000"}), "invalid_string"),
    ("nul-in-initiator-name", d(initiator_name="Ada\u0000"), "invalid_string"),
    ("nul-in-command-id", p("update_run", command_id="corpus-\u0000", status="running"), "invalid_string"),
    ("nul-in-failure-message", p("append_failures", failures=[{"code": "x", "message": "bad\u0000byte"}]), "invalid_string"),
    ("nul-in-kind", {"kind": "dispatch\u0000"}, "invalid_string"),
    # a context over 16 KiB of JSON (every event carries it), in a body well under 256 KiB
    ("context-too-large", d(context={"policy_id": "p", "blob": "x" * (16 * 1024)}), "context_too_large"),
]

def main():
    for f in os.listdir(OUT):
        if f.endswith(".msg"):
            os.remove(os.path.join(OUT, f))
    manifest = []
    for i, (name, body, code) in enumerate(cases, 1):
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        raw = raw.replace(b'"__RUN_ID__"', b"__RUN_ID__")
        fname = f"{i:02d}-{name}.msg"
        with open(os.path.join(OUT, fname), "wb") as fh:
            fh.write(raw)
        manifest.append({"file": fname, "code": code})
    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump({"about": "Hostile inputs and the reason code each must be dead-lettered with. "
                            "__RUN_ID__ stands for an active run of workspace 1 / tenant 10; "
                            "command id corpus-reused is applied with another body first.",
                   "messages": manifest}, fh, indent=1)
        fh.write("\n")
    print(f"{len(manifest)} messages")

main()
