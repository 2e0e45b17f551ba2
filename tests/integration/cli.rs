//! The `jabbridge` command line: check-config on every example config, error messages that
//! name the file and the key, and --help documenting every subcommand.

use std::path::Path;
use std::process::Command;

/// Runs the `jabbridge` binary; whether it succeeded, and what it printed.
pub fn jabbridge(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_jabbridge"))
        .args(args)
        .env_remove("JABBRIDGE_CONFIG")
        .output()
        .expect("run jabbridge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Writes `config` to `dir` and runs `jabbridge doctor` on it.
pub fn doctor(dir: &Path, config: &str) -> (bool, String) {
    let path = dir.join("doctor.toml");
    std::fs::write(&path, config).expect("write the config");
    jabbridge(&["doctor", "--config", path.to_str().expect("utf-8 path")])
}

#[test]
fn every_example_config_passes_check_config() {
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&config_dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|extension| extension.to_str()) != Some("toml") {
            continue;
        }
        let (ok, output) = jabbridge(&[
            "check-config",
            "--config",
            path.to_str().expect("utf-8 path"),
        ]);
        assert!(ok, "{}: {output}", path.display());
        assert!(output.contains("config OK"), "{output}");
        checked += 1;
    }
    assert!(checked >= 1, "no example configs found");
}

#[test]
fn check_config_names_the_file_and_the_bridge_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[xmpp]\nserver = \"127.0.0.1:5347\"\n[[bridge]]\nkind = \"echo\"\ndomain = \"e.x\"\nsecret = \"hunter2\"\nprefx = \"oops\"\n",
    )
    .unwrap();
    let (ok, output) = jabbridge(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!ok, "{output}");
    assert!(output.contains("bridge[0]"), "{output}");
    assert!(output.contains("prefx"), "{output}");
    assert!(
        !output.contains("hunter2"),
        "the secret was printed: {output}"
    );

    std::fs::write(&path, "[xmpp]\nserver = 5347\n").unwrap();
    let (ok, output) = jabbridge(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        output.contains("bad.toml") && output.contains("xmpp.server"),
        "{output}"
    );
}

#[test]
fn help_documents_every_subcommand() {
    let (ok, output) = jabbridge(&["--help"]);
    assert!(ok, "{output}");
    for command in [
        "run",
        "check-config",
        "migrate",
        "users",
        "identities",
        "man",
        "completions",
    ] {
        // Each subcommand is listed on a line of its own, with its description.
        assert!(
            output
                .lines()
                .any(|line| line.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from:\n{output}"
        );
    }
}

#[test]
fn version_names_the_commit() {
    let (ok, output) = jabbridge(&["--version"]);
    assert!(ok, "{output}");
    assert!(
        output.starts_with(&format!("jabbridge {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{output}"
    );
}

/// The manual page and the completions come from the command's own definitions, need no
/// configuration, and cover every subcommand.
#[test]
fn the_manual_page_and_completions_need_no_config() {
    let (ok, manual) = jabbridge(&["--config", "/nonexistent.toml", "man"]);
    assert!(ok, "{manual}");
    assert!(manual.contains(".TH jabbridge 1"), "{manual}");
    for command in ["run", "check\\-config", "migrate", "users", "identities"] {
        assert!(
            manual.contains(command),
            "{command} missing from the manual page"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script) = jabbridge(&["completions", shell]);
        assert!(ok, "{script}");
        assert!(script.contains("check-config"), "{shell}: {script}");
    }
    let (ok, refused) = jabbridge(&["completions", "tcsh"]);
    assert!(!ok, "{refused}");
}

/// Every metric the alert rules and the Grafana dashboard in contrib/ name is one the code
/// exports, and Prometheus's own checker (`promtool check rules`) accepts the rules.
#[test]
fn the_alert_rules_and_the_dashboard_name_only_exported_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules_path = format!("{root}/contrib/prometheus/jabbridge-alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).expect("the alert rules");
    let dashboard =
        std::fs::read_to_string(format!("{root}/contrib/grafana/jabbridge-dashboard.json"))
            .expect("the dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let expressions: Vec<String> = parsed["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(expressions.len() >= 10, "{expressions:?}");
    let sources: String = [
        "src/metrics.rs",
        "bridges/sms/src/lib.rs",
        "bridges/webhook/src/lib.rs",
    ]
    .iter()
    .map(|path| std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_default())
    .collect();
    for (what, text, least) in [
        ("the alert rules", rules.clone(), 6),
        ("the dashboard", expressions.join("\n"), 12),
    ] {
        let mut named = std::collections::BTreeSet::new();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("jabbridge_") {
                named.insert(word.to_owned());
            }
        }
        assert!(named.len() >= least, "{what}: {named:?}");
        for metric in &named {
            assert!(
                sources.contains(&format!("\"{metric}\"")),
                "{metric} is named by {what} but exported nowhere"
            );
        }
    }
    match Command::new("promtool")
        .args(["check", "rules", &rules_path])
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool (Debian prometheus) is needed under CI: {error}"
            );
            eprintln!("promtool not run: {error}");
        }
    }
}

#[test]
fn admin_commands_manage_identities_and_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("j.toml");
    std::fs::write(
        &path,
        format!(
            "[xmpp]\nserver = \"127.0.0.1:5347\"\n[database]\nurl = \"sqlite://{}/j.db\"\n\
             [[bridge]]\nkind = \"sms\"\ndomain = \"sms.x\"\nsecret = \"s\"\nallow = [\"x\"]\n\
             provider = \"twilio\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let (ok, output) = jabbridge(&["--config", config, "migrate"]);
    assert!(ok, "{output}");
    // The bridge reads the number as its users would type it, and stores it in E.164.
    let (ok, output) = jabbridge(&[
        "--config",
        config,
        "identities",
        "set",
        "sms.x",
        "(555) 123-4567",
        "alice@x",
    ]);
    assert!(ok && output.contains("+15551234567"), "{output}");
    let (ok, output) = jabbridge(&[
        "--config",
        config,
        "identities",
        "show",
        "sms.x",
        "+1 555 123 4567",
    ]);
    assert!(ok && output.trim() == "alice@x", "{output}");
    let (ok, output) = jabbridge(&[
        "--config",
        config,
        "identities",
        "set",
        "sms.x",
        "pizza",
        "alice@x",
    ]);
    assert!(
        !ok && output.contains("not an address on sms.x"),
        "{output}"
    );
    let (ok, output) = jabbridge(&[
        "--config",
        config,
        "identities",
        "set",
        "irc.x",
        "+15551234567",
        "alice@x",
    ]);
    assert!(
        !ok && output.contains("no [[bridge]] has domain"),
        "{output}"
    );
    let (ok, output) = jabbridge(&[
        "--config",
        config,
        "identities",
        "remove",
        "sms.x",
        "5551234567",
    ]);
    assert!(ok, "{output}");
    let (ok, output) = jabbridge(&[
        "--config",
        config,
        "identities",
        "show",
        "sms.x",
        "+15551234567",
    ]);
    assert!(!ok && output.contains("nobody owns"), "{output}");
    let (ok, output) = jabbridge(&["--config", config, "users", "remove", "sms.x", "nobody@x"]);
    assert!(!ok && output.contains("not registered"), "{output}");
}

/// The next datagram Jabbridge sent systemd, within 20 s.
async fn told(socket: &tokio::net::UnixDatagram) -> String {
    let mut buffer = vec![0; 4096];
    let received =
        tokio::time::timeout(std::time::Duration::from_secs(20), socket.recv(&mut buffer))
            .await
            .expect("a notification within 20 s")
            .expect("read the notification socket");
    String::from_utf8_lossy(&buffer[..received]).into_owned()
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once the link is up, with a status
/// line; WATCHDOG=1 at half the watchdog period; STOPPING=1 at shutdown. With the XMPP
/// server down, READY=1 still comes once the link is retrying, and the status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_ready_fed_the_watchdog_and_told_of_the_stop() {
    use crate::harness::{Jabbridge, ServerKind, XmppServer};
    let mut server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify");
    let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notification socket");
    let path = path.to_str().expect("utf-8 path");
    let config = crate::config_for(&server, dir.path(), &["echo.localhost"]);
    let env = [("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "600000")];
    let mut jabbridge = Jabbridge::start_with_env(dir.path(), &config, &env).await;
    let ready = told(&socket).await;
    assert_eq!(
        ready,
        "READY=1\nSTATUS=1 of 1 component links up",
        "{}",
        jabbridge.log()
    );
    let (status, _) = jabbridge.get("/ready").await;
    assert_eq!(status, 200, "READY=1 came before /ready said so");
    for _ in 0..2 {
        assert_eq!(told(&socket).await, "WATCHDOG=1");
    }
    let (code, _) = jabbridge.terminate().await;
    assert_eq!(code, Some(0));
    let mut last = String::new();
    while !last.starts_with("STOPPING=1") {
        last = told(&socket).await;
    }

    // The XMPP server is down: ready anyway, retrying.
    server.stop().await;
    let down = tempfile::tempdir().expect("temp dir");
    let path = down.path().join("notify");
    let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notification socket");
    let config = crate::config_for(&server, down.path(), &["echo.localhost"]);
    let _jabbridge = Jabbridge::start_with_env(
        down.path(),
        &config,
        &[("NOTIFY_SOCKET", path.to_str().expect("utf-8 path"))],
    )
    .await;
    let ready = told(&socket).await;
    assert_eq!(
        ready,
        "READY=1\nSTATUS=0 of 1 component links up; retrying echo.localhost"
    );
}

/// The systemd unit in contrib/ is hardened: `systemd-analyze security` rates its exposure
/// under 2.0 (0 is the safest, 10 the least safe).
#[test]
fn the_systemd_unit_is_hardened() {
    let unit = format!("{}/contrib/systemd", env!("CARGO_MANIFEST_DIR"));
    let output = match Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=yes",
            "--no-pager",
            "jabbridge.service",
        ])
        .current_dir(&unit)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "systemd-analyze is needed under CI: {error}"
            );
            eprintln!("skipped: no systemd-analyze ({error})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let level: f64 = text
        .lines()
        .find_map(|line| {
            let rest = line
                .split("Overall exposure level for jabbridge.service:")
                .nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(level < 2.0, "exposure {level}:\n{text}");
}

/// SIGHUP reloads the config: a bridge added starts, one whose section changed is rebuilt,
/// one removed stops, `allow` changes in place while that bridge's link stays up, a key that
/// needs a restart is reported, and a config that does not validate changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_bridges_and_access_and_refuses_a_bad_config() {
    use crate::harness::{Jabbridge, ServerKind, XmppServer, body, error_condition};
    const ONE: &str = "echo.localhost";
    const TWO: &str = "echo2.localhost";
    let wait = std::time::Duration::from_secs(10);
    let server = XmppServer::start(ServerKind::Prosody, &[ONE, TWO], &["alice", "admin"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let first = crate::config_for(&server, dir.path(), &[ONE]);
    let jabbridge = Jabbridge::start(dir.path(), &first).await;
    jabbridge.wait_ready(wait).await;
    let mut alice = crate::registered(&server, "alice", &[ONE]).await;
    let connected = |jabbridge: &Jabbridge, domain: &str| {
        jabbridge
            .log()
            .matches(&format!("component connected bridge=\"{domain}\""))
            .count()
    };
    let ready_for = async |jabbridge: &Jabbridge, domain: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (status, text) = jabbridge.get("/ready").await;
            let ready: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            if status == 200 && ready["bridges"][domain]["connected"] == true {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{domain} never ready: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let say = async |alice: &mut crate::harness::Client, to: &str, id: &str| {
        alice
            .send(&format!(
                "<message type='chat' to='bob@{to}' id='{id}'><body>{id}</body></message>"
            ))
            .await;
        alice
            .expect(std::time::Duration::from_secs(10), |stanza| {
                stanza.attr("id") == Some(id) && stanza.attr("type") == Some("error")
                    || body(stanza).is_some_and(|text| text.ends_with(id))
            })
            .await
    };
    let echoed = say(&mut alice, ONE, "before").await;
    assert_eq!(
        body(&echoed).as_deref(),
        Some("echo.localhost says: before")
    );

    // A second bridge, and alice no longer allowed on the first.
    let second = crate::config_for(&server, dir.path(), &[ONE, TWO]).replacen(
        "allow = [\"localhost\"]",
        "allow = []",
        1,
    );
    let outcome = jabbridge.reload(&second).await;
    assert!(
        outcome.contains("1 bridge(s) added, 0 removed, 0 rebuilt, 1 updated in place"),
        "{outcome}"
    );
    ready_for(&jabbridge, TWO).await;
    let refused = say(&mut alice, ONE, "refused").await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("forbidden"),
        "{refused:?}"
    );
    assert_eq!(
        connected(&jabbridge, ONE),
        1,
        "the first bridge's link went down"
    );
    let reply = alice
        .iq("reg2", &crate::register_set(TWO, "reg2", ""))
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let echoed = say(&mut alice, TWO, "second").await;
    assert_eq!(
        body(&echoed).as_deref(),
        Some("echo2.localhost says: second")
    );

    // The second bridge's own key changes: it is rebuilt (a new link), the first is not.
    let third = second.replace("prefix = \"echo2.localhost says: \"", "prefix = \"two: \"");
    let outcome = jabbridge.reload(&third).await;
    assert!(
        outcome.contains("0 removed, 1 rebuilt, 1 updated in place"),
        "{outcome}"
    );
    ready_for(&jabbridge, TWO).await;
    assert_eq!(connected(&jabbridge, TWO), 2);
    assert_eq!(connected(&jabbridge, ONE), 1);
    let echoed = say(&mut alice, TWO, "rebuilt").await;
    assert_eq!(body(&echoed).as_deref(), Some("two: rebuilt"));

    // A key that needs a restart is reported and kept; a config that does not validate is
    // refused with check-config's error, and what runs stays.
    let fourth = third.replace("keepalive = \"2s\"", "keepalive = \"3s\"");
    let outcome = jabbridge.reload(&fourth).await;
    assert!(
        outcome.contains("[xmpp] changed but need a restart"),
        "{outcome}"
    );
    let outcome = jabbridge
        .reload(&fourth.replace("[xmpp]", "[xmpp]\nbogus = 1"))
        .await;
    assert!(outcome.contains("was not reloaded"), "{outcome}");
    assert!(outcome.contains("bogus"), "{outcome}");
    let echoed = say(&mut alice, TWO, "kept").await;
    assert_eq!(body(&echoed).as_deref(), Some("two: kept"));

    // The second bridge removed: it stops, and /ready forgets it.
    let outcome = jabbridge
        .reload(&first.replacen("allow = [\"localhost\"]", "allow = []", 1))
        .await;
    assert!(
        outcome.contains("0 bridge(s) added, 1 removed, 0 rebuilt, 1 updated"),
        "{outcome}"
    );
    let (_, text) = jabbridge.get("/ready").await;
    assert!(!text.contains(TWO), "{text}");
    assert!(
        jabbridge
            .log()
            .contains("component disconnected for shutdown bridge=\"echo2.localhost\""),
        "{}",
        jabbridge.log()
    );
    assert_eq!(connected(&jabbridge, ONE), 1);

    // An admin's `reload` command does the same, and answers what will change; a user may
    // not run it.
    std::fs::write(
        &jabbridge.config_path,
        second.replace("{http}", &jabbridge.http_port.to_string()),
    )
    .expect("write the config");
    let mut admin = server.client("admin").await;
    let command = |id: &str| {
        format!("<message type='chat' to='{ONE}' id='{id}'><body>reload</body></message>")
    };
    admin.send(&command("r1")).await;
    let answer = admin
        .expect(std::time::Duration::from_secs(20), |stanza| {
            body(stanza).is_some_and(|text| text.starts_with("Reloading"))
        })
        .await;
    assert_eq!(
        body(&answer).as_deref(),
        Some("Reloading: 1 bridge(s) added, 0 removed, 0 rebuilt, 1 updated in place.")
    );
    ready_for(&jabbridge, TWO).await;
    alice.send(&command("r2")).await;
    let refused = alice
        .expect(std::time::Duration::from_secs(10), |stanza| {
            stanza.attr("id") == Some("r2")
                || body(stanza).is_some_and(|text| text.contains("admins"))
        })
        .await;
    assert!(
        error_condition(&refused).is_some() || body(&refused).is_some_and(|t| t.contains("admins")),
        "{refused:?}"
    );

    // The admin's command rebuilds the very bridge it came through: the answer still comes
    // back (it is sent before that bridge's link closes), then the bridge comes back.
    std::fs::write(
        &jabbridge.config_path,
        second
            .replacen("say_token", "call_timeout = \"20s\"\nsay_token", 1)
            .replace("{http}", &jabbridge.http_port.to_string()),
    )
    .expect("write the config");
    admin.send(&command("r3")).await;
    let answer = admin
        .expect(std::time::Duration::from_secs(20), |stanza| {
            body(stanza).is_some_and(|text| text.starts_with("Reloading"))
        })
        .await;
    assert_eq!(
        body(&answer).as_deref(),
        Some("Reloading: 0 bridge(s) added, 0 removed, 1 rebuilt, 1 updated in place.")
    );
    ready_for(&jabbridge, ONE).await;
}

/// Runs a command; whether it succeeded, and what it printed.
fn sh(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(output) => (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ),
        Err(error) => (false, format!("cannot run {program}: {error}")),
    }
}

/// The Debian package (`scripts/package`, cargo-deb) installs with dpkg: the jabbridge
/// system user, the conffile readable by its group only and accepted by check-config, the
/// state directory, the unit, the man page, completions and examples; `apt-get purge`
/// leaves nothing behind. Needs root (it installs the package on this machine): under CI it
/// must run.
#[test]
fn the_debian_package_installs_checks_and_purges_cleanly() {
    let (_, uid) = sh("id", &["-u"]);
    let ci = std::env::var_os("CI").is_some();
    if uid.trim() != "0" || !sh("dpkg", &["--version"]).0 {
        assert!(!ci, "the package test needs root and dpkg under CI");
        eprintln!("skipped: not root, or no dpkg");
        return;
    }
    if sh("dpkg", &["-s", "jabbridge"]).0 {
        assert!(!ci, "a jabbridge package is already installed");
        eprintln!("skipped: a jabbridge package is already installed here");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tempfile::tempdir().expect("temp dir");
    let out_dir = out.path().to_str().expect("utf-8 path");
    let (ok, built) = sh(
        &format!("{root}/scripts/package"),
        &["--dev", "--output", out_dir],
    );
    assert!(ok, "{built}");
    let package = std::fs::read_dir(out.path())
        .expect("output dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .expect("a .deb");
    let (ok, installed) = sh("dpkg", &["-i", package.to_str().expect("utf-8 path")]);
    assert!(ok, "{installed}");
    let checks = std::panic::catch_unwind(|| {
        let (ok, user) = sh("getent", &["passwd", "jabbridge"]);
        assert!(ok, "no jabbridge user");
        assert!(user.contains(":/var/lib/jabbridge:"), "{user}");
        let (_, config) = sh("stat", &["-c", "%a %U %G", "/etc/jabbridge/jabbridge.toml"]);
        assert_eq!(config.trim(), "640 root jabbridge");
        let (_, state) = sh("stat", &["-c", "%a %U %G", "/var/lib/jabbridge"]);
        assert_eq!(state.trim(), "750 jabbridge jabbridge");
        for path in [
            "/usr/bin/jabbridge",
            "/usr/lib/systemd/system/jabbridge.service",
            "/usr/share/man/man1/jabbridge.1.gz",
            "/usr/share/bash-completion/completions/jabbridge",
            "/usr/share/doc/jabbridge/examples/sms.toml",
        ] {
            assert!(Path::new(path).exists(), "{path} is missing");
        }
        // The service's user can read the conffile, and it validates.
        let (ok, checked) = sh(
            "runuser",
            &[
                "-u",
                "jabbridge",
                "--",
                "/usr/bin/jabbridge",
                "check-config",
                "--config",
                "/etc/jabbridge/jabbridge.toml",
            ],
        );
        assert!(ok && checked.contains("config OK"), "{checked}");
        let (_, version) = sh("/usr/bin/jabbridge", &["--version"]);
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    });
    let (purged, purge) = sh("apt-get", &["purge", "-y", "-q", "jabbridge"]);
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    assert!(purged, "{purge}");
    assert!(!sh("dpkg", &["-s", "jabbridge"]).0, "still installed");
    assert!(
        !sh("getent", &["passwd", "jabbridge"]).0,
        "the user is left"
    );
    assert!(
        !sh("getent", &["group", "jabbridge"]).0,
        "the group is left"
    );
    for path in ["/etc/jabbridge", "/var/lib/jabbridge", "/usr/bin/jabbridge"] {
        assert!(!Path::new(path).exists(), "{path} is left");
    }
}
