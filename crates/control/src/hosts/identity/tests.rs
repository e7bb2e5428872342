//! Join tokens, credentials and revocation against a real state database: every refusal says
//! why and creates nothing, and a refused join leaves the token usable.

use std::sync::Arc;

use super::*;
use crate::ControlConfig;
use crate::model::{Vm, VmState};

/// A control plane with the embedded regions `east` and `west`.
async fn control(dir: &std::path::Path) -> Arc<Control> {
    Control::start(ControlConfig::embedded(dir.to_path_buf()))
        .await
        .unwrap()
}

fn join(token: &str, name: &str, region: Option<&str>) -> JoinRequest {
    JoinRequest {
        token: token.to_string(),
        name: name.to_string(),
        region: region.map(str::to_string),
        version: "0.1.0".to_string(),
    }
}

fn token(c: &Control) -> String {
    c.create_join_token("east", DEFAULT_JOIN_TTL).unwrap().token
}

fn names(c: &Control) -> Vec<String> {
    c.agents().unwrap().into_iter().map(|a| a.name).collect()
}

/// `(status kind, message)` of an error.
fn refused<T: std::fmt::Debug>(r: Result<T>) -> ControlError {
    r.expect_err("refused")
}

#[tokio::test]
async fn a_join_token_becomes_a_credential_that_authenticates_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let before = Timestamp::now();
    let t = c.create_join_token("east", DEFAULT_JOIN_TTL).unwrap();
    assert_eq!(t.region, "east");
    assert!(
        t.token.starts_with("ferry-join-") && t.token.len() == 11 + 64,
        "{t:?}"
    );
    let ttl = Timestamp(t.expires.0 - before.0);
    assert!(
        (DEFAULT_JOIN_TTL.as_nanos() as i64 - ttl.0).abs() < 60_000_000_000,
        "{t:?}"
    );

    let joined = c
        .join_agent(join(&t.token, "east-1", Some("east")))
        .unwrap();
    assert_eq!(
        (joined.name.as_str(), joined.region.as_str()),
        ("east-1", "east")
    );
    assert!(joined.credential.starts_with("ferry-agent-") && joined.credential.len() == 12 + 64);
    let who = c.authenticate_agent(&joined.credential).unwrap();
    assert_eq!(
        who,
        AgentIdentity {
            name: "east-1".into(),
            region: "east".into()
        }
    );
    let agents = c.agents().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].version, "0.1.0");
    assert_eq!(agents[0].revoked_at, None);

    // The region may be left out: the token's is taken.
    let other = c.create_join_token("west", MIN_JOIN_TTL).unwrap();
    let joined = c.join_agent(join(&other.token, "west-1", None)).unwrap();
    assert_eq!(joined.region, "west");
    assert_eq!(names(&c), ["east-1", "west-1"]);

    // Neither secret is stored, nor printed by Debug.
    let mut stored = std::fs::read(dir.path().join("state.db")).unwrap();
    stored.extend(std::fs::read(dir.path().join("state.db-wal")).unwrap_or_default());
    let stored = String::from_utf8_lossy(&stored);
    for secret in [&t.token, &joined.credential] {
        let hex = secret.rsplit('-').next().unwrap();
        assert!(!stored.contains(hex), "a secret is in the state database");
    }
    let shown = format!("{t:?} {joined:?} {:?}", join(&other.token, "x", None));
    assert!(!shown.contains(&t.token[11..]) && !shown.contains(&joined.credential[12..]));
    assert!(!shown.contains(&other.token[11..]), "{shown}");
}

#[tokio::test]
async fn a_token_for_an_unknown_region_or_lifetime_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let e = refused(c.create_join_token("north", DEFAULT_JOIN_TTL));
    assert!(matches!(e, ControlError::NotFound(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "region north does not exist; see `ferry region list`"
    );
    for ttl in [Duration::from_secs(59), Duration::from_secs(24 * 3600 + 1)] {
        let e = refused(c.create_join_token("east", ttl));
        assert!(matches!(e, ControlError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains("from 1 min to 24 h"), "{e}");
    }
    c.create_join_token("east", MAX_JOIN_TTL).unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let good = token(&c);
    for wrong in [
        new_secret(JOIN_PREFIX),
        String::new(),
        format!("{good}0"),
        new_secret(AGENT_PREFIX),
    ] {
        let e = refused(c.join_agent(join(&wrong, "east-1", Some("east"))));
        assert!(matches!(e, ControlError::Unauthorized(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the join token is not recognised; create one with `ferry agent token create --region east`"
        );
    }
    assert!(names(&c).is_empty());
    c.join_agent(join(&good, "east-1", None)).unwrap();
}

#[tokio::test]
async fn an_expired_token_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let secret = new_secret(JOIN_PREFIX);
    let now = Timestamp::now();
    let expires = Timestamp(now.0 - 1_000_000_000);
    let row = JoinTokenRow {
        hash: digest(&secret).to_hex().to_string(),
        region: "east".into(),
        created: Timestamp(now.0 - 901_000_000_000),
        expires,
        used: None,
    };
    c.db.transact(|tx| tx.insert_join_token(&row)).unwrap();

    let e = refused(c.join_agent(join(&secret, "east-1", None)));
    assert!(matches!(e, ControlError::Unauthorized(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "the join token expired at {expires}; create a new one with `ferry agent token create --region east`"
        )
    );
    assert!(names(&c).is_empty());
    let kept = c.db.transact(|tx| tx.join_token(&row.hash)).unwrap();
    assert_eq!(kept, Some(row));
}

#[tokio::test]
async fn a_reused_token_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let t = token(&c);
    c.join_agent(join(&t, "east-1", None)).unwrap();
    let joined_at = c.agents().unwrap()[0].joined_at;
    for name in ["east-2", "east-1"] {
        let e = refused(c.join_agent(join(&t, name, None)));
        assert!(matches!(e, ControlError::Unauthorized(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the join token was already used by agent east-1 at {joined_at}; create a new one with `ferry agent token create --region east`"
            )
        );
    }
    assert_eq!(names(&c), ["east-1"]);
}

#[tokio::test]
async fn a_refused_join_does_not_burn_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let t = token(&c);

    // Another region than the token's: 400.
    let e = refused(c.join_agent(join(&t, "east-1", Some("west"))));
    assert!(matches!(e, ControlError::Invalid(_)), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("the join token is for region east, not west;"),
        "{e}"
    );
    // An invalid name: 400.
    let e = refused(c.join_agent(join(&t, "bad/name", None)));
    assert!(matches!(e, ControlError::Invalid(_)), "{e:?}");
    assert!(e.to_string().starts_with("agent name: "), "{e}");
    // An invalid version: 400.
    let mut bad_version = join(&t, "east-1", None);
    bad_version.version = "x".repeat(65);
    let e = refused(c.join_agent(bad_version));
    assert!(matches!(e, ControlError::Invalid(_)), "{e:?}");
    assert!(names(&c).is_empty());

    // The token still joins.
    c.join_agent(join(&t, "east-1", Some("east"))).unwrap();

    // A name that is an active agent: 409, and the second token stays usable.
    let second = token(&c);
    let e = refused(c.join_agent(join(&second, "east-1", None)));
    assert!(matches!(e, ControlError::Conflict(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "agent east-1 is already joined; revoke it first with `ferry agent revoke east-1`"
    );
    assert_eq!(names(&c), ["east-1"]);
    c.join_agent(join(&second, "east-2", None)).unwrap();
    assert_eq!(names(&c), ["east-1", "east-2"]);
}

#[tokio::test]
async fn a_revoked_agent_is_refused_and_may_join_again_with_a_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let old = c.join_agent(join(&token(&c), "east-1", None)).unwrap();
    let other = c.join_agent(join(&token(&c), "east-2", None)).unwrap();

    let revoked = c.revoke_agent("east-1").unwrap();
    let at = revoked.revoked_at.expect("revoked");
    let e = refused(c.authenticate_agent(&old.credential));
    assert!(matches!(e, ControlError::Unauthorized(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("agent east-1 was revoked at {at}; join again with a new token")
    );
    // Idempotent: the first revocation's time stays.
    assert_eq!(c.revoke_agent("east-1").unwrap(), revoked);
    // The other agent is untouched.
    assert_eq!(
        c.authenticate_agent(&other.credential).unwrap().name,
        "east-2"
    );
    // Unknown: 404.
    let e = refused(c.revoke_agent("east-9"));
    assert!(matches!(e, ControlError::NotFound(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "agent east-9 does not exist; see `ferry agent list`"
    );

    // The name joins again, with a new credential; the old one stays refused.
    let again = c.join_agent(join(&token(&c), "east-1", None)).unwrap();
    assert_eq!(
        c.authenticate_agent(&again.credential).unwrap().name,
        "east-1"
    );
    assert!(c.authenticate_agent(&old.credential).is_err());
    let listed: Vec<(String, bool)> = c
        .agents()
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.revoked_at.is_some()))
        .collect();
    assert_eq!(
        listed,
        [
            ("east-1".to_string(), true),
            ("east-2".to_string(), false),
            ("east-1".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn an_unknown_credential_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path()).await;
    let t = token(&c);
    c.join_agent(join(&t, "east-1", None)).unwrap();
    // Neither a made-up credential nor the join token it came from authenticates.
    for wrong in [new_secret(AGENT_PREFIX), t, String::new()] {
        let e = refused(c.authenticate_agent(&wrong));
        assert!(matches!(e, ControlError::Unauthorized(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the agent credential is not recognised; join again with a new token"
        );
    }
}

fn vm(host: Option<&str>) -> Vm {
    Vm {
        group: "rg1".into(),
        name: "web1".into(),
        region: "east".into(),
        state: VmState::Running,
        compute: "external".into(),
        boot: Default::default(),
        app_consistency: Default::default(),
        availability_set: None,
        disks: Vec::new(),
        nics: Vec::new(),
        created_by: None,
        owner: None,
        host: host.map(Into::into),
        created: Timestamp::now(),
        hydration: None,
    }
}

#[tokio::test]
async fn an_agent_acts_only_on_the_vms_placed_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start_without_regions(dir.path()).await.unwrap();
    let east2 = AgentIdentity {
        name: "east-2".into(),
        region: "east".into(),
    };
    let e = refused(c.authorize_vm(&east2, &vm(Some("east-1"))));
    assert!(matches!(e, ControlError::Forbidden(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "agent east-2 may act only on the VMs placed on it; VM rg1/web1 is on host east-1"
    );
    let e = refused(c.authorize_vm(&east2, &vm(None)));
    assert!(matches!(e, ControlError::Forbidden(_)), "{e:?}");
    assert!(
        e.to_string().ends_with("VM rg1/web1 is placed on no host"),
        "{e}"
    );
    c.authorize_vm(&east2, &vm(Some("east-2"))).unwrap();
}

#[test]
fn a_vm_without_a_host_reads_and_writes_as_before() {
    let v = vm(None);
    let json = serde_json::to_value(&v).unwrap();
    assert!(json.get("host").is_none(), "{json}");
    let back: Vm = serde_json::from_value(json).unwrap();
    assert_eq!(back.host, None);
    let placed = serde_json::to_value(vm(Some("east-1"))).unwrap();
    assert_eq!(placed["host"], "east-1");
}
