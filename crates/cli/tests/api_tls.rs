//! TLS on the API, with the real binary on a non-loopback address: the server makes its own CA
//! at first start and keeps it; the CLI trusts it by fingerprint or by CA file and refuses a
//! wrong pin; plain HTTP is served only from loopback, and from elsewhere gets a 400 and changes
//! nothing; an operator's own certificate is served, and bad TLS settings stop the server with a
//! clear message; the header timeout still cuts off silent and stalled clients.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{FERRY, free_port, wait_until};

/// An address of this machine that is not loopback (the API must be reached over it).
fn outside_ip() -> IpAddr {
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("run hostname -I");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .unwrap_or_else(|| {
            panic!(
                "this machine has no IPv4 address but loopback (hostname -I: {text:?}): the TLS \
                 tests need one to reach the API from outside loopback"
            )
        })
}

/// A `ferry server` listening on every address.
struct TlsServer {
    child: Child,
    data: PathBuf,
    port: u16,
    ip: IpAddr,
    token: String,
    fingerprint: String,
}

impl TlsServer {
    /// Start with `config` (JSON, if any) and wait until it serves.
    fn start(data: &Path, port: u16, config: Option<&str>) -> TlsServer {
        let child = spawn(data, port, config);
        let token_path = data.join("admin-token");
        wait_until(60, "the admin token", || token_path.exists());
        let fp_path = data.join("tls").join("fingerprint");
        wait_until(60, "DATA/tls/fingerprint", || fp_path.exists());
        let s = TlsServer {
            child,
            data: data.to_path_buf(),
            port,
            ip: outside_ip(),
            token: std::fs::read_to_string(token_path).unwrap().trim().into(),
            fingerprint: std::fs::read_to_string(fp_path).unwrap().trim().into(),
        };
        wait_until(60, "the API to answer on loopback", || {
            raw_http(("127.0.0.1", port), "GET", "/healthz", "").0 == 200
        });
        s
    }

    fn https(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// `ferry ARGS` against `url` with the extra environment `env`.
    fn ferry(&self, url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new(FERRY)
            .args(args)
            .env("FERRY_URL", url)
            .env("FERRY_TOKEN", &self.token)
            .env_remove("FERRY_FINGERPRINT")
            .env_remove("FERRY_CA_CERT")
            .envs(env.iter().copied())
            .current_dir(self.data.parent().unwrap())
            .output()
            .unwrap()
    }

    fn ok(&self, url: &str, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.ferry(url, env, args);
        assert!(
            out.status.success(),
            "ferry {args:?} at {url} failed: {}{}\nthe server's log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn spawn(data: &Path, port: u16, config: Option<&str>) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let mut cmd = Command::new(FERRY);
    cmd.args(["server", "--data"])
        .arg(data)
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .env("FERRY_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(json) = config {
        let path = data.with_extension("config.json");
        std::fs::write(&path, json).unwrap();
        cmd.arg("--config").arg(path);
    }
    cmd.spawn().expect("start ferry server")
}

/// Run a server that must refuse to start: its exit status and what it said.
fn refused(data: &Path, config: &str) -> String {
    let mut child = spawn(data, free_port(), Some(config));
    let mut status = None;
    wait_until(60, "the server to refuse to start", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success());
    std::fs::read_to_string(data.with_extension("log")).unwrap()
}

/// A raw HTTP/1.1 request over plain TCP: status and body (0 when no answer came).
fn raw_http(
    to: impl std::net::ToSocketAddrs,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(to) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = r#"{"name": "rg-plain", "region": "east"}"#;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_own_ca_is_pinned_or_trusted_and_plain_http_is_served_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ip = outside_ip();
    let config = format!(r#"{{"api_tls": {{"names": ["{ip}"]}}}}"#);
    let port = free_port();
    let s = TlsServer::start(&data, port, Some(&config));
    let https = s.https();

    // The start line names the fingerprint; the CA and keys are private to the server.
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains(&format!("TLS fingerprint {}", s.fingerprint)),
        "{log}"
    );
    assert!(s.fingerprint.starts_with("sha256:") && s.fingerprint.len() == 7 + 64);
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        assert_eq!(mode(&data.join("tls").join(f)), 0o600, "{f}");
    }

    // Over https, by the pin and by the CA file.
    let regions = s.ok(
        &https,
        &[("FERRY_FINGERPRINT", &s.fingerprint)],
        &["region", "list"],
    );
    assert!(regions.contains("east"), "{regions}");
    let ca = data.join("tls").join("ca.pem");
    let regions = s.ok(
        &https,
        &[("FERRY_CA_CERT", ca.to_str().unwrap())],
        &["region", "list"],
    );
    assert!(regions.contains("east"), "{regions}");

    // A wrong pin is refused, naming both fingerprints; so is no trust at all.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = s.ferry(
        &https,
        &[("FERRY_FINGERPRINT", &wrong)],
        &["region", "list"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&s.fingerprint) && err.contains(&wrong),
        "the error names both fingerprints: {err}"
    );
    let out = s.ferry(&https, &[], &["region", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("FERRY_FINGERPRINT"),
        "{err}"
    );

    // Plain HTTP from outside loopback: a 400 saying what to use, and nothing created.
    let auth = format!("Authorization: Bearer {}\r\n", s.token);
    let (status, body) = raw_http((ip, port), "POST", "/v1/groups", &auth);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body.trim(),
        format!(
            "this ferry server accepts plain HTTP only from loopback; use https:// (fingerprint {})",
            s.fingerprint
        )
    );
    let out = s.ferry(&format!("http://{ip}:{port}"), &[], &["region", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("use https://"),
        "{err}"
    );
    let fingerprint = s.fingerprint.clone();
    let pin = [("FERRY_FINGERPRINT", fingerprint.as_str())];
    let groups = s.ok(&https, &pin, &["group", "list", "-o", "json"]);
    assert_eq!(groups.trim(), "[]", "{groups}");

    // Plain HTTP from loopback is served as before.
    let (status, body) = raw_http(("127.0.0.1", port), "POST", "/v1/groups", &auth);
    assert_eq!(status, 201, "{body}");
    let groups = s.ok(&https, &pin, &["group", "list"]);
    assert!(groups.contains("rg-plain"), "{groups}");
    s.ok(
        &format!("http://127.0.0.1:{port}"),
        &[],
        &["region", "list"],
    );

    // A restart reuses the CA, the certificate and their keys.
    let before: Vec<Vec<u8>> = ["ca.pem", "ca.key", "server.pem", "server.key"]
        .iter()
        .map(|f| std::fs::read(data.join("tls").join(f)).unwrap())
        .collect();
    s.stop();
    std::fs::remove_file(data.join("tls").join("fingerprint")).unwrap();
    let s = TlsServer::start(&data, port, Some(&config));
    assert_eq!(s.fingerprint, fingerprint);
    let after: Vec<Vec<u8>> = ["ca.pem", "ca.key", "server.pem", "server.key"]
        .iter()
        .map(|f| std::fs::read(data.join("tls").join(f)).unwrap())
        .collect();
    assert!(before == after, "the TLS files changed at a restart");
    s.ok(&s.https(), &pin, &["region", "list"]);
    s.stop();

    // Without its certificate the server signs a new one with the same CA: the pin holds.
    std::fs::remove_file(data.join("tls").join("server.pem")).unwrap();
    std::fs::remove_file(data.join("tls").join("server.key")).unwrap();
    let s = TlsServer::start(&data, port, Some(&config));
    assert_eq!(s.fingerprint, fingerprint);
    assert!(std::fs::read(data.join("tls").join("server.pem")).unwrap() != before[2]);
    s.ok(&s.https(), &pin, &["region", "list"]);
    s.stop();

    // Half a pair stops the start, naming what is missing, and makes nothing new.
    std::fs::remove_file(data.join("tls").join("ca.pem")).unwrap();
    let log = refused(&data, &config);
    assert!(
        log.contains("ca.pem is missing but") && log.contains("ca.key is there"),
        "{log}"
    );
    assert!(!data.join("tls").join("ca.pem").exists());
}

#[test]
fn an_operators_certificate_is_served_and_bad_tls_settings_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let ip = outside_ip();
    // The operator's CA and a certificate it signed for this machine's address.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![ip.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let files = dir.path().join("pki");
    std::fs::create_dir(&files).unwrap();
    let (cert_path, key_path, ca_path) = (
        files.join("api.pem"),
        files.join("api.key"),
        files.join("ca.pem"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let config = |key: &Path| {
        format!(
            r#"{{"api_tls": {{"cert": "{}", "key": "{}", "ca": "{}"}}}}"#,
            cert_path.display(),
            key.display(),
            ca_path.display()
        )
    };

    let data = dir.path().join("data");
    let s = TlsServer::start(&data, free_port(), Some(&config(&key_path)));
    let expected = {
        let digest = sha256sum_hex(ca_cert.der());
        format!("sha256:{digest}")
    };
    assert_eq!(
        s.fingerprint, expected,
        "the fingerprint is the operator's CA's"
    );
    assert!(
        !data.join("tls").join("ca.key").exists(),
        "no CA of its own"
    );
    let https = s.https();
    s.ok(
        &https,
        &[("FERRY_FINGERPRINT", &s.fingerprint)],
        &["region", "list"],
    );
    s.ok(
        &https,
        &[("FERRY_CA_CERT", ca_path.to_str().unwrap())],
        &["region", "list"],
    );
    s.stop();

    // A missing key file, a key of another certificate, a file that is not PEM, plain HTTP on
    // every address: each stops the server before it serves, saying what is wrong.
    let missing = files.join("missing.key");
    let log = refused(&dir.path().join("d1"), &config(&missing));
    assert!(
        log.contains("api_tls.key") && log.contains(&missing.display().to_string()),
        "{log}"
    );
    let other = files.join("other.key");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let log = refused(&dir.path().join("d2"), &config(&other));
    assert!(
        log.contains("cannot serve the certificate with its key"),
        "{log}"
    );
    let garbage = files.join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let log = refused(&dir.path().join("d3"), &config(&garbage));
    assert!(log.contains("holds no PEM private key"), "{log}");
    let log = refused(&dir.path().join("d4"), r#"{"api_tls": {"mode": "off"}}"#);
    assert!(
        log.contains("plain HTTP only on loopback: set api_tls.mode = auto or listen on 127.0.0.1"),
        "{log}"
    );
    for d in ["d1", "d2", "d3", "d4"] {
        assert!(
            !dir.path().join(d).join("tls").exists(),
            "{d}: made TLS files"
        );
        assert!(
            !dir.path().join(d).join("admin-token").exists(),
            "{d}: started"
        );
    }
}

/// SHA-256 in hex, by `sha256sum` (an implementation other than the server's).
fn sha256sum_hex(der: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(der).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Read until the server closes; the time it took, or `None` if it did not within 60 s.
fn closed_after(mut s: TcpStream) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(t.elapsed()),
            Err(_) => return None,
        }
    }
}

#[test]
fn the_header_timeout_cuts_off_silent_clients_and_stalled_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let s = TlsServer::start(&data, port, Some(r#"{"http_header_timeout_seconds": 1}"#));
    // The start of a TLS ClientHello record, and then nothing.
    let hello_start: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
    let mut clients = Vec::new();
    for ip in [IpAddr::from([127, 0, 0, 1]), s.ip] {
        clients.push(("silent", TcpStream::connect((ip, port)).unwrap()));
        let mut c = TcpStream::connect((ip, port)).unwrap();
        c.write_all(hello_start).unwrap();
        clients.push(("stalled handshake", c));
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(what, c)| std::thread::spawn(move || (what, closed_after(c))))
        .collect();
    for r in readers {
        let (what, took) = r.join().unwrap();
        let took = took.unwrap_or_else(|| panic!("a {what} client was not cut off in 60 s"));
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(10),
            "a {what} client was cut off after {took:?}"
        );
    }
    // Others are still served.
    let pin = [("FERRY_FINGERPRINT", s.fingerprint.as_str())];
    let config_names_absent = s.ferry(&s.https(), &pin, &["region", "list"]);
    // Without api_tls.names the certificate is not valid for the outside address...
    assert!(!config_names_absent.status.success());
    let err = String::from_utf8_lossy(&config_names_absent.stderr);
    assert!(err.contains("TLS"), "{err}");
    // ...but it is for localhost.
    s.ok(
        &format!("https://localhost:{port}"),
        &pin,
        &["region", "list"],
    );
    s.stop();
}
