//! kiln in a real terminal: tmux runs it in a pane of a known size, and
//! the tests read the screen back with `capture-pane`, as a user would
//! see it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{kiln_binary, require_tool, Context, Kiln};

/// A tmux server of its own (its own socket), killed with the value.
struct Terminal {
    socket: tempfile::TempDir,
}

impl Terminal {
    /// Starts `command` (a shell command line) in a `columns`×`rows` pane.
    fn start(command: &str, columns: u16, rows: u16) -> Terminal {
        require_tool("tmux", "tmux");
        let terminal = Terminal {
            socket: tempfile::tempdir().expect("socket directory"),
        };
        let columns = columns.to_string();
        let rows = rows.to_string();
        terminal.tmux(&[
            "new-session",
            "-d",
            "-s",
            "kiln",
            "-x",
            &columns,
            "-y",
            &rows,
            command,
        ]);
        terminal
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.socket.path().join("tmux"))
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The pane's rows as they are on the screen now.
    fn screen(&self) -> Vec<String> {
        self.tmux(&["capture-pane", "-p", "-t", "kiln"])
            .lines()
            .map(|row| row.trim_end().to_string())
            .collect()
    }

    /// The screen once `seen` holds for it; fails after a minute.
    fn wait_for(&self, what: &str, seen: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if seen(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {what}:\n{}",
                screen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "kiln", "-l", text]);
        self.tmux(&["send-keys", "-t", "kiln", "Enter"]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.socket.path().join("tmux"))
            .arg("kill-server")
            .status();
    }
}

/// A shell command line running kiln on `kiln`'s store in `dir`, then
/// showing its exit status and waiting, so that the pane stays readable.
fn shell_line(kiln: &Kiln, dir: &Path, args: &str) -> String {
    format!(
        "cd '{}' && KILN_ROOT='{}' '{}' {args}; echo \"kiln exited $?\"; sleep 600",
        dir.display(),
        kiln.root.path().display(),
        kiln_binary().display()
    )
}

const LONG_STEP: &str = "RUN echo this step has a name far too long for one line of a terminal \
     eighty columns wide, which used to wrap over three lines";

#[test]
fn the_terminal_view_keeps_a_window_of_each_running_step_and_collapses_it_when_done() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             RUN for i in $(seq 1 40); do echo \"output line $i\"; done; \
             printf '(Reading database ... 5%%\\r(Reading database ... 45%%\\r'; \
             printf '(Reading database ... 100%%\\n'; sleep 4\n\
             {LONG_STEP}\n"
        ),
    );
    let terminal = Terminal::start(
        &shell_line(&kiln, context.path(), "build --progress=tty ."),
        80,
        24,
    );

    let running = terminal.wait_for("the running step's last lines", |screen| {
        screen.iter().any(|row| row.contains("Reading database"))
    });
    let shown = running.join("\n");
    assert!(running[0].starts_with("[+] Building"), "{shown}");
    let window: Vec<&String> = running
        .iter()
        .filter(|row| row.starts_with(" => => # "))
        .collect();
    assert_eq!(window.len(), 6, "a window of six lines:\n{shown}");
    assert_eq!(window[0].as_str(), " => => # output line 36", "{shown}");
    assert_eq!(
        window[5].as_str(),
        " => => # (Reading database ... 100%",
        "a carriage return rewrites the line:\n{shown}"
    );
    assert!(!shown.contains("output line 35"), "{shown}");

    let done = terminal.wait_for("the end of the build", |screen| {
        screen.iter().any(|row| row.starts_with("kiln exited"))
    });
    let shown = done.join("\n");
    assert!(shown.contains("kiln exited 0"), "{shown}");
    assert!(done[0].starts_with("[+] Building"), "{shown}");
    assert!(done[0].ends_with("(4/4) FINISHED"), "{shown}");
    assert!(
        !done.iter().any(|row| row.starts_with(" => => #")),
        "finished steps collapse:\n{shown}"
    );
    let long: Vec<&String> = done
        .iter()
        .filter(|row| row.contains("far too long"))
        .collect();
    assert_eq!(long.len(), 1, "the long step name takes one row:\n{shown}");
    assert_eq!(long[0].chars().count(), 80, "cut to the width:\n{shown}");
    assert!(
        long[0].ends_with('s'),
        "its time at the right edge:\n{shown}"
    );
    assert!(
        !shown.contains("which used to wrap"),
        "the cut-off end of the name never shows:\n{shown}"
    );
    let steps = done.iter().filter(|row| row.starts_with(" => [stage-0"));
    assert_eq!(steps.count(), 2, "each RUN step on one row:\n{shown}");
}

#[test]
fn run_with_a_terminal_gives_an_interactive_shell() {
    let kiln = Kiln::with_busybox();
    let dir = tempfile::tempdir().expect("directory");
    let terminal = Terminal::start(&shell_line(&kiln, dir.path(), "run -it busybox sh"), 80, 24);
    terminal.type_line("tty; echo answer-$((6 * 7))");
    let screen = terminal.wait_for("the shell's answer", |screen| {
        screen.iter().any(|row| row == "answer-42")
    });
    assert!(
        screen.iter().any(|row| row.starts_with("/dev/pts/")),
        "the shell's input is a terminal:\n{}",
        screen.join("\n")
    );
    terminal.tmux(&["resize-window", "-t", "kiln", "-x", "100", "-y", "30"]);
    // The new size travels as signals (to kiln, then to the runtime): ask
    // until it has arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        terminal.type_line("stty size");
        std::thread::sleep(Duration::from_millis(500));
        let screen = terminal.screen();
        if screen.iter().any(|row| row == "30 100") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container's terminal never took the new size:\n{}",
            screen.join("\n")
        );
    }
    terminal.type_line("exit 3");
    terminal.wait_for("the shell's exit status", |screen| {
        screen.iter().any(|row| row == "kiln exited 3")
    });
}

#[test]
fn run_reads_standard_input_only_with_interactive() {
    let kiln = Kiln::with_busybox();
    let with_input = |args: &[&str]| {
        let output = kiln.run_with_input(
            &std::env::temp_dir(),
            args,
            b"echo read from standard input\n",
        );
        assert!(output.status.success(), "kiln {args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(
        with_input(&["run", "-i", "busybox", "sh"]),
        "read from standard input\n"
    );
    assert_eq!(with_input(&["run", "busybox", "sh"]), "");

    // Standard input is not a terminal here.
    let refused = kiln.run(&["run", "-it", "busybox", "sh"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(125), "{message}");
    assert!(
        message.contains("the input device is not a terminal"),
        "{message}"
    );
}
