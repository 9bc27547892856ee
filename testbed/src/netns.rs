//! Network namespaces with unique names per test run, joined by veth pairs.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run a command, returning its output; panics with the command line on failure to spawn.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"))
}

/// Run and require success.
pub fn must(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A unique short tag for this process and call, used in namespace and interface names.
pub fn unique_tag() -> String {
    format!("{}{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A network namespace, deleted on drop together with the processes started in it.
pub struct Netns {
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        must("ip", &["netns", "add", &name]);
        must("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name, children: Vec::new() }
    }

    /// `ip -n NS ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        must("ip", &a)
    }

    /// A command line run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// Start a long-running process in the namespace; it is stopped when the namespace guard drops.
    pub fn spawn(&mut self, mut cmd: Command) -> u32 {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Stop one of our processes: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, pid: u32, grace: std::time::Duration) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            stop_child(&mut c, grace);
        }
    }
}

fn stop_child(c: &mut Child, grace: std::time::Duration) {
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    let exited = crate::wait_until(grace, std::time::Duration::from_millis(20), || {
        matches!(c.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for mut c in std::mem::take(&mut self.children) {
            stop_child(&mut c, std::time::Duration::from_secs(2));
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Two hosts, `left` (10.99.1.1, fd00:99:1::1) and `right` (10.99.1.2, fd00:99:1::2), on one veth
/// link, each with protected-subnet addresses on lo (10.99.10.1 / fd00:99:10::1 and 10.99.20.1 /
/// fd00:99:20::1).
pub struct Pair {
    pub left: Netns,
    pub right: Netns,
    /// The veth end in `left` (the wire as the left gateway sees it).
    pub left_if: String,
    pub right_if: String,
}

impl Pair {
    pub fn new() -> Pair {
        Pair::with_prefix("tdm")
    }

    /// As `new`, with namespaces named `{prefix}{tag}L` and `{prefix}{tag}R` (a benchmark's own
    /// prefix tells its namespaces from the tests' in `ip netns list`).
    pub fn with_prefix(prefix: &str) -> Pair {
        let tag = unique_tag();
        let left = Netns::new(format!("{prefix}{tag}L"));
        let right = Netns::new(format!("{prefix}{tag}R"));
        let (a, b) = (format!("t{tag}a"), format!("t{tag}b"));
        must("ip", &["link", "add", &a, "type", "veth", "peer", "name", &b]);
        must("ip", &["link", "set", &a, "netns", &left.name]);
        must("ip", &["link", "set", &b, "netns", &right.name]);
        left.ip(&["addr", "add", "10.99.1.1/24", "dev", &a]);
        right.ip(&["addr", "add", "10.99.1.2/24", "dev", &b]);
        left.ip(&["link", "set", &a, "up"]);
        right.ip(&["link", "set", &b, "up"]);
        left.ip(&["addr", "add", "10.99.10.1/32", "dev", "lo"]);
        right.ip(&["addr", "add", "10.99.20.1/32", "dev", "lo"]);
        // IPv6 too (no duplicate address detection, so the addresses are usable at once).
        left.ip(&["addr", "add", "fd00:99:1::1/64", "dev", &a, "nodad"]);
        right.ip(&["addr", "add", "fd00:99:1::2/64", "dev", &b, "nodad"]);
        left.ip(&["addr", "add", "fd00:99:10::1/128", "dev", "lo"]);
        right.ip(&["addr", "add", "fd00:99:20::1/128", "dev", "lo"]);
        Pair { left, right, left_if: a, right_if: b }
    }

    /// Cut the link (the peer looks dead).
    pub fn cut(&self) {
        self.right.ip(&["link", "set", &self.right_if, "down"]);
    }

    /// Undo `cut` (the peer is back; the kernel restores the link's connected routes).
    pub fn restore(&self) {
        self.right.ip(&["link", "set", &self.right_if, "up"]);
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}
