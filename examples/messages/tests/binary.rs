//! The `retrace-messages` binary as a user runs it: it prints the address it
//! serves, and an unusable database is one line on stderr and exit status 2.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, ensure};

const BINARY: &str = env!("CARGO_BIN_EXE_retrace-messages");

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_serves_the_page_on_the_address_it_prints() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--sleep-ms", "100"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut running = Running(child);
    let stdout = running.0.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("retrace-messages listening on ")
        .with_context(|| format!("the first line names the address: {line:?}"))?;
    let page = get(url)?;
    ensure!(page.contains("Order of messages"), "{page}");
    ensure!(
        dir.path().join("messages.db").exists(),
        "the default message database"
    );
    ensure!(
        dir.path().join("retrace-messages.db").exists(),
        "the default engine database"
    );
    Ok(())
}

#[test]
fn the_binary_reports_an_unusable_database_on_one_line_and_exits_2() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "shopping list: eggs, milk\n".repeat(200))?;
    let output = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--messages-db"])
        .arg(&path)
        .current_dir(dir.path())
        .output()?;
    ensure!(output.status.code() == Some(2), "{:?}", output.status);
    let stderr = String::from_utf8(output.stderr)?;
    let last = stderr.lines().last().context("an error line")?;
    ensure!(
        last.starts_with("retrace-messages: message database "),
        "{stderr}"
    );
    ensure!(last.contains(&path.display().to_string()), "{stderr}");
    ensure!(last.contains("not a SQLite database"), "{stderr}");
    ensure!(output.stdout.is_empty(), "nothing served");
    Ok(())
}

/// `GET /` over a plain socket, so these tests need no async runtime.
fn get(url: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let address = url.strip_prefix("http://").unwrap_or(url);
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    Ok(response)
}
