//! `/api/v1/openapi.json` is a valid OpenAPI 3 document (checked by the
//! independent `openapi-spec-validator`) and lists exactly the routes the
//! server answers.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use reqwest::Method;
use serde_json::Value;

/// Every route the server serves. Adding a route means adding it here.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/registrations"),
    ("post", "/api/v1/registrations/confirm"),
    ("post", "/api/v1/subscriber/sessions"),
    ("post", "/api/v1/subscriber/sessions/confirm"),
    ("delete", "/api/v1/subscriber/sessions/current"),
    ("get", "/api/v1/applications"),
    ("get", "/api/v1/applications/{app_id}"),
    ("patch", "/api/v1/applications/{app_id}"),
    ("delete", "/api/v1/applications/{app_id}"),
    ("post", "/api/v1/applications/{app_id}/secret"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/users"),
    ("get", "/api/v1/users/{user_id}"),
    ("post", "/api/v1/users/{user_id}/lock"),
    ("post", "/api/v1/users/{user_id}/unlock"),
    ("get", "/api/v1/me"),
    ("put", "/api/v1/users/{user_id}/contexts/{context}"),
    ("delete", "/api/v1/users/{user_id}/contexts/{context}"),
    ("post", "/api/v1/conversations/{conversation_id}/files"),
    ("post", "/api/v1/files/{file_id}/complete"),
    ("get", "/api/v1/files/{file_id}"),
    ("delete", "/api/v1/files/{file_id}"),
    ("put", "/api/v1/files/{file_id}/content"),
    ("get", "/api/v1/files/{file_id}/content"),
    ("get", "/api/v1/files/{file_id}/preview"),
    ("get", "/api/v1/demo"),
    ("post", "/api/v1/demo/sessions"),
    ("get", "/api/v1/audit"),
    ("post", "/api/v1/conversations/{conversation_id}/webhooks"),
    ("get", "/api/v1/conversations/{conversation_id}/webhooks"),
    ("delete", "/api/v1/webhooks/{webhook_id}"),
    ("post", "/api/v1/hooks/{token}"),
    ("post", "/api/v1/webhook-endpoints"),
    ("get", "/api/v1/webhook-endpoints"),
    ("delete", "/api/v1/webhook-endpoints/{endpoint_id}"),
    ("post", "/api/v1/webhook-endpoints/{endpoint_id}/secret"),
    ("get", "/api/v1/webhook-endpoints/{endpoint_id}/deliveries"),
    (
        "post",
        "/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry",
    ),
    ("get", "/api/v1/applications/{app_id}/retention"),
    ("put", "/api/v1/applications/{app_id}/retention"),
    (
        "put",
        "/api/v1/applications/{app_id}/conversations/{conversation_id}/retention",
    ),
    ("post", "/api/v1/applications/{app_id}/legal-holds"),
    ("get", "/api/v1/applications/{app_id}/legal-holds"),
    (
        "delete",
        "/api/v1/applications/{app_id}/legal-holds/{hold_id}",
    ),
    ("post", "/api/v1/applications/{app_id}/exports"),
    ("get", "/api/v1/applications/{app_id}/exports"),
    ("get", "/api/v1/applications/{app_id}/exports/{export_id}"),
    ("get", "/api/v1/exports/{export_id}/archive"),
];

#[tokio::test]
async fn the_document_is_valid_and_lists_every_route() {
    let (server, dir) = TestServer::start().await;
    let r = server.get("/api/v1/openapi.json").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );

    // Exactly the routes above, no more, no fewer.
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
            documented.insert((method.clone(), path.clone()));
        }
    }
    let expected: BTreeSet<_> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, expected);

    // Every operation that reads a JSON body documents the answers the
    // body extractor gives before the handler runs (schemathesis found 415
    // undocumented on all of them).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["requestBody"]["content"]["application/json"].is_object() {
                for status in ["413", "415"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} reads JSON but does not document {status}"
                    );
                }
            }
        }
    }

    // And the server really answers each of them (anything but "no route").
    for (method, path) in ROUTES {
        let path = path
            .replace("{app_id}", "00000000-0000-0000-0000-000000000001")
            .replace("{user_id}", "00000000-0000-0000-0000-000000000002")
            .replace("{context}", "order%3A1")
            .replace("{conversation_id}", "00000000-0000-0000-0000-000000000003")
            .replace("{file_id}", "00000000-0000-0000-0000-000000000004")
            .replace("{export_id}", "00000000-0000-0000-0000-000000000005");
        let method: Method = method.to_uppercase().parse().unwrap();
        let r = server
            .client
            .request(method.clone(), server.url(&path))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !body.contains("no route for this path"),
            "{method} {path}: {body}"
        );
    }

    // The independent validator accepts it.
    common::require_python_module("openapi_spec_validator");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(common::python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
