//! The operator's subcommands of the real binary: `config` (the effective
//! configuration with each value's source, secrets redacted),
//! `completions` and `man`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ws-subprocess");

/// Runs the binary in `dir` with `env` and no other `WS_SUBPROCESS_*`
/// variable (nor the `./ws-subprocess.toml` of the repository, since `dir`
/// is elsewhere).
fn run(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WS_SUBPROCESS_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied()).current_dir(dir).stdin(Stdio::null()).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The line of `config`'s output setting `key`, split into the value and
/// the source comment.
fn setting<'a>(shown: &'a str, key: &str) -> (&'a str, &'a str) {
    let prefix = format!("{key} = ");
    let line = shown.lines().find(|line| line.starts_with(&prefix)).unwrap_or_else(|| panic!("no {key} in\n{shown}"));
    let (value, source) = line[prefix.len()..].split_once("  # ").unwrap_or_else(|| panic!("no source: {line}"));
    (value.trim_end(), source)
}

#[test]
fn config_names_the_source_of_each_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("operator.toml");
    std::fs::write(&file, "path = \"/from-file\"\nkill_grace = \"3s\"\n").unwrap();
    let output = run(
        &["--config", file.to_str().unwrap(), "--max-sessions", "9", "config"],
        &[("WS_SUBPROCESS_KILL_GRACE", "250ms"), ("WS_SUBPROCESS_TOKEN_PARAM", "env_token")],
        dir.path(),
    );
    let shown = stdout(&output);
    assert!(output.status.success(), "{}\n{shown}", stderr(&output));
    assert_eq!(setting(&shown, "path"), ("\"/from-file\"", format!("file {}", file.display()).as_str()));
    // The environment wins over the file, and says so.
    assert_eq!(setting(&shown, "kill_grace"), ("\"250ms\"", "env WS_SUBPROCESS_KILL_GRACE"));
    assert_eq!(setting(&shown, "token_param"), ("\"env_token\"", "env WS_SUBPROCESS_TOKEN_PARAM"));
    assert_eq!(setting(&shown, "max_sessions"), ("9", "flag --max-sessions"));
    assert_eq!(setting(&shown, "listen"), ("\"127.0.0.1:8866\"", "default"));
    assert_eq!(setting(&shown, "max_message_size"), ("\"1.0 MiB\"", "default"));
    assert!(shown.lines().any(|line| line.starts_with("# idle_timeout = <unset>") && line.ends_with("# default")));
}

#[test]
fn flags_after_the_subcommand_are_read_as_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("operator.toml");
    std::fs::write(&file, "path = \"/from-file\"\n").unwrap();
    let file = file.to_str().unwrap();
    let before = run(&["--config", file, "--max-sessions", "9", "config"], &[], dir.path());
    assert!(before.status.success(), "{}", stderr(&before));
    for args in [
        &["config", "--config", file, "--max-sessions", "9"][..],
        &["--config", file, "config", "--max-sessions=9"],
        &["config", "-config", file, "-max-sessions", "9"],
    ] {
        let after = run(args, &[], dir.path());
        assert!(after.status.success(), "{args:?}: {}", stderr(&after));
        assert_eq!(stdout(&after), stdout(&before), "{args:?}");
    }
    let shown = stdout(&before);
    assert_eq!(setting(&shown, "path").0, "\"/from-file\"");
    assert_eq!(setting(&shown, "max_sessions"), ("9", "flag --max-sessions"));
    // A bad value after the subcommand fails as one before it.
    let bad = run(&["config", "--max-sessions", "0"], &[], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("`max_sessions`: must be at least 1"), "{}", stderr(&bad));
}

#[test]
fn config_reads_the_environment_and_the_default_file_as_a_start_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ws-subprocess.toml"), "max_sessions = 7\n").unwrap();
    let output = run(&["config"], &[], dir.path());
    let shown = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    let file = std::fs::canonicalize(dir.path()).unwrap().join("ws-subprocess.toml");
    assert_eq!(setting(&shown, "max_sessions"), ("7", format!("file {}", file.display()).as_str()));

    let output = run(&["config"], &[("WS_SUBPROCESS_MAX_SESSIONS", "8")], dir.path());
    assert_eq!(setting(&stdout(&output), "max_sessions"), ("8", "env WS_SUBPROCESS_MAX_SESSIONS"));
}

#[test]
fn config_fails_like_a_start_on_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env) in [
        (&["--max-sessions", "0"][..], &[][..]),
        (&[][..], &[("WS_SUBPROCESS_KILL_GRACE", "soon")][..]),
        (&[][..], &[("WS_SUBPROCESS_NOPE", "1")][..]),
        (&["--config", "/nonexistent/operator.toml"][..], &[][..]),
    ] {
        let config = run(&[args, &["config"]].concat(), env, dir.path());
        assert_eq!(config.status.code(), Some(2), "{args:?} {env:?}: {}", stderr(&config));
        assert!(stdout(&config).is_empty(), "{}", stdout(&config));
        assert!(stderr(&config).starts_with("ws-subprocess: configuration error\n"), "{}", stderr(&config));
        // A start fails before binding anything, with the same message.
        let start = run(args, env, dir.path());
        assert_eq!(start.status.code(), Some(2), "{args:?} {env:?}: {}", stderr(&start));
        assert_eq!(stderr(&config), stderr(&start));
    }
}

#[test]
fn config_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, "jwt-secret-in-a-file-0123456789abcdef\n").unwrap();
    let file = dir.path().join("secrets.toml");
    std::fs::write(
        &file,
        format!(
            "auth = \"jwt\"\njwt_algorithms = [\"HS256\"]\njwt_secret_file = \"{}\"\n\
             controller_url = \"https://ctl:file-password-1@controller.example/check?api_key=file-key-2\"\n",
            secret_file.display()
        ),
    )
    .unwrap();
    let output = run(
        &[
            "--config",
            file.to_str().unwrap(),
            "--jwt-jwks-url",
            "https://jwks:flag-password-3@issuer.example/jwks.json?access_token=flag-token-4",
            "config",
        ],
        &[("WS_SUBPROCESS_JWT_REPLAY_STORE", "redis://:env-password-5@cache.example:6379/0")],
        dir.path(),
    );
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    for secret in
        ["jwt-secret-in-a-file", "file-password-1", "file-key-2", "flag-password-3", "flag-token-4", "env-password-5"]
    {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} shown:\n{out}\n{err}");
    }
    assert_eq!(
        setting(&out, "controller_url"),
        (
            "\"https://ctl:<redacted>@controller.example/check?api_key=<redacted>\"",
            format!("file {}", file.display()).as_str()
        )
    );
    assert_eq!(
        setting(&out, "jwt_jwks_url"),
        ("\"https://jwks:<redacted>@issuer.example/jwks.json?access_token=<redacted>\"", "flag --jwt-jwks-url")
    );
    assert_eq!(
        setting(&out, "jwt_replay_store"),
        ("\"redis://:<redacted>@cache.example:6379/0\"", "env WS_SUBPROCESS_JWT_REPLAY_STORE")
    );
    // The path of the secret file is no secret; its contents are never read.
    assert_eq!(setting(&out, "jwt_secret_file").0, format!("\"{}\"", secret_file.display()));
}

#[test]
fn a_bad_configuration_is_reported_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env, key, shown, secret) in [
        (
            &["--controller-url", "http://ctl:flag-password-6@[broken"][..],
            &[][..],
            "`controller_url`",
            "http://ctl:<redacted>@[broken",
            "flag-password-6",
        ),
        (
            &[][..],
            &[("WS_SUBPROCESS_JWT_REPLAY_STORE", "rediss://:env-password-7@cache.example")][..],
            "`jwt_replay_store`",
            "rediss://:<redacted>@cache.example",
            "env-password-7",
        ),
    ] {
        let config = run(&[args, &["config"]].concat(), env, dir.path());
        let err = stderr(&config);
        assert_eq!(config.status.code(), Some(2), "{err}");
        assert!(err.contains(key) && err.contains(shown), "{err}");
        assert!(!err.contains(secret) && !stdout(&config).contains(secret), "{secret} shown:\n{err}");
        // A start says the same.
        let start = run(args, env, dir.path());
        assert_eq!(start.status.code(), Some(2));
        assert_eq!(stderr(&start), err);
    }
}

#[test]
fn completions_cover_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = run(&["completions", shell], &[], dir.path());
        let script = stdout(&output);
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        assert!(script.contains("ws-subprocess"), "{shell}:\n{script}");
        let flag = if shell == "fish" { "-l max-sessions" } else { "--max-sessions" };
        assert!(script.contains(flag), "{shell}:\n{script}");
        assert!(script.contains("mint-token") && script.contains("completions"), "{shell}:\n{script}");
    }
    let bash = stdout(&run(&["completions", "bash"], &[], dir.path()));
    assert!(bash.lines().any(|line| line.trim().starts_with("complete -F ") && line.ends_with(" ws-subprocess")));
    let zsh = stdout(&run(&["completions", "zsh"], &[], dir.path()));
    assert!(zsh.starts_with("#compdef ws-subprocess"), "{zsh}");

    let unknown = run(&["completions", "tcsh"], &[], dir.path());
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("bash"), "{}", stderr(&unknown));
}

/// What bash completes for `words` (the last one being completed) with the
/// script `completions bash` prints.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let words: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; \
         _ws__subprocess ws-subprocess \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.join(" "),
        words.len() - 1,
    );
    let output = Command::new("bash").args(["--norc", "-c", &line]).output().expect("bash runs");
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

#[test]
fn bash_completes_flags_subcommands_and_their_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ws-subprocess.bash");
    let output = run(&["completions", "bash"], &[], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::write(&script, &output.stdout).unwrap();
    assert_eq!(bash_completes(&script, &["ws-subprocess", "--max-se"]), ["--max-sessions", "--max-session-duration"]);
    assert_eq!(bash_completes(&script, &["ws-subprocess", "comp"]), ["completions"]);
    // After a subcommand, its own arguments (clap-rs/clap#6421 broke these).
    assert_eq!(bash_completes(&script, &["ws-subprocess", "completions", "z"]), ["zsh"]);
    assert_eq!(bash_completes(&script, &["ws-subprocess", "man", "--o"]), ["--out-dir"]);
    assert_eq!(bash_completes(&script, &["ws-subprocess", "mint-token", "--secret"]), ["--secret-file"]);
}

#[test]
fn man_page_is_roff_with_the_flags_and_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["man"], &[], dir.path());
    let page = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.starts_with(".TH"), "{page}");
    assert!(page.lines().any(|line| line.starts_with(".TH ws-subprocess 1")), "{page}");
    // roff escapes the dashes of flags.
    assert!(page.contains("max\\-sessions"), "{page}");
    assert!(page.contains("mint\\-token") && page.contains("completions"), "{page}");

    let pages = dir.path().join("man1");
    std::fs::create_dir(&pages).unwrap();
    let output = run(&["man", "--out-dir", pages.to_str().unwrap()], &[], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    for name in ["ws-subprocess.1", "ws-subprocess-config.1", "ws-subprocess-completions.1", "ws-subprocess-man.1"] {
        let page = std::fs::read_to_string(pages.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(page.contains(".TH"), "{name}:\n{page}");
    }
}
