//! Progress of long operations on stderr, only when stderr is a terminal
//! (a script's logs get the final result, not a stream of redraws).

use std::io::{IsTerminal, Write};

pub struct Progress {
    live: bool,
    shown: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            live: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Replace the progress line.
    pub fn update(&mut self, message: &str) {
        if self.live {
            let mut err = std::io::stderr().lock();
            // Carriage return and erase-line: redraw in place.
            let _ = write!(err, "\r\x1b[K{message}");
            let _ = err.flush();
            self.shown = true;
        }
    }

    /// Erase the progress line, so what follows starts clean.
    pub fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
