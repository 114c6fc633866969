//! `e2e-echo`: the small test program the e2e tests run as pods. It listens on
//! `$POD_IP:7000` and answers one line per connection:
//! - `whoami` → its pod name (`$POD_NAME`);
//! - `ask HOST` → connects to `HOST:7000` (resolved like any program would) and relays the
//!   answer to `whoami`, or `error: ...`;
//! - `read PATH` → the first line of a file; `env NAME` → an environment variable;
//! - `exit CODE` → exits with that code (to test restarts).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn ask(host: &str) -> String {
    let result = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect((host, 7000))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"whoami\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim().to_string())
    })();
    result.unwrap_or_else(|e| format!("error: {e}"))
}

fn main() -> std::io::Result<()> {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".into());
    let listener = TcpListener::bind((ip.as_str(), 7000))?;
    println!("{name} listening on {ip}:7000");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let answer = match line.trim().split_once(' ') {
            Some(("ask", host)) => ask(host),
            Some(("read", path)) => std::fs::read_to_string(path)
                .map(|t| t.lines().next().unwrap_or("").to_string())
                .unwrap_or_else(|e| format!("error: {e}")),
            Some(("env", var)) => std::env::var(var).unwrap_or_else(|e| format!("error: {e}")),
            Some(("exit", code)) => {
                let _ = conn.write_all(b"bye\n");
                std::process::exit(code.parse().unwrap_or(1));
            }
            _ if line.trim() == "whoami" => name.clone(),
            _ => format!("error: unknown request {:?}", line.trim()),
        };
        let _ = conn.write_all(format!("{answer}\n").as_bytes());
    }
    Ok(())
}
