//! Wall and CPU time of each phase of a compile (`q35c compile --timings`):
//! lowering and placement, loading the model, calibration, quantization,
//! the golden model, scheduling and code generation, encoding and writing
//! the `.lpubin`. Phases are marked in order; each lasts until the next mark.
//! CPU time is the whole process's (every thread), read from
//! `/proc/self/stat`; where that is not available it is left out.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// One finished phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// What ran (`calibrating`, `scheduling and code generation`).
    pub name: String,
    /// Wall-clock time.
    pub wall: Duration,
    /// CPU time of every thread of the process, when the OS reports it.
    pub cpu: Option<Duration>,
}

/// Phase marks of one compile, in order.
#[derive(Debug)]
pub struct Timings {
    /// Start of the current phase: its name, wall clock and CPU time.
    current: RefCell<Option<(String, Instant, Option<Duration>)>>,
    done: RefCell<Vec<Phase>>,
}

impl Default for Timings {
    fn default() -> Self {
        Self::new()
    }
}

impl Timings {
    /// No phase yet.
    pub fn new() -> Timings {
        Timings {
            current: RefCell::new(None),
            done: RefCell::new(Vec::new()),
        }
    }

    /// Ends the current phase (if any) and starts `name`.
    pub fn mark(&self, name: &str) {
        let now = (Instant::now(), process_cpu_time());
        self.finish_at(now);
        *self.current.borrow_mut() = Some((name.to_string(), now.0, now.1));
    }

    /// Ends the current phase (if any).
    pub fn finish(&self) {
        self.finish_at((Instant::now(), process_cpu_time()));
    }

    fn finish_at(&self, (wall, cpu): (Instant, Option<Duration>)) {
        if let Some((name, w0, c0)) = self.current.borrow_mut().take() {
            self.done.borrow_mut().push(Phase {
                name,
                wall: wall.saturating_duration_since(w0),
                cpu: cpu.zip(c0).map(|(c, c0)| c.saturating_sub(c0)),
            });
        }
    }

    /// The finished phases, in order.
    pub fn phases(&self) -> Vec<Phase> {
        self.done.borrow().clone()
    }

    /// The phases as a table (phase, wall seconds, CPU seconds), with a total.
    pub fn table(&self) -> String {
        let phases = self.phases();
        let width = phases
            .iter()
            .map(|p| p.name.len())
            .chain([5])
            .max()
            .unwrap_or(5);
        let secs = |d: Option<Duration>| match d {
            Some(d) => format!("{:8.2} s", d.as_secs_f64()),
            None => format!("{:>10}", "-"),
        };
        let mut s = format!("{:width$}  {:>10}  {:>10}\n", "phase", "wall", "cpu");
        let mut wall = Duration::ZERO;
        let mut cpu = Some(Duration::ZERO);
        for p in &phases {
            s += &format!(
                "{:width$}  {}  {}\n",
                p.name,
                secs(Some(p.wall)),
                secs(p.cpu)
            );
            wall += p.wall;
            cpu = cpu.zip(p.cpu).map(|(a, b)| a + b);
        }
        s += &format!("{:width$}  {}  {}\n", "total", secs(Some(wall)), secs(cpu));
        s
    }

    /// The phases as JSON: `[{"phase", "wall_seconds", "cpu_seconds"}]`
    /// (`cpu_seconds` null where the OS does not report it).
    pub fn to_json(&self) -> serde_json::Value {
        self.phases()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "phase": p.name,
                    "wall_seconds": p.wall.as_secs_f64(),
                    "cpu_seconds": p.cpu.map(|c| c.as_secs_f64()),
                })
            })
            .collect()
    }
}

/// User plus system time of every thread of this process so far, from
/// `/proc/self/stat` (fields 14 and 15, in `USER_HZ` = 100 ticks a second,
/// fixed by the Linux ABI); `None` where there is no such file.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_marks_in_order() {
        let t = Timings::new();
        t.mark("a");
        std::thread::sleep(Duration::from_millis(20));
        t.mark("b");
        t.finish();
        let p = t.phases();
        assert_eq!(
            p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(p[0].wall >= Duration::from_millis(20));
        let table = t.table();
        assert!(table.lines().next().is_some_and(|l| l.starts_with("phase")));
        assert!(table.lines().last().is_some_and(|l| l.starts_with("total")));
        assert_eq!(t.to_json().as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let Some(c0) = process_cpu_time() else {
            return; // not Linux: nothing to measure
        };
        // Busy until the counter moves (one tick is 10 ms of CPU), or 5 s.
        let t0 = Instant::now();
        let mut x = 0u64;
        let mut c1 = c0;
        while c1 == c0 && t0.elapsed() < Duration::from_secs(5) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            c1 = process_cpu_time().unwrap_or_default();
        }
        assert!(c1 > c0, "{c1:?} after {c0:?}");
    }
}
