//! Child processes a test starts: killed when their guard drops (a failing test included),
//! and their output drained so they never block on a full pipe.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed (with its process group when it leads one) on drop.
pub struct Guard {
    child: Child,
    group: bool,
}

impl Guard {
    /// Guards `child`; with `group`, the whole process group it leads is killed too (start it
    /// with `process_group(0)`).
    pub fn new(child: Child, group: bool) -> Self {
        Self { child, group }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.group {
            // Chromium and its helpers are in chromedriver's group; `kill -- -PGID` ends them all.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` with its stdout and stderr piped and waits (at most `wait`) until a line of
/// either contains `needle`; returns the guard and everything printed up to that line (the
/// line last). The output keeps being drained,
/// and echoed as `[name] …` when `TEST_LOG` is set. Panics with everything the process printed
/// if it exits or stays silent instead.
pub async fn spawn_until(
    name: &str,
    command: &mut Command,
    needle: &str,
    wait: Duration,
) -> (Guard, String) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
    let outputs: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("stdout piped")),
        Box::new(child.stderr.take().expect("stderr piped")),
    ];
    let guard = Guard::new(child, false);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    for output in outputs {
        let tx = tx.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            let echo = std::env::var_os("TEST_LOG").is_some();
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{name}] {line}");
                }
                let _ = tx.send(Some(line));
            }
            let _ = tx.send(None);
        });
    }
    drop(tx);
    let mut seen = String::new();
    let mut closed = 0;
    let found = tokio::time::timeout(wait, async {
        while let Some(line) = rx.recv().await {
            match line {
                Some(line) if line.contains(needle) => {
                    seen.push_str(&line);
                    return Some(());
                }
                Some(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                None => {
                    closed += 1;
                    if closed == 2 {
                        return None;
                    }
                }
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(())) => (guard, seen),
        Ok(None) => panic!("{name} exited before printing {needle:?}:\n{seen}"),
        Err(_) => panic!("{name} printed no {needle:?} within {wait:?}:\n{seen}"),
    }
}
