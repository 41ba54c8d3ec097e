//! Running untrusted generated Python (HumanEval, MBPP) in a separate process, in layers, each
//! used where the system allows it:
//!
//! 1. `unshare --net --pid --fork --kill-child` (util-linux; needs root or user namespaces):
//!    a network namespace with no interfaces (not even loopback is up), so no connection can
//!    be made by any means; and a PID namespace whose init is killed with `unshare`, so
//!    killing it on timeout takes every process the program forked with it.
//! 2. `setpriv` to uid/gid `nobody` when running as root: `RLIMIT_NPROC` is not enforced for
//!    root, so this is what makes the process limit (fork bombs) bite.
//! 3. `ulimit` in the launching shell: CPU seconds, address space, file size, processes.
//! 4. A Python prelude (after human-eval's `reliability_guard`) that removes `os.fork`,
//!    `os.system`, `subprocess`, `os.kill`, file removal and sockets. Not a security boundary
//!    by itself (`import posix` undoes it), it is the only network block when namespaces are
//!    unavailable.
//! 5. A wall-clock timeout that kills the whole process group; the temporary folder is
//!    removed afterwards.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{io, Error, Result};

#[derive(Debug, Clone)]
pub struct Limits {
    pub wall: Duration,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub max_processes: u64,
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            max_processes: 16,
            max_file_bytes: 16 << 20,
        }
    }
}

/// How the network was kept away from the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Network and PID namespaces (and uid `nobody` when we are root).
    Namespaces,
    /// Only the Python prelude and rlimits.
    PreludeOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Exited with a non-zero status or by a signal (a failed assertion, an error, a limit).
    Failed {
        code: Option<i32>,
    },
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    pub isolation: Isolation,
    /// The end of stdout and stderr (at most 4 KiB each).
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

const PRELUDE: &str = r#"
import builtins, os, sys, shutil, subprocess, socket, faulthandler
faulthandler.disable()
def _blocked(*a, **k):
    raise OSError("network access is disabled in the sandbox")
for _n in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, _n, _blocked)
os.environ["OMP_NUM_THREADS"] = "1"
for _n in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
           "fork", "forkpty", "unlink", "fchmod", "fchown", "chmod", "chown", "chroot", "lchown",
           "truncate", "replace", "rename", "renames", "execv", "execve", "execvp", "spawnv", "popen"):
    if hasattr(os, _n):
        setattr(os, _n, None)
shutil.rmtree = None
shutil.move = None
shutil.chown = None
subprocess.Popen = None
builtins.help = None
del builtins, shutil, subprocess, socket, faulthandler, _n, _blocked
__program = open("program.py").read()
exec(compile(__program, "program.py", "exec"), {"__name__": "__main__"})
"#;

fn namespaces_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args(["--net", "--pid", "--fork", "--kill-child", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

fn setpriv_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_root()
            && Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--",
                    "true",
                ])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
}

fn kill_group_and_wait(pgid: u32, max: Duration) {
    let t0 = Instant::now();
    loop {
        if live_in_group(pgid) == 0 || t0.elapsed() >= max {
            return;
        }
        kill_group(pgid);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL to every process of the group, by system call: spawning `kill` under a fork
/// bomb can take many seconds.
fn kill_group(pgid: u32) {
    if let Ok(p) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Processes of group `pgid` that still run (zombies, already dead, are not counted), from
/// `/proc/<pid>/stat`: "pid (comm) state ppid pgrp ...".
fn live_in_group(pgid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2] == pgid.to_string()
        })
        .count()
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> Result<TempDir> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "qwen2-sandbox-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).map_err(io(&p))?;
    Ok(TempDir(p))
}

fn tail(path: &Path) -> String {
    let b = std::fs::read(path).unwrap_or_default();
    let start = b.len().saturating_sub(4096);
    String::from_utf8_lossy(&b[start..]).into_owned()
}

fn python() -> String {
    std::env::var("QWEN2_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Run `program` (Python source) under `limits`; passing means exiting with status 0.
pub fn run_python(program: &str, limits: &Limits) -> Result<Outcome> {
    let dir = temp_dir()?;
    let d = &dir.0;
    std::fs::write(d.join("program.py"), program).map_err(io(d.join("program.py")))?;
    std::fs::write(d.join("prelude.py"), PRELUDE).map_err(io(d.join("prelude.py")))?;
    let isolation = if namespaces_available() {
        Isolation::Namespaces
    } else {
        Isolation::PreludeOnly
    };
    let drop_root = setpriv_available();
    if drop_root {
        // The program runs as `nobody` and may write its own scratch files here.
        let _ = Command::new("chmod").arg("777").arg(d).status();
    }
    let script = format!(
        "ulimit -t {cpu}; ulimit -v {mem}; ulimit -f {fsize}; ulimit -u {nproc} 2>/dev/null; exec \"$0\" -I -B prelude.py",
        cpu = limits.cpu_seconds,
        mem = limits.memory_bytes / 1024,
        fsize = limits.max_file_bytes / 512,
        nproc = limits.max_processes,
    );
    let mut argv: Vec<String> = Vec::new();
    if isolation == Isolation::Namespaces {
        argv.extend(
            ["unshare", "--net", "--pid", "--fork", "--kill-child", "--"].map(String::from),
        );
    }
    if drop_root {
        argv.extend(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ]
            .map(String::from),
        );
    }
    argv.extend(["sh".to_string(), "-c".to_string(), script, python()]);
    let out = File::create(d.join("stdout")).map_err(io(d.join("stdout")))?;
    let err = File::create(d.join("stderr")).map_err(io(d.join("stderr")))?;
    let t0 = Instant::now();
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(d)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", d)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Sandbox(format!("starting {}: {e}", argv[0])))?
    };
    let pgid = child.id();
    let verdict = loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                break if st.success() {
                    Verdict::Passed
                } else {
                    Verdict::Failed { code: st.code() }
                };
            }
            Ok(None) if t0.elapsed() >= limits.wall => {
                // The whole group: `unshare` (whose death kills the PID namespace) or, without
                // namespaces, the interpreter and whatever it forked.
                kill_group(pgid);
                let _ = child.kill();
                let _ = child.wait();
                break Verdict::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Error::Sandbox(format!("waiting for the program: {e}"))),
        }
    };
    // Children may outlive the interpreter (without a PID namespace), and a killed
    // namespace's processes exit asynchronously: end the group and wait until it is gone, so
    // nothing of the program runs once this returns.
    kill_group_and_wait(pgid, Duration::from_secs(3));
    Ok(Outcome {
        verdict,
        isolation,
        stdout: tail(&d.join("stdout")),
        stderr: tail(&d.join("stderr")),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
