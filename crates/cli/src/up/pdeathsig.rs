//! The one `unsafe` of the `trellis` binary: asking the kernel to SIGKILL
//! a child when `trellis up` dies, even by SIGKILL, so that no process of
//! the mesh outlives it. `prctl(PR_SET_PDEATHSIG)` must run in the child
//! between fork and exec, and the only hook std and tokio give for that,
//! `pre_exec`, is `unsafe`: no safe crate can do this for us (rustix's
//! `set_parent_process_death_signal` is safe to call, but only the child may
//! call it, and only from that hook).
#![allow(unsafe_code)]

use rustix::process::{Signal, getppid, set_parent_process_death_signal};

/// Make the child spawned by `cmd` receive SIGKILL when the thread that
/// spawns it exits (the kernel ties the signal to the forking thread: spawn
/// from a thread that lives as long as `trellis up`, its main thread).
pub fn kill_with_parent(cmd: &mut tokio::process::Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child after fork, before exec, where
    // only async-signal-safe operations are allowed. It allocates nothing,
    // takes no lock and touches no shared state: two raw syscalls through
    // rustix (prctl and getppid, which rustix issues directly, without libc
    // wrappers that could lock) and building an io::Error from a constant
    // kind, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died between fork and prctl: the signal
            // would then never come, so do not run orphaned.
            if getppid() != Some(parent) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            Ok(())
        });
    }
}
