//! The contract as data (`topology/schemas/`, JSON Schema 2020-12) holds against the code: the
//! schemas' enums and bounds are the code's constants, every good corpus message passes its command
//! schema and decodes, every bad one fails its schema unless the test names the rule a schema
//! cannot express, and what a running service emits (reply, events, job) validates.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use operation_runs::broker::dead_letter::{
    ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER, FAILED_AT_HEADER, FIRST_FAILED_AT_HEADER,
    REPLAYS_HEADER, ROUTING_KEY_HEADER,
};
use operation_runs::domain::command::MAX_ID_CHARS;
use operation_runs::domain::event::{ActionEventType, EVENT_DATASCHEMA};
use operation_runs::domain::failure::MAX_FAILURES_PER_COMMAND;
use operation_runs::domain::summary_counts::{MAX_SUMMARY_COUNT, SUMMARY_COUNT_KEYS};
use operation_runs::domain::{
    decode_command, CommandKind, ErrorCode, RunEventType, RunOutcome, RunStatus, OPERATION_CATALOG,
};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{event_types, request_direct, test_settings_with, TestApp, DEADLINE};

const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/schemas");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
/// Every schema's `$id` is this prefix plus its file name (docs/decisions/0040-schema-ids.md).
const ID_PREFIX: &str = "https://operation-runs.example/schemas/";
const SCHEMA_NAMES: [&str; 11] = [
    "dispatch",
    "update_run",
    "increment_summary_counts",
    "append_failures",
    "cancel_run",
    "retry_run",
    "fail_run",
    "reply",
    "event",
    "job",
    "dead_letter_headers",
];

/// The rules a JSON Schema cannot state, by the reason code the service gives when they break.
/// A bad corpus message with one of these codes may pass its schema, and each listed rule must be
/// exercised by one that does (otherwise the excuse is stale).
/// (`invalid_transition` is partly expressible: completion without an outcome and an outcome
/// without completion are in update_run.json; completing a completed run with another outcome
/// depends on history, and the corpus has no such message.)
///
/// `invalid_string` (U+0000 anywhere) is expressible: the command schemas' recursive
/// `$defs/nul_free` checks every string and key, so it is not listed here.
const NOT_EXPRESSIBLE: [(&str, &str); 10] = [
    (
        "message_too_large",
        "the body is at most 256 KiB of bytes (a size of the message, not of a JSON value)",
    ),
    (
        "context_too_deep",
        "context nests at most 16 levels (a bound on recursion depth)",
    ),
    (
        "context_too_large",
        "context is at most 16 KiB of compact JSON (a size of its serialisation, not of a JSON value)",
    ),
    (
        "missing_command_id",
        "a progress command's id may come from the AMQP message_id instead of the body",
    ),
    (
        "unknown_workspace",
        "the workspace exists (a database fact)",
    ),
    (
        "unknown_tenant",
        "the tenant exists in the workspace (a database fact)",
    ),
    ("unknown_user", "the user exists (a database fact)"),
    (
        "run_not_found",
        "the run exists in the command's workspace and tenant (a database fact)",
    ),
    (
        "command_id_conflict",
        "a command id is never reused with another body (history)",
    ),
    (
        "duplicate_key",
        "no object has a key twice (a schema sees the parsed, last-wins value)",
    ),
];

/// Rules no schema can state and no static corpus message can exercise: they depend on the
/// service's settings or on the broker, not on the body. Tested elsewhere, named here so every
/// code is accounted for.
const NOT_IN_CORPUS: [(&str, &str); 3] = [
    (
        "tenant_quota_exceeded",
        "a tenant has at most --max-active-runs-per-tenant active runs (a database fact under a \
         setting); see dedupe::a_tenant_over_its_quota_is_refused_but_duplicates_are_not",
    ),
    (
        "delivery_limit_exceeded",
        "the broker dead-lettered a message redelivered too often (not a property of the body)",
    ),
    (
        "database_rejected",
        "the database refused an effect the validation did not foresee (never for a valid body)",
    ),
];

fn load(name: &str) -> Value {
    let path = format!("{SCHEMAS}/{name}.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A validator with format assertion on (`date-time`, `uuid`, `uri`), as the READMEs advise.
fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&load(name))
        .unwrap_or_else(|e| panic!("{name}.json is not a valid schema: {e}"))
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

fn assert_valid(name: &str, instance: &Value) {
    let found = errors(&validator(name), instance);
    assert!(
        found.is_empty(),
        "{instance} does not validate against {name}.json: {found:#?}"
    );
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

#[test]
fn every_schema_is_valid_2020_12_with_its_stable_id() {
    for name in SCHEMA_NAMES {
        let schema = load(name);
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["$id"], format!("{ID_PREFIX}{name}.json"));
        validator(name);
    }
}

#[test]
fn the_schemas_enums_and_bounds_are_the_codes_constants() {
    let types = set(OPERATION_CATALOG.iter().map(|e| e.name));
    let statuses = set(RunStatus::ALL.iter().map(|s| s.as_str()));
    let outcomes = set(RunOutcome::ALL.iter().map(|o| o.as_str()));
    let codes = set(ErrorCode::ALL.iter().map(|c| c.as_str()));
    let count_keys = set(SUMMARY_COUNT_KEYS);

    let dispatch = load("dispatch");
    assert_eq!(strings(&dispatch["properties"]["type"]["enum"]), types);
    assert_eq!(strings(&load("job")["properties"]["type"]["enum"]), types);
    assert_eq!(
        strings(&load("event")["$defs"]["run"]["properties"]["type"]["enum"]),
        types
    );
    // The identity keys of each type, required in context.
    let rules: BTreeMap<String, BTreeSet<String>> = dispatch["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["if"]["properties"]["type"]["const"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                strings(&r["then"]["properties"]["context"]["required"]),
            )
        })
        .collect();
    let catalog: BTreeMap<String, BTreeSet<String>> = OPERATION_CATALOG
        .iter()
        .map(|e| (e.name.to_owned(), set(e.identity_keys.iter().copied())))
        .collect();
    assert_eq!(rules, catalog);
    for (name, id_bound) in [("dispatch", "oneOf"), ("update_run", "")] {
        let command_id = &load(name)["properties"]["command_id"];
        let command_id = if id_bound.is_empty() {
            command_id
        } else {
            &command_id["oneOf"][0]
        };
        assert_eq!(command_id["maxLength"], MAX_ID_CHARS);
    }
    assert_eq!(
        dispatch["properties"]["initiator_name"]["oneOf"][0]["maxLength"],
        MAX_ID_CHARS
    );

    let update = load("update_run");
    assert_eq!(
        strings(&update["properties"]["status"]["oneOf"][0]["enum"]),
        statuses
    );
    assert_eq!(
        strings(&update["properties"]["outcome"]["oneOf"][0]["enum"]),
        outcomes
    );
    for counts in [
        &update["properties"]["summary_counts"]["oneOf"][0],
        &load("increment_summary_counts")["properties"]["counts"],
        &load("event")["$defs"]["run"]["properties"]["summary_counts"],
    ] {
        assert_eq!(strings(&counts["propertyNames"]["enum"]), count_keys);
        assert_eq!(counts["additionalProperties"]["maximum"], MAX_SUMMARY_COUNT);
    }
    for failures in [
        &update["properties"]["failures"]["oneOf"][0],
        &load("append_failures")["properties"]["failures"],
    ] {
        assert_eq!(failures["maxItems"], MAX_FAILURES_PER_COMMAND);
    }

    let reply = load("reply");
    assert_eq!(strings(&reply["$defs"]["error_code"]["enum"]), codes);
    let dead_letter = load("dead_letter_headers");
    assert_eq!(
        strings(&dead_letter["properties"][ERROR_CODE_HEADER]["enum"]),
        codes
    );
    let headers: BTreeSet<String> = dead_letter["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        headers,
        set([
            ERROR_CODE_HEADER,
            ERROR_MESSAGE_HEADER,
            FAILED_AT_HEADER,
            ROUTING_KEY_HEADER,
            REPLAYS_HEADER,
            FIRST_FAILED_AT_HEADER
        ])
    );
    assert_eq!(
        strings(&load("event")["properties"]["type"]["enum"]),
        set(RunEventType::ALL
            .iter()
            .map(|t| t.as_str())
            .chain(ActionEventType::ALL.iter().map(|t| t.as_str())))
    );
    assert_eq!(
        load("event")["properties"]["dataschema"]["const"],
        EVENT_DATASCHEMA
    );
}

/// The decoder's own view of which fields a kind has: a field it names "not part of" the kind.
fn decoder_refuses_field(kind: CommandKind, field: &str) -> bool {
    let mut body = good_body_of(kind);
    body[field] = Value::Null;
    match decode_command(body.to_string().as_bytes(), Some("m-1")) {
        Ok(_) => false,
        Err(e) => e.message.contains("is not part of"),
    }
}

fn good_body_of(kind: CommandKind) -> Value {
    let name = match kind {
        CommandKind::Dispatch => "dispatch-minimal",
        CommandKind::UpdateRun => "update-start",
        CommandKind::IncrementSummaryCounts => "increment",
        CommandKind::AppendFailures => "append-failures",
        CommandKind::CancelRun => "cancel-run",
        CommandKind::RetryRun => "retry-run",
        CommandKind::FailRun => "fail-run",
    };
    serde_json::from_str(&std::fs::read_to_string(format!("{CORPUS}/good/{name}.json")).unwrap())
        .unwrap()
}

#[test]
fn each_command_schema_has_exactly_the_fields_the_decoder_accepts() {
    let mut every_field = BTreeSet::new();
    let mut per_kind = BTreeMap::new();
    for kind in CommandKind::ALL {
        let schema = load(kind.as_str());
        assert_eq!(schema["additionalProperties"], false, "{}", kind.as_str());
        assert_eq!(schema["properties"]["kind"]["const"], kind.as_str());
        let fields: BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        every_field.extend(fields.iter().cloned());
        per_kind.insert(kind.as_str(), fields);
    }
    every_field.insert("tenantId".into());
    for kind in CommandKind::ALL {
        for field in &every_field {
            let in_schema = per_kind[kind.as_str()].contains(field);
            assert_eq!(
                !decoder_refuses_field(kind, field),
                in_schema,
                "{}: field {field}: schema says {in_schema}",
                kind.as_str()
            );
        }
    }
}

fn command_schema_for(body: &Value) -> &'static str {
    match body.get("kind").and_then(Value::as_str) {
        Some("dispatch") => "dispatch",
        Some("update_run") => "update_run",
        Some("increment_summary_counts") => "increment_summary_counts",
        Some("append_failures") => "append_failures",
        Some("cancel_run") => "cancel_run",
        Some("retry_run") => "retry_run",
        Some("fail_run") => "fail_run",
        // No (or an unknown) kind: no command schema has it, so any of them must refuse it.
        _ => "dispatch",
    }
}

#[test]
fn every_good_corpus_message_passes_its_schema_and_every_bad_one_fails_or_names_its_rule() {
    let mut good = 0;
    for entry in std::fs::read_dir(format!("{CORPUS}/good")).unwrap() {
        let path = entry.unwrap().path();
        let raw = std::fs::read(&path).unwrap();
        let body: Value = serde_json::from_slice(&raw).unwrap();
        if let Err(e) = decode_command(&raw, Some("m-1")) {
            panic!(
                "{}: the decoder refuses a good message: {e}",
                path.display()
            );
        }
        assert_valid(command_schema_for(&body), &body);
        good += 1;
    }
    assert!(good >= 12, "the good corpus holds a message of every kind");

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{CORPUS}/manifest.json")).unwrap())
            .unwrap();
    let excused: BTreeMap<&str, &str> = NOT_EXPRESSIBLE.into_iter().collect();
    let mut wrong = Vec::new();
    let mut excused_seen = BTreeSet::new();
    for m in manifest["messages"].as_array().unwrap() {
        let file = m["file"].as_str().unwrap();
        let code = m["code"].as_str().unwrap();
        let raw = std::fs::read_to_string(format!("{CORPUS}/{file}"))
            .map(|t| t.replace("__RUN_ID__", "1"))
            .ok();
        // Not UTF-8 or not JSON: no schema can accept what is not a JSON document.
        let Some(body) = raw.and_then(|t| serde_json::from_str::<Value>(&t).ok()) else {
            continue;
        };
        let schema = command_schema_for(&body);
        let valid = validator(schema).is_valid(&body);
        match (valid, excused.get(code)) {
            (false, None) => {}
            (true, Some(_)) => {
                excused_seen.insert(code);
            }
            (true, None) => wrong.push(format!("{file} ({code}) passes {schema}.json")),
            // A message may also break an expressible rule; the schema catching it is fine.
            (false, Some(_)) => {}
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The list is not stale: every excused rule is one the corpus exercises.
    let listed: BTreeSet<&str> = excused.keys().copied().collect();
    let unused: Vec<_> = listed.difference(&excused_seen).collect();
    assert!(
        unused.is_empty(),
        "rules listed as not expressible but exercised by no corpus message: {unused:?}"
    );
    // Every code is accounted for: a corpus message the schema refuses, or a named rule.
    let in_corpus: BTreeSet<&str> = manifest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["code"].as_str().unwrap())
        .collect();
    for code in ErrorCode::ALL {
        let code = code.as_str();
        let named = excused.contains_key(code) || NOT_IN_CORPUS.iter().any(|(c, _)| *c == code);
        assert!(
            in_corpus.contains(code) || named,
            "{code}: no corpus message and no named rule"
        );
    }
    for (code, _) in NOT_EXPRESSIBLE.iter().chain(NOT_IN_CORPUS.iter()) {
        assert!(ErrorCode::parse(code).is_some(), "{code} is not a code");
    }
}

#[test]
fn invalid_documents_fail_the_reply_event_and_job_schemas() {
    let reply = validator("reply");
    assert!(!reply.is_valid(&json!({"run_id": 1, "status": "queued"})));
    assert!(!reply.is_valid(&json!({"error": {"code": "nope", "message": "x"}})));
    let job = validator("job");
    assert!(!job
        .is_valid(&json!({"run_id": 1, "type": "policy.sync", "workspace_id": 1, "context": {}})));
    let headers = validator("dead_letter_headers");
    assert!(headers.is_valid(&json!({"x-oprun-error-code": "invalid_json", "x-oprun-error-message": "m",
        "x-oprun-failed-at": "2026-11-27T00:00:00.000Z", "x-oprun-routing-key": "dispatch", "other": 1})));
    assert!(!headers.is_valid(&json!({"x-oprun-error-code": "invalid_json"})));
}

#[sqlx::test]
async fn what_the_service_emits_validates_against_reply_event_and_job_schemas(pool: PgPool) {
    let settings = test_settings_with(&["--hand-off-jobs", "true"]);
    let app = TestApp::spawn_with(pool, settings).await;
    let mut events = app.subscribe_events().await;
    // An executor's queue for policy.sync jobs.
    let channel = app.connection.create_channel().await.unwrap();
    let jobs_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            jobs_queue.name().as_str().into(),
            app.topology.jobs_exchange().as_str().into(),
            "policy.sync".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut jobs = channel
        .basic_consume(
            jobs_queue.name().as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let dispatch = json!({"kind": "dispatch", "command_id": "contract-1", "workspace_id": 1, "tenant_id": 10,
        "user_id": 5, "initiator_name": "contract", "type": "policy.sync", "context": {"policy_id": "p-contract"}});
    let reply = request_direct(&app, &dispatch).await;
    assert_valid("reply", &reply);
    let run_id = reply["run_id"].as_i64().unwrap();
    let again = request_direct(
        &app,
        &json!({"kind": "dispatch", "workspace_id": 1, "tenant_id": 10,
        "type": "policy.sync", "context": {"policy_id": "p-contract"}}),
    )
    .await;
    assert_eq!(again["deduplicated"], true);
    assert_valid("reply", &again);

    let job = tokio::time::timeout(DEADLINE, jobs.next())
        .await
        .expect("the job in time")
        .unwrap()
        .unwrap();
    let job_body: Value = serde_json::from_slice(&job.data).unwrap();
    assert_valid("job", &job_body);
    assert_eq!(job_body["run_id"], run_id);

    let progress = |kind: &str, id: &str, fields: Value| {
        let mut body = json!({"kind": kind, "command_id": id, "run_id": run_id, "workspace_id": 1, "tenant_id": 10});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for body in [
        progress("update_run", "contract-2", json!({"status": "running"})),
        progress(
            "increment_summary_counts",
            "contract-3",
            json!({"counts": {"total": 2, "processed": 1}}),
        ),
        progress(
            "append_failures",
            "contract-4",
            json!({"failures": [{"code": "device.unreachable", "message": "token=abc", "item": {"id": 1}}]}),
        ),
        progress(
            "update_run",
            "contract-5",
            json!({"status": "completed", "outcome": "partially_succeeded"}),
        ),
    ] {
        let reply = request_direct(&app, &body).await;
        assert!(reply.get("error").is_none(), "{body} was refused: {reply}");
        assert_valid("reply", &reply);
    }
    let refused = request_direct(
        &app,
        &progress("update_run", "contract-6", json!({"status": "running"})),
    )
    .await;
    assert_valid("reply", &refused);
    let refused = request_direct(
        &app,
        &progress(
            "increment_summary_counts",
            "contract-7",
            json!({"counts": {"total": 1}}),
        )
        .as_object()
        .map(|o| {
            let mut o = o.clone();
            o.insert("run_id".into(), json!(run_id + 1000));
            Value::Object(o)
        })
        .unwrap(),
    )
    .await;
    assert_eq!(refused["error"]["code"], "run_not_found");
    assert_valid("reply", &refused);

    let received = events.next_events(5).await;
    let types = event_types(&received);
    assert_eq!(
        types,
        [
            "operation_run.queued",
            "operation_run.started",
            "operation_run.progressed",
            "operation_run.progressed",
            "operation_run.completed"
        ]
    );
    for (event, _) in &received {
        assert_valid("event", event);
        assert_eq!(event["dataschema"], load("event")["$id"], "{event}");
        assert!(event["traceparent"].is_string(), "{event}");
    }
    app.shutdown().await;
}

#[test]
fn the_asyncapi_document_references_every_schema_and_names_the_topology() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topology/asyncapi.yaml"
    ))
    .unwrap();
    assert!(text.contains("\nasyncapi: 3.0.0\n"));
    let referenced: BTreeSet<String> = text
        .split("'./schemas/")
        .skip(1)
        .map(|rest| rest.split(".json'").next().unwrap().to_owned())
        .collect();
    assert_eq!(
        referenced,
        set(SCHEMA_NAMES),
        "schemas referenced by asyncapi.yaml"
    );
    // The addresses are the topology's names (namespace "n" spelt as the parameter).
    let t = operation_runs::broker::Topology::new("n").unwrap();
    for (channel, name) in [
        ("commands", t.commands_exchange()),
        ("events", t.events_exchange()),
        ("jobs", t.jobs_exchange()),
        ("deadLetters", t.dead_letter_queue()),
    ] {
        let address = name.replacen("n.", "{namespace}.", 1);
        assert!(
            text.contains(&format!("  {channel}:\n    address: '{address}'")),
            "channel {channel} at {address}"
        );
    }
    for kind in CommandKind::ALL {
        assert!(
            text.contains(&format!("cc: [{}]", kind.as_str())),
            "an operation for routing key {}",
            kind.as_str()
        );
    }
}
