//! Secrets given to driftd (Kafka SASL and TLS passwords, the admin token,
//! Alertmanager credentials) come from environment variables or files and
//! never reach its output: not `check-config` (valid or not), not the
//! daemon's logs at debug level, not /metrics or the API.
//!
//! Each secret is a recognisable canary; every output is searched for it.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const SASL: &str = "canary-sasl-password-5d1f";
const SSL_KEY: &str = "canary-ssl-key-password-a07c";
const TOKEN: &str = "canary-admin-token-93be";
const AM_TOKEN: &str = "canary-alertmanager-token-c2e8";
const AM_PASSWORD: &str = "canary-alertmanager-password-41f0";
const CANARIES: [&str; 5] = [SASL, SSL_KEY, TOKEN, AM_TOKEN, AM_PASSWORD];

fn assert_clean(what: &str, text: &str) {
    for c in CANARIES {
        assert!(!text.contains(c), "{what} shows the secret {c}:\n{text}");
    }
}

/// The test configuration with every secret as a reference: environment
/// variables for some, files for others.
fn config(kafka: &Kafka, dir: &std::path::Path, addr: &str) -> String {
    let ssl_file = dir.join("ssl-key-password");
    std::fs::write(&ssl_file, format!("{SSL_KEY}\n")).unwrap();
    let am_file = dir.join("am-password");
    std::fs::write(&am_file, AM_PASSWORD).unwrap();
    let am_port = free_port();
    config_toml(&kafka.brokers(), dir, "secrets", addr)
        .replace(
            "admin_token = \"test-admin-token-0123456789\"",
            "admin_token = \"env:DRIFTD_TEST_ADMIN_TOKEN\"",
        )
        .replace("level = \"info\"", "level = \"debug\"")
        + &format!(
            r#"
[kafka.properties]
"sasl.username" = "driftd"
"sasl.password" = "env:DRIFTD_TEST_SASL_PASSWORD"
"ssl.key.password" = "file:{}"

[[alerts.alertmanagers]]
url = "http://127.0.0.1:{am_port}"
bearer_token = "env:DRIFTD_TEST_AM_TOKEN"

[[alerts.alertmanagers]]
url = "http://127.0.0.1:{am_port}"
basic_auth_user = "driftd"
basic_auth_password = "file:{}"
"#,
            ssl_file.display(),
            am_file.display()
        )
}

fn with_env(cmd: &mut Command) -> &mut Command {
    cmd.env("DRIFTD_TEST_SASL_PASSWORD", SASL)
        .env("DRIFTD_TEST_ADMIN_TOKEN", TOKEN)
        .env("DRIFTD_TEST_AM_TOKEN", AM_TOKEN)
}

#[test]
fn secrets_stay_out_of_check_config_logs_and_http() {
    let kafka = Kafka::new(1, 1);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(5_000));
    let addr = format!("127.0.0.1:{}", free_port());
    let text = config(&kafka, dir.path(), &addr);
    for c in CANARIES {
        assert!(
            !text.contains(c),
            "the config file itself holds only references"
        );
    }
    let path = dir.path().join("driftd.toml");
    std::fs::write(&path, &text).unwrap();

    // check-config of the valid file (which resolves every reference).
    let out = with_env(Command::new(env!("CARGO_BIN_EXE_driftd")).args([
        "check-config",
        "--config",
        path_str(&path),
    ]))
    .output()
    .unwrap();
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{printed}");
    assert_clean("check-config", &printed);

    // Without the environment: the missing variables are named, by key.
    let out = Command::new(env!("CARGO_BIN_EXE_driftd"))
        .args(["check-config", "--config", path_str(&path)])
        .env_remove("DRIFTD_TEST_SASL_PASSWORD")
        .env_remove("DRIFTD_TEST_ADMIN_TOKEN")
        .env_remove("DRIFTD_TEST_AM_TOKEN")
        .output()
        .unwrap();
    let printed = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{printed}");
    for want in [
        "kafka.properties.sasl.password: environment variable DRIFTD_TEST_SASL_PASSWORD is not set",
        "http.admin_token: environment variable DRIFTD_TEST_ADMIN_TOKEN is not set",
    ] {
        assert!(printed.contains(want), "{want}\n{printed}");
    }

    // An invalid file: every problem reported, still no secret.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("every = \"500ms\"", "every = \"soon\"")).unwrap();
    let out = with_env(Command::new(env!("CARGO_BIN_EXE_driftd")).args([
        "check-config",
        "--config",
        path_str(&bad),
    ]))
    .output()
    .unwrap();
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(64), "{printed}");
    assert!(printed.contains("evaluation.every"), "{printed}");
    assert_clean("check-config of a bad file", &printed);

    // The daemon at debug level, serving, with alerts configured.
    let child = with_env(
        Command::new(env!("CARGO_BIN_EXE_driftd"))
            .args(["run", "--config", path_str(&path)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
    .spawn()
    .unwrap();
    wait_for(
        Duration::from_secs(60),
        "the daemon serves /metrics",
        || try_scrape(&addr).map(|_| ()),
    );
    let (_, metrics) = http_get(&format!("http://{addr}/metrics"));
    assert_clean("/metrics", &metrics);
    for path in ["/api/v1/status", "/api/v1/drift", "/api/v1/baselines"] {
        let (_, body) = http_get(&format!("http://{addr}{path}"));
        assert_clean(path, &body);
    }
    // The token works (so the daemon did read it) without being shown.
    let (code, _) = http_post(
        &format!("http://{addr}/api/v1/baselines/reload"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200);
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = child.wait_with_output().unwrap();
    let logs = format!("{}{}", stdout(&out), stderr(&out));
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert_clean("the daemon's logs", &logs);
}
