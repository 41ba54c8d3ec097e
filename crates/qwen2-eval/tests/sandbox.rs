//! The sandbox runs generated programs to completion, and stops the ones that would not stop,
//! multiply, or reach the network.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qwen2_eval::sandbox::{run_python, Isolation, Limits, Verdict};

/// One sandboxed program at a time: a fork bomb next to a timing check on a 2-core machine
/// would make the check measure the bomb.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn limits(wall: u64) -> Limits {
    Limits {
        wall: Duration::from_secs(wall),
        cpu_seconds: wall,
        ..Limits::default()
    }
}

#[test]
fn passing_and_failing_programs() {
    let _g = serial();
    let ok = run_python(
        "def f(x):\n    return x * 2\nassert f(21) == 42\nprint('fine')\n",
        &limits(10),
    )
    .unwrap();
    assert_eq!(ok.verdict, Verdict::Passed, "{ok:?}");
    assert_eq!(ok.stdout.trim(), "fine");
    let bad = run_python("assert 1 + 1 == 3\n", &limits(10)).unwrap();
    assert!(matches!(bad.verdict, Verdict::Failed { .. }), "{bad:?}");
    assert!(bad.stderr.contains("AssertionError"), "{}", bad.stderr);
}

#[test]
fn infinite_loop_is_killed() {
    let _g = serial();
    let t0 = Instant::now();
    let o = run_python("while True:\n    pass\n", &limits(2)).unwrap();
    assert_ne!(o.verdict, Verdict::Passed, "{o:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "took {:?}",
        t0.elapsed()
    );
    // A sleeping loop uses no CPU: only the wall clock stops it.
    let t0 = Instant::now();
    let o = run_python(
        "import time\nwhile True:\n    time.sleep(0.1)\n",
        &limits(2),
    )
    .unwrap();
    assert_eq!(o.verdict, Verdict::TimedOut, "{o:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn fork_bomb_is_contained() {
    let _g = serial();
    let t0 = Instant::now();
    let o = run_python("import os\nwhile True:\n    os.fork()\n", &limits(3)).unwrap();
    assert_ne!(o.verdict, Verdict::Passed, "{o:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    // The same through `posix.fork`, which the prelude does not cover: the process limit (as
    // `nobody`) and the PID namespace must hold it. Only where those layers exist.
    if o.isolation == Isolation::Namespaces {
        let t0 = Instant::now();
        let o = run_python("import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n", &limits(3)).unwrap();
        assert_ne!(o.verdict, Verdict::Passed, "{o:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "took {:?}",
            t0.elapsed()
        );
        // Nothing of it still runs. Killed processes may take a moment to exit (zombies or
        // ones still being torn down), so poll for a few seconds before failing.
        let live_sandbox_processes = || -> Option<(usize, String)> {
            let out = std::process::Command::new("ps")
                .args(["-o", "stat=", "-u", "65534"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let live = text
                .lines()
                .filter(|s| !s.trim_start().starts_with('Z'))
                .count();
            Some((live, text))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some((live, text)) = live_sandbox_processes() {
            if live == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes of the sandbox user still run 5 s after the kill: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn network_is_unreachable() {
    let _g = serial();
    // A server on this machine's loopback, reachable by any ordinary process.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let plain = format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')\n");
    let o = run_python(&plain, &limits(10)).unwrap();
    assert!(matches!(o.verdict, Verdict::Failed { .. }), "{o:?}");
    assert!(!o.stdout.contains("CONNECTED"));
    if o.isolation == Isolation::Namespaces {
        // Past the prelude, with the raw module: the empty network namespace still refuses.
        let raw = format!(
            "import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\nprint('CONNECTED')\n"
        );
        let o = run_python(&raw, &limits(10)).unwrap();
        assert!(matches!(o.verdict, Verdict::Failed { .. }), "{o:?}");
        assert!(!o.stdout.contains("CONNECTED"));
    }
    drop(listener);
}

#[test]
fn temp_dir_is_removed() {
    let _g = serial();
    let o = run_python(
        "import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('x')\n",
        &limits(10),
    )
    .unwrap();
    assert_eq!(o.verdict, Verdict::Passed, "{o:?}");
    let dir = o.stdout.trim();
    assert!(dir.contains("qwen2-sandbox-"), "{dir}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
}
