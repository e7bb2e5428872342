//! Agent identity through the real binary: a join token from `ferry agent token create`, a join
//! over HTTP, the credential it returns; every refusal (a wrong or reused token, a revoked
//! agent, an agent credential on the admin routes, an unknown region) is a clear error that
//! creates nothing.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// A raw HTTP/1.1 request with `Authorization: Bearer BEARER` (none: no header); returns
/// status and body.
fn request(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", s.port)).expect("connect to the server");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn join(s: &Server, token: &str, name: &str) -> (u16, String) {
    let body = json!({"token": token, "name": name, "region": "east", "version": "0.1.0"});
    request(s, "POST", "/v1/agents/join", Some(&body), None)
}

fn error(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"].as_str().unwrap_or_default().to_string()
}

fn agents(s: &Server) -> Vec<(String, bool)> {
    s.json(&["agent", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                !a["revoked_at"].is_null(),
            )
        })
        .collect()
}

#[test]
fn an_agent_joins_once_with_a_token_and_is_refused_once_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));

    // A token: shown once, for its region, expiring in about 15 minutes.
    let t = s.json(&["agent", "token", "create", "--region", "east"]);
    let token = t["token"].as_str().unwrap().to_string();
    assert!(
        token.starts_with("ferry-join-") && token.len() == 11 + 64,
        "{t}"
    );
    assert_eq!(t["region"], "east");
    let ttl = epoch(t["expires"].as_str().unwrap()) - now();
    assert!((840.0..=900.0).contains(&ttl), "{t}");
    let table = s.ok(&[
        "agent", "token", "create", "--region", "west", "--ttl", "2m",
    ]);
    assert!(
        table.contains("token: ferry-join-") && table.contains("region: west"),
        "{table}"
    );

    // The join needs no admin token: the join token is the credential.
    let (st, body) = join(&s, &token, "east-1");
    assert_eq!(st, 201, "{body}");
    let joined: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (joined["name"].as_str(), joined["region"].as_str()),
        (Some("east-1"), Some("east"))
    );
    let credential = joined["credential"].as_str().unwrap().to_string();
    assert!(credential.starts_with("ferry-agent-"), "{joined}");
    assert_eq!(agents(&s), [("east-1".to_string(), false)]);
    let listed = s.ok(&["agent", "list"]);
    assert!(
        listed.contains("east-1") && listed.contains("0.1.0"),
        "{listed}"
    );
    assert!(!listed.contains(&credential[12..]) && !listed.contains(&token[11..]));

    // The credential authenticates the agent.
    let (st, body) = request(&s, "GET", "/v1/agent/identity", None, Some(&credential));
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"name": "east-1", "region": "east"})
    );

    // A reused token: 401, nothing created.
    let (st, body) = join(&s, &token, "east-2");
    assert_eq!(st, 401, "{body}");
    let e = error(&body);
    assert!(
        e.starts_with("the join token was already used by agent east-1 at ")
            && e.ends_with("; create a new one with `ferry agent token create --region east`"),
        "{e}"
    );
    // A wrong token: 401, nothing created.
    let wrong = format!("ferry-join-{}", "0".repeat(64));
    let (st, body) = join(&s, &wrong, "east-2");
    assert_eq!(st, 401, "{body}");
    assert_eq!(
        error(&body),
        "the join token is not recognised; create one with `ferry agent token create --region east`"
    );
    assert_eq!(agents(&s), [("east-1".to_string(), false)]);

    // An agent's credential is not the admin token, and the admin token is not an agent's.
    let (st, body) = request(&s, "GET", "/v1/vms", None, Some(&credential));
    assert_eq!(st, 401, "{body}");
    assert!(
        error(&body).contains("this route needs the admin token"),
        "{body}"
    );
    let (st, body) = request(
        &s,
        "POST",
        "/v1/agent-tokens",
        Some(&json!({"region": "east"})),
        Some(&credential),
    );
    assert_eq!(st, 401, "{body}");
    let (st, body) = request(&s, "GET", "/v1/agent/identity", None, Some(&s.token));
    assert_eq!(st, 401, "{body}");
    assert_eq!(
        error(&body),
        "the agent credential is not recognised; join again with a new token"
    );
    let (st, _) = request(&s, "GET", "/v1/agent/identity", None, None);
    assert_eq!(st, 401);

    // Revoked: the credential is refused, saying since when.
    let revoked = s.json(&["agent", "revoke", "east-1"]);
    let at = revoked["revoked_at"]
        .as_str()
        .expect("revoked_at")
        .to_string();
    let (st, body) = request(&s, "GET", "/v1/agent/identity", None, Some(&credential));
    assert_eq!(st, 401, "{body}");
    assert_eq!(
        error(&body),
        format!("agent east-1 was revoked at {at}; join again with a new token")
    );
    assert_eq!(agents(&s), [("east-1".to_string(), true)]);
    let err = s.fails(&["agent", "revoke", "east-9"]);
    assert!(
        err.contains("agent east-9 does not exist") && err.contains("404"),
        "{err}"
    );

    // The same name joins again with a new token; the old credential stays refused.
    let t2 = s.json(&["agent", "token", "create", "--region", "east"]);
    let (st, body) = join(&s, t2["token"].as_str().unwrap(), "east-1");
    assert_eq!(st, 201, "{body}");
    let (st, _) = request(&s, "GET", "/v1/agent/identity", None, Some(&credential));
    assert_eq!(st, 401);
}

#[test]
fn a_token_for_an_unknown_region_or_lifetime_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    let err = s.fails(&["agent", "token", "create", "--region", "north"]);
    assert!(
        err.contains("region north does not exist; see `ferry region list`") && err.contains("404"),
        "{err}"
    );
    let err = s.fails(&[
        "agent", "token", "create", "--region", "east", "--ttl", "30s",
    ]);
    assert!(
        err.contains("from 1 min to 24 h") && err.contains("400"),
        "{err}"
    );
    let err = s.fails(&[
        "agent", "token", "create", "--region", "east", "--ttl", "soon",
    ]);
    assert!(err.contains("--ttl"), "{err}");

    // The join is described without the admin token; the rest of the agents' routes need it.
    let (st, body) = s.http("GET", "/openapi.json", None, true);
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["paths"]["/v1/agents/join"]["post"]["security"],
        json!([])
    );
    assert_eq!(
        doc["paths"]["/v1/agent/identity"]["get"]["security"],
        json!([{"agent": []}])
    );
    assert!(doc["paths"]["/v1/agents"]["get"].get("security").is_none());
    assert!(
        doc["paths"]["/v1/agent-tokens"]["post"]
            .get("security")
            .is_none()
    );
}
