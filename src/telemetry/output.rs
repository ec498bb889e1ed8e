//! Where log lines go: a bounded in-memory buffer that one writer thread empties into stdout.
//!
//! A request never waits for the terminal, the journal or a slow pipe, and it does not wake a
//! thread per line either: the writer sleeps until the first line of a batch arrives, lets lines
//! gather for [`GATHER`], then writes them with one write(2). tracing-appender's non-blocking
//! writer, used before, woke its thread through a channel for every line; at the default `info`
//! level that wake-up cost each proxied request more CPU than the rest of its access line
//! (issue 19). Memory stays bounded by [`LIMIT`]: beyond it lines are dropped and counted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes waiting for the writer at most. At ~300 bytes a line this holds some 55,000 lines: a
/// burst of that many requests while stdout is stalled loses nothing.
const LIMIT: usize = 16 * 1024 * 1024;
/// How long the writer lets a batch gather after its first line: the most a line waits for an
/// idle process to print it.
const GATHER: Duration = Duration::from_millis(20);

pub struct Output {
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The writer waits on `wake`: the next line must wake it (only then, a futex call).
    asleep: bool,
    closed: bool,
}

impl Output {
    /// Starts the writer thread; lines written to the returned output reach `sink` in order.
    pub fn start(sink: impl Write + Send + 'static) -> &'static Output {
        let out: &'static Output = Box::leak(Box::new(Output {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            thread: Mutex::new(None),
        }));
        let thread = std::thread::Builder::new()
            .name("shoptet-proxy-log".into())
            .spawn(move || out.run(sink));
        match thread {
            Ok(handle) => *lock(&out.thread) = Some(handle),
            // No thread, no output: lines are counted as dropped rather than blocking anyone.
            Err(_) => lock(&out.state).closed = true,
        }
        out
    }

    /// Queues one or more whole lines; drops (and counts) them when the buffer is full or the
    /// output closed.
    pub fn write_lines(&self, lines: &[u8]) {
        let mut st = lock(&self.state);
        if st.closed || st.pending.len() + lines.len() > LIMIT {
            drop(st);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        st.pending.extend_from_slice(lines);
        let wake = std::mem::replace(&mut st.asleep, false);
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes out what is buffered and stops the writer; later lines are dropped.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_one();
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
    }

    fn run(&self, mut sink: impl Write) {
        let mut batch = Vec::new();
        loop {
            let mut st = lock(&self.state);
            while st.pending.is_empty() && !st.closed {
                st.asleep = true;
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.asleep = false;
            let closed = st.closed;
            drop(st);
            if !closed {
                std::thread::sleep(GATHER);
            }
            std::mem::swap(&mut lock(&self.state).pending, &mut batch);
            // Nowhere to report a failed write to: the lines are lost, the process goes on.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            batch.clear();
            if closed && lock(&self.state).pending.is_empty() {
                return;
            }
        }
    }
}

/// A handle tracing-subscriber's formatter writes one formatted event into.
pub struct Writer(pub &'static Output);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_lines(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain bytes and flags: a panic while holding the lock leaves nothing half-done that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_close_writes_what_is_buffered() {
        let sink = Shared::default();
        let out = Output::start(sink.clone());
        for i in 0..1000 {
            out.write_lines(format!("line {i}\n").as_bytes());
        }
        out.close();
        let text = String::from_utf8(lock(&sink.0).clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")));
        out.write_lines(b"after close\n");
        assert_eq!(
            out.dropped(),
            1,
            "a line after close is dropped and counted"
        );
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_growing() {
        /// A sink that never returns, as a stalled pipe.
        struct Stalled(Arc<std::sync::Barrier>);
        impl Write for Stalled {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                self.0.wait();
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Output::start(Stalled(Arc::new(std::sync::Barrier::new(2))));
        let line = vec![b'x'; 1024 * 1024];
        // The writer takes at most one batch away; everything past LIMIT behind it is dropped.
        for _ in 0..(2 * LIMIT / line.len() + 8) {
            out.write_lines(&line);
        }
        assert!(out.dropped() >= 8, "dropped {}", out.dropped());
        assert!(lock(&out.state).pending.len() <= LIMIT);
    }
}
