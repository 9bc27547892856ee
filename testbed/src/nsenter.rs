//! Sockets in a test namespace, opened from the test process itself: a short-lived thread enters
//! the namespace (`setns(2)` on `/run/netns/NAME`, which moves only the calling thread), creates
//! what it is asked to, and ends. A socket keeps the namespace it was created in, so the caller
//! can use it from any thread afterwards; no process is started and nothing outlives the socket.

use std::os::fd::AsRawFd;

/// Run `f` on a thread inside the network namespace `ns` (a name from `ip netns add`) and return
/// its result. Panics if the namespace cannot be entered (a test error, never a skip).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace file descriptor; it changes this thread's network
            // namespace only (CLONE_NEWNET), and this thread ends right after `f`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Spawn a named thread that enters the network namespace `ns` first, then runs `f` there
/// (sockets it creates are the namespace's). For long-running peers of a test (a TCP client).
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: as in `in_netns`; this thread stays in the namespace until it ends.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            drop(file);
            f()
        })
        .expect("spawn a thread")
}
