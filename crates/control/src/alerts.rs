//! Alert rules: a webhook (HTTP POST of a JSON body) when an item's health crosses a rule's
//! severity, on the way up and on the way back, retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use ferry_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::model::{Health, Severity};

/// Attempts per notification, and the first backoff (doubling).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AlertRule {
    pub name: String,
    /// Where the POST goes (`http://` or `https://`).
    pub url: String,
    /// `warning` (warning and critical) or `critical`.
    pub severity: Severity,
    pub created: Timestamp,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAlert {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub severity: Option<String>,
}

/// A webhook URL: `http://` or `https://` with a host, and no control or space characters
/// (the parser would drop a CR or LF silently).
fn check_webhook_url(rule: &str, url: &str) -> Result<()> {
    let invalid = |why: &str| {
        ControlError::invalid(format!(
            "alert {rule}: url {url:?} {why}: use http://HOST[:PORT]/PATH or https://..."
        ))
    };
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("holds control characters or spaces"));
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid(&format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("names no host"));
    }
    Ok(())
}

/// The body of a webhook.
#[derive(Debug, Clone, Serialize)]
struct Notification<'a> {
    rule: &'a str,
    item: &'a str,
    time: Timestamp,
    health: Health,
    previous_health: Health,
    reasons: &'a [String],
    /// `firing` when the item crossed the rule's severity, `resolved` when it came back.
    status: &'a str,
}

impl Control {
    pub fn create_alert(&self, req: CreateAlert) -> Result<AlertRule> {
        crate::resources::valid_name(&req.name, "alert rule name")?;
        check_webhook_url(&req.name, &req.url)?;
        let severity = match req.severity.as_deref().map(str::parse) {
            None => Severity::Warning,
            Some(Ok(s @ (Severity::Warning | Severity::Critical))) => s,
            Some(Ok(Severity::Info) | Err(_)) => {
                return Err(ControlError::invalid(format!(
                    "alert {}: severity {:?} must be warning or critical",
                    req.name,
                    req.severity.unwrap_or_default()
                )));
            }
        };
        let rule = AlertRule {
            name: req.name,
            url: req.url,
            severity,
            created: Timestamp::now(),
        };
        self.db
            .insert(Kind::AlertRule, &rule.name, &rule, "alert rule")?;
        Ok(rule)
    }

    pub fn alerts(&self) -> Result<Vec<AlertRule>> {
        self.db.list(Kind::AlertRule)
    }

    pub fn delete_alert(&self, name: &str) -> Result<()> {
        if !self.db.delete(Kind::AlertRule, name)? {
            return Err(ControlError::not_found(format!(
                "alert rule {name} does not exist; see `ferry alert list`"
            )));
        }
        Ok(())
    }

    /// An item's health changed: notify every rule whose severity it crossed, either way.
    pub(crate) fn alert_health(
        self: &Arc<Self>,
        item: &str,
        before: Health,
        now: Health,
        reasons: &[String],
    ) {
        let Ok(rules) = self.alerts() else { return };
        for rule in rules {
            let (was, is) = (
                before.severity() >= rule.severity,
                now.severity() >= rule.severity,
            );
            if was == is {
                continue;
            }
            let body = serde_json::to_vec(&Notification {
                rule: &rule.name,
                item,
                time: Timestamp::now(),
                health: now,
                previous_health: before,
                reasons,
                status: if is { "firing" } else { "resolved" },
            })
            .expect("a notification serialises");
            let (control, item) = (self.clone(), item.to_string());
            tokio::spawn(async move {
                let outcome = send(&rule.url, body).await;
                let (severity, kind, message) = match outcome {
                    Ok(attempts) => (
                        Severity::Info,
                        "alert-sent",
                        format!(
                            "alert {} sent to {} ({attempts} attempt(s))",
                            rule.name, rule.url
                        ),
                    ),
                    Err(e) => (
                        Severity::Warning,
                        "alert-failed",
                        format!(
                            "alert {} to {} failed after {ATTEMPTS} attempts: {e}",
                            rule.name, rule.url
                        ),
                    ),
                };
                control.event(severity, kind, &item, message);
            });
        }
    }
}

/// POST `body` to `url` until it answers 2xx; returns the attempts it took.
async fn send(url: &str, body: Vec<u8>) -> std::result::Result<u32, String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_http_with_a_host_and_no_control_characters() {
        for url in [
            "http://",
            "https://",
            "ftp://host/x",
            "http://host/a\r\nX-Injected: 1",
            "http://host/\n",
            "http://ho st/",
            "not a url",
        ] {
            let err = check_webhook_url("r", url).unwrap_err();
            assert!(matches!(err, ControlError::Invalid(_)), "{url:?}: {err:?}");
            assert!(err.to_string().contains("http://HOST"), "{url:?}: {err}");
        }
        check_webhook_url("r", "http://127.0.0.1:9/hook").unwrap();
        check_webhook_url("r", "https://alerts.example.com/x?y=1").unwrap();
    }
}
