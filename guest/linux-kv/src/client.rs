//! `ftguest-linux-kv --client ADDR`: a load generator for the KV service, for the checkpoint
//! benchmark (qemu-tests `linux_vm` `checkpoint_bench`), which runs it in the nested-KVM host
//! against the guest: `conns` connections, each sending one `PUT` and waiting for its `OK`
//! before the next (a PUT is answered once durable, so this measures a write's round trip),
//! for `seconds`. Prints one line:
//! `kv-client: conns=C seconds=S ops=N ops_per_s=X p50_ms=Y p99_ms=Z max_ms=M errors=E`.
//! A connection that fails counts one error and ends; the rest go on.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The longest a reply may take before the connection counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Latencies in microseconds of every answered PUT of one connection, and whether it failed.
fn connection(addr: SocketAddr, c: usize, until: Instant) -> (Vec<u64>, Option<String>) {
    let mut lat = Vec::new();
    // Refused or unreachable: tried again until the run's end (the guest may still be coming up).
    let stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return (lat, Some(format!("connect {addr}: {e}"))),
        }
    };
    let mut run = || -> Result<(), String> {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut w = stream.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut line = String::new();
        let mut i = 0u64;
        while Instant::now() < until {
            i += 1;
            let t = Instant::now();
            w.write_all(format!("PUT c{c}-{} v{i}\n", i % 1024).as_bytes())
                .map_err(|e| format!("send: {e}"))?;
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| format!("reply to PUT {i}: {e}"))?;
            if line.trim_end() != "OK" {
                return Err(format!("PUT {i} answered {:?}", line.trim_end()));
            }
            lat.push(t.elapsed().as_micros() as u64);
        }
        Ok(())
    };
    let err = run().err();
    (lat, err)
}

/// Runs the load and prints its line (module docs).
pub fn run(addr: SocketAddr, conns: usize, seconds: u64) -> Result<(), String> {
    if conns == 0 || seconds == 0 {
        return Err("--conns and --seconds must be at least 1".into());
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..conns)
        .map(|c| std::thread::spawn(move || connection(addr, c, until)))
        .collect();
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for t in threads {
        let (l, e) = t.join().map_err(|_| "a client thread panicked")?;
        lat.extend(l);
        errors.extend(e);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    for e in &errors {
        eprintln!("kv-client: {e}");
    }
    say!(
        "kv-client: conns={conns} seconds={secs:.1} ops={} ops_per_s={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} errors={}",
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        errors.len()
    );
    Ok(())
}
