//! Showing build progress: a live view on a terminal, plain timestamped lines elsewhere.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_build::{Event, Progress, Stream};

/// Which display to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tty on a terminal, plain otherwise.
    Auto,
    /// Live view.
    Tty,
    /// Plain lines.
    Plain,
}

/// Plain lines: `#N ...` with the elapsed build time, as BuildKit's plain output.
pub struct Plain {
    start: Instant,
    explain: bool,
    out: Mutex<std::io::Stderr>,
    partial: Mutex<BTreeMap<usize, Vec<u8>>>,
}

impl Plain {
    pub fn new(explain: bool) -> Plain {
        Plain {
            start: Instant::now(),
            explain,
            out: Mutex::new(std::io::stderr()),
            partial: Mutex::new(BTreeMap::new()),
        }
    }

    fn line(&self, id: usize, text: &str) {
        let t = self.start.elapsed().as_secs_f64();
        let mut out = self.out.lock().expect("stderr");
        let _ = writeln!(out, "#{id} {t:>7.3} {text}");
    }
}

impl Progress for Plain {
    fn event(&self, e: Event) {
        match e {
            Event::Started { id, name } => self.line(id, &name),
            Event::Cached { id, name } => self.line(id, &format!("{name} CACHED")),
            Event::Reason { id, reason, .. } => {
                // Plain output always says why a step runs; --explain adds nothing here.
                let _ = self.explain;
                self.line(id, &format!("cache miss: {reason}"))
            }
            Event::Log { id, data, .. } => {
                let mut partial = self.partial.lock().expect("partial");
                let buf = partial.entry(id).or_default();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    self.line(
                        id,
                        String::from_utf8_lossy(&line[..line.len() - 1]).as_ref(),
                    );
                }
            }
            Event::Done { id, elapsed, .. } => {
                self.flush_partial(id);
                self.line(id, &format!("DONE {:.1}s", elapsed.as_secs_f64()))
            }
            Event::Failed { id, .. } => {
                self.flush_partial(id);
                self.line(id, "ERROR")
            }
        }
    }
}

impl Plain {
    fn flush_partial(&self, id: usize) {
        let rest = self.partial.lock().expect("partial").remove(&id);
        if let Some(rest) = rest
            && !rest.is_empty()
        {
            self.line(id, String::from_utf8_lossy(&rest).as_ref());
        }
    }
}

struct Step {
    name: String,
    start: Instant,
    last: String,
}

struct TtyState {
    running: BTreeMap<usize, Step>,
    drawn: usize,
    done: bool,
}

/// A live view: finished steps scroll up as permanent lines, running steps stay at the
/// bottom with their elapsed time and last output line, redrawn ten times a second.
pub struct Tty {
    state: Arc<Mutex<TtyState>>,
    start: Instant,
    explain: bool,
}

impl Tty {
    pub fn new(explain: bool) -> Tty {
        let state = Arc::new(Mutex::new(TtyState {
            running: BTreeMap::new(),
            drawn: 0,
            done: false,
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let mut st = s.lock().expect("tty");
                if st.done {
                    break;
                }
                redraw(&mut st, None);
            }
        });
        Tty {
            state,
            start: Instant::now(),
            explain,
        }
    }

    /// Stop redrawing and clear the live area.
    pub fn finish(&self) {
        let mut st = self.state.lock().expect("tty");
        st.running.clear();
        redraw(&mut st, None);
        st.done = true;
    }
}

fn redraw(st: &mut TtyState, permanent: Option<&str>) {
    let mut out = std::io::stderr().lock();
    for _ in 0..st.drawn {
        let _ = write!(out, "\x1b[1A\x1b[2K");
    }
    if let Some(p) = permanent {
        let _ = writeln!(out, "{p}");
    }
    let width = terminal_width();
    st.drawn = 0;
    for (id, s) in &st.running {
        let mut line = format!(
            " => #{id} {} {:.1}s",
            s.name,
            s.start.elapsed().as_secs_f64()
        );
        if !s.last.is_empty() {
            line.push_str(&format!("  | {}", s.last));
        }
        let line: String = line.chars().take(width.saturating_sub(1)).collect();
        let _ = writeln!(out, "\x1b[2m{line}\x1b[0m");
        st.drawn += 1;
    }
    let _ = out.flush();
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

impl Progress for Tty {
    fn event(&self, e: Event) {
        let mut st = self.state.lock().expect("tty");
        match e {
            Event::Started { id, name } => {
                st.running.insert(
                    id,
                    Step {
                        name,
                        start: Instant::now(),
                        last: String::new(),
                    },
                );
                redraw(&mut st, None);
            }
            Event::Cached { id, name } => redraw(
                &mut st,
                Some(&format!(
                    " \x1b[34m✔\x1b[0m #{id} {name} \x1b[34mCACHED\x1b[0m"
                )),
            ),
            Event::Reason { id, name, reason } => {
                if self.explain {
                    redraw(
                        &mut st,
                        Some(&format!("   #{id} {name}: runs because {reason}")),
                    );
                }
            }
            Event::Log { id, data, stream } => {
                if let Some(s) = st.running.get_mut(&id) {
                    let text = String::from_utf8_lossy(&data);
                    if let Some(l) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                        s.last = l.trim().to_string();
                    }
                    let _ = stream == Stream::Stderr;
                }
            }
            Event::Done { id, name, elapsed } => {
                st.running.remove(&id);
                let line = format!(
                    " \x1b[32m✔\x1b[0m #{id} {name} {:.1}s",
                    elapsed.as_secs_f64()
                );
                redraw(&mut st, Some(&line));
            }
            Event::Failed { id, name } => {
                st.running.remove(&id);
                redraw(&mut st, Some(&format!(" \x1b[31m✘\x1b[0m #{id} {name}")));
            }
        }
        let _ = self.start;
    }
}
