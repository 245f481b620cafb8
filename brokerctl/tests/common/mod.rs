//! Running the real brokerctl binary from tests.

#![allow(dead_code)]

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// brokerctl with the test process' environment (moto, the test tables), as operator alice.
pub fn brokerctl(args: &[&str], stdin: Option<&str>) -> Run {
    brokerctl_with(args, stdin, &[])
}

/// brokerctl with some environment variables overridden (another endpoint, another table).
pub fn brokerctl_with(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    // BROKERCTL_BIN runs the suite against another build (e.g. an older one, to see a test fail).
    let binary = std::env::var("BROKERCTL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_brokerctl").to_string());
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("NHI_OPERATOR", "alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("brokerctl runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// brokerctl on a blocking thread, so servers in this test's runtime (a fault proxy, a rotation
/// running meanwhile) keep answering while it runs.
pub fn brokerctl_async(args: &[&str], env: &[(&str, &str)]) -> impl std::future::Future<Output = Run> + 'static {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            brokerctl_with(&args, None, &env)
        })
        .await
        .unwrap()
    }
}
