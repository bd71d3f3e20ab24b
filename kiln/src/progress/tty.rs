//! The terminal view (`--progress=tty`), drawn as BuildKit draws it: a
//! header with the build's time and steps, one line per step with its time
//! at the right edge, and under each running step a window of its last
//! lines of output. Every line is cut to the terminal's width, so nothing
//! wraps; a carriage return inside a line (a tool redrawing its percentage)
//! rewrites the line; a finished step collapses to its one line. While the
//! view fits the screen it is redrawn in place; when it does not, the
//! oldest finished steps are printed above it for good, and windows shrink.
//! `--progress=plain` keeps every line of output.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_builder::progress::{human_size, StepEnd, StepId};

/// Lines of output shown under a running step, at most.
const WINDOW_LINES: usize = 6;
/// How often times are brought up to date and output drawn.
const REFRESH: Duration = Duration::from_millis(100);

/// The live view of one build on standard error.
pub struct TtyView {
    screen: Arc<Mutex<Screen>>,
    stop: Arc<AtomicBool>,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

/// What the view shows and what it has drawn.
struct Screen {
    started: Instant,
    /// Steps not yet printed for good, in the order they started.
    steps: Vec<Step>,
    /// Lines to print above the view for good: notes, warnings, the
    /// oldest finished steps.
    above: Vec<String>,
    /// What failed steps printed last, shown after the view at the end.
    failures: Vec<String>,
    started_steps: usize,
    finished_steps: usize,
    /// Rows of the view now on the screen, below which the cursor sits.
    drawn_rows: usize,
    finished: bool,
}

struct Step {
    id: StepId,
    name: String,
    started: Instant,
    state: State,
    bytes: u64,
    window: VecDeque<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// A note of the build (`naming to ...`), shown in its place.
    Note,
    Running,
    Cached,
    Done(Duration),
    Failed(Duration),
    /// Stopped, and the build went on without it.
    Canceled(Duration),
}

impl TtyView {
    pub fn new() -> TtyView {
        let screen = Arc::new(Mutex::new(Screen::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = {
            let screen = screen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(REFRESH);
                    let text = lock(&screen).render(terminal_size());
                    write_stderr(&text);
                }
            })
        };
        TtyView {
            screen,
            stop,
            refresher: Mutex::new(Some(refresher)),
        }
    }

    /// Draws the view a last time, every step collapsed, and stops
    /// refreshing it: what kiln prints next goes below it.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(refresher) = lock(&self.refresher).take() {
            let _ = refresher.join();
        }
        let mut screen = lock(&self.screen);
        if screen.finished {
            return;
        }
        screen.finished = true;
        let mut text = screen.render(terminal_size());
        for failure in screen.failures.drain(..) {
            text.push_str(&failure);
            text.push('\n');
        }
        write_stderr(&text);
    }

    pub fn print_above(&self, line: String) {
        lock(&self.screen).above.push(line);
    }

    /// A line of its own in the view, among the steps.
    pub fn note(&self, text: &str) {
        let mut screen = lock(&self.screen);
        screen.steps.push(Step {
            id: 0,
            name: text.to_string(),
            started: Instant::now(),
            state: State::Note,
            bytes: 0,
            window: VecDeque::new(),
        });
    }

    pub fn started(&self, id: StepId, name: &str) {
        let mut screen = lock(&self.screen);
        screen.started_steps += 1;
        screen.steps.push(Step {
            id,
            name: name.to_string(),
            started: Instant::now(),
            state: State::Running,
            bytes: 0,
            window: VecDeque::with_capacity(WINDOW_LINES),
        });
    }

    pub fn log(&self, id: StepId, text: &str) {
        let line = last_rewrite(text);
        if let Some(step) = lock(&self.screen).step(id) {
            if step.window.len() == WINDOW_LINES {
                step.window.pop_front();
            }
            step.window.push_back(line);
        }
    }

    pub fn bytes(&self, id: StepId, total: u64) {
        if let Some(step) = lock(&self.screen).step(id) {
            step.bytes = total;
        }
    }

    pub fn ended(&self, id: StepId, end: StepEnd<'_>) {
        let mut screen = lock(&self.screen);
        let Some(step) = screen.step(id) else {
            return;
        };
        let elapsed = step.started.elapsed();
        step.window.clear();
        step.state = match end {
            StepEnd::Cached => State::Cached,
            StepEnd::Done { .. } => State::Done(elapsed),
            StepEnd::Failed { .. } => State::Failed(elapsed),
            StepEnd::Canceled => State::Canceled(elapsed),
        };
        if let StepEnd::Failed { message, tail } = end {
            // As BuildKit: the failed step's last lines after the view.
            let mut block = format!("------\n > {}:", step.name);
            for line in tail {
                block.push_str(&format!("\n{}", last_rewrite(line)));
            }
            block.push_str(&format!("\n------\nERROR: {message}"));
            screen.failures.push(block);
        }
        screen.finished_steps += 1;
    }
}

fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rows and columns of standard error's terminal.
fn terminal_size() -> (usize, usize) {
    let (rows, columns) = console::Term::stderr().size();
    (usize::from(rows.max(2)), usize::from(columns.max(20)))
}

/// What a terminal would show of an output line: the text after its last
/// carriage return, without colours, with tabs as spaces and no other
/// control characters.
fn last_rewrite(text: &str) -> String {
    let shown = text
        .rsplit('\r')
        .find(|part| !part.is_empty())
        .unwrap_or_default();
    console::strip_ansi_codes(shown)
        .chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// `text` cut to `columns` terminal cells.
fn cut(text: &str, columns: usize) -> String {
    console::truncate_str(text, columns, "").into_owned()
}

/// `text` and `right` on one line of `columns` cells, `right` against the
/// right edge and `text` cut to leave it room.
fn with_right(text: &str, right: &str, columns: usize) -> String {
    let room = columns.saturating_sub(console::measure_text_width(right) + 1);
    let text = cut(text, room);
    let padding = room.saturating_sub(console::measure_text_width(&text));
    format!("{text}{} {right}", " ".repeat(padding))
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

impl Screen {
    fn new() -> Screen {
        Screen {
            started: Instant::now(),
            steps: Vec::new(),
            above: Vec::new(),
            failures: Vec::new(),
            started_steps: 0,
            finished_steps: 0,
            drawn_rows: 0,
            finished: false,
        }
    }

    fn step(&mut self, id: StepId) -> Option<&mut Step> {
        self.steps
            .iter_mut()
            .find(|step| step.id == id && step.state != State::Note)
    }

    /// Rows the view needs with windows of `window` lines.
    fn rows(&self, window: usize) -> usize {
        1 + self
            .steps
            .iter()
            .map(|step| 1 + step.window.len().min(window))
            .sum::<usize>()
    }

    /// What redraws the view in place, after printing what goes above it.
    fn render(&mut self, (rows, columns): (usize, usize)) -> String {
        if self.steps.is_empty() && self.above.is_empty() && self.drawn_rows == 0 {
            return String::new();
        }
        // A row stays free for the cursor, so that the view never scrolls
        // its own top off the screen.
        let room = rows - 1;
        while self.rows(WINDOW_LINES) > room {
            let Some(oldest) = self.steps.iter().position(|s| s.state != State::Running) else {
                break;
            };
            let step = self.steps.remove(oldest);
            let line = step.line(columns, self.finished);
            self.above.push(line);
        }
        let window = (0..=WINDOW_LINES)
            .rev()
            .find(|&window| self.rows(window) <= room)
            .unwrap_or(0);

        let mut text = String::new();
        if self.drawn_rows > 0 {
            text.push_str(&format!("\x1b[{}F", self.drawn_rows));
        } else {
            text.push('\r');
        }
        text.push_str("\x1b[J");
        for line in self.above.drain(..) {
            text.push_str(&cut(&line, columns));
            text.push('\n');
        }
        let mut view = vec![self.header(columns)];
        for step in &self.steps {
            view.push(step.line(columns, self.finished));
            let skip = step.window.len().saturating_sub(window);
            for line in step.window.iter().skip(skip) {
                view.push(cut(&format!(" => => # {line}"), columns));
            }
        }
        // Still too tall (more running steps than rows): the newest show.
        let first = view.len().saturating_sub(room.max(1));
        for line in &view[first..] {
            text.push_str(line);
            text.push('\n');
        }
        self.drawn_rows = view.len() - first;
        text
    }

    fn header(&self, columns: usize) -> String {
        let mut header = format!(
            "[+] Building {} ({}/{})",
            seconds(self.started.elapsed()),
            self.finished_steps,
            self.started_steps
        );
        if self.finished {
            header.push_str(" FINISHED");
        }
        cut(&header, columns)
    }
}

impl Step {
    /// ` => CACHED [base 1/3] FROM busybox    0.0s`, the time at the right.
    fn line(&self, columns: usize, build_over: bool) -> String {
        let (label, time) = match self.state {
            State::Note => return cut(&format!(" => => {}", self.name), columns),
            State::Running if build_over => ("CANCELED ", self.started.elapsed()),
            State::Running => ("", self.started.elapsed()),
            State::Cached => ("CACHED ", Duration::ZERO),
            State::Done(time) => ("", time),
            State::Failed(time) => ("ERROR ", time),
            State::Canceled(time) => ("CANCELED ", time),
        };
        let mut right = seconds(time);
        if self.bytes > 0 {
            right = format!("{} {right}", human_size(self.bytes));
        }
        with_right(&format!(" => {label}{}", self.name), &right, columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carriage_return_rewrites_the_line() {
        assert_eq!(
            last_rewrite("(Reading database ... 5%\r(Reading database ... 45%"),
            "(Reading database ... 45%"
        );
        assert_eq!(last_rewrite("done\r"), "done");
        assert_eq!(
            last_rewrite("\x1b[31mred\x1b[0m\tand plain"),
            "red and plain"
        );
    }

    #[test]
    fn lines_are_cut_to_the_width_with_the_time_at_the_edge() {
        let line = with_right(&format!(" => {}", "x".repeat(100)), "1.5s", 40);
        assert_eq!(console::measure_text_width(&line), 40);
        assert!(line.ends_with(" 1.5s"));
        let short = with_right(" => RUN true", "0.0s", 20);
        assert_eq!(short, " => RUN true    0.0s");
        assert_eq!(cut("héllo wörld", 5), "héllo");
    }

    #[test]
    fn finished_steps_leave_the_view_first_when_it_does_not_fit() {
        let mut screen = Screen::new();
        for id in 1..=4 {
            screen.steps.push(Step {
                id,
                name: format!("step {id}"),
                started: Instant::now(),
                state: if id < 4 {
                    State::Cached
                } else {
                    State::Running
                },
                bytes: 0,
                window: if id < 4 {
                    VecDeque::new()
                } else {
                    (0..WINDOW_LINES).map(|n| format!("line {n}")).collect()
                },
            });
        }
        // Header, four steps and six lines need 11 rows; 8 leave 7.
        let text = screen.render((8, 80));
        assert_eq!(screen.drawn_rows, 7);
        assert!(text.contains("step 1"), "printed above for good:\n{text}");
        assert!(text.contains(" => => # line 5"), "{text}");
        let running = screen.steps.iter().filter(|s| s.state == State::Running);
        assert_eq!(running.count(), 1, "the running step stays in view");
        assert!(screen.steps.len() < 4, "a finished step was printed above");
    }
}
