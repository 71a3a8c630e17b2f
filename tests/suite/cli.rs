//! The command line: `--validate` lists every error with its YAML path and exits non-zero;
//! every config shipped in the repository validates; `--help` and `--version` work.

use std::path::Path;
use std::process::Command;

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_lists_every_error_with_its_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "server:\n  listen:\n    - addr: \"127.0.0.1:8080\"\nroutes:\n  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n    colour: blue\n  - name: clock2\n    path: /clock\n    backend: { builtin: clock }\n  - name: slow\n    path: /slow\n    backend: { builtin: clock }\n    keepalive: { sse_heartbeat: 15 seconds }\n",
    )
    .unwrap();
    let (code, _, err) = switchyard(&["--config", path.to_str().unwrap(), "--validate"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("3 errors"), "{err}");
    assert!(
        err.contains(":8: routes[0].colour: unknown field `colour`"),
        "{err}"
    );
    assert!(
        err.contains(":10: routes[1].path: duplicate route"),
        "{err}"
    );
    assert!(
        err.contains(":15: routes[2].keepalive.sse_heartbeat: invalid duration"),
        "{err}"
    );
}

#[test]
fn validate_refuses_structural_mistakes_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("routes:\n  - { name: a, path: /a, backend: { builtin: clock } }\n", "missing `server:` section"),
        ("server: { listen: [ { addr: nope } ] }\n", "server.listen[0].addr: invalid listen address"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\" } ] }\nroutes:\n  - { name: a, path: /a }\n", "needs exactly one of `proxy:`"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\" } ] }\nroutes:\n  - { name: a, path: /a, proxy: { upstreams: [\"127.0.0.1:2\"], balance: random } }\n", "routes[0].proxy.balance: unknown balance"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\", tls: { cert: no.crt, key: no.key } } ] }\n", "server.listen[0].tls.cert: file \"no.crt\" not found"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\" } ] }\nroutes: [ { name: a, path: /a, backend: { builtin: clock } } ]\nextra: 1\n", "unknown key `extra`"),
        ("server: [\n", "not valid YAML"),
    ];
    for (yaml, expected) in cases {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (code, _, err) = switchyard(&["--config", path.to_str().unwrap(), "--validate"]);
        assert_ne!(code, 0, "{yaml}");
        assert!(
            err.contains(expected),
            "expected {expected:?} for:\n{yaml}\ngot:\n{err}"
        );
    }
}

#[test]
fn every_config_in_the_repository_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![root.join("gateway.yaml")];
    for dir in ["deploy", "examples"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            for e in entries.flatten() {
                let p = e.path();
                let is_gateway_config = p.extension().is_some_and(|x| x == "yaml")
                    && std::fs::read_to_string(&p).is_ok_and(|t| t.starts_with("# switchyard"));
                if is_gateway_config {
                    configs.push(p);
                }
            }
        }
    }
    for c in &configs {
        let (code, out, err) = switchyard(&["--config", c.to_str().unwrap(), "--validate"]);
        assert_eq!(code, 0, "{}: {out}{err}", c.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}

#[test]
fn help_and_version() {
    let (code, out, _) = switchyard(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--config") && out.contains("--validate") && out.contains("--log-level"));
    let (code, out, _) = switchyard(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("switchyard {}", env!("CARGO_PKG_VERSION"))));
}
