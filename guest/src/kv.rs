//! The KV service: log replay and the slot area read at boot, then a TCP server loop on smoltcp.
//!
//! `MAX_CLIENTS` sockets listen on the port; each connection has its own line buffer and output
//! queue, and a socket that closes listens again. The loop polls the interface and the sockets,
//! then sleeps with `sti; hlt` until the next interrupt (device or 100 Hz tick). A PUT blocks the
//! loop until its record is on disk (see `blk.rs`), which keeps the order of effects simple and
//! deterministic.

use crate::blk::Disk;
use crate::interrupts;
use crate::net::NetDevice;
use crate::println;
use alloc::vec;
use alloc::vec::Vec;
use ftguest_kvlog::{BootArgs, KvService, LineBuffer, LogEnd, SLOT_COUNT};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use virtio_drivers::transport::Transport;

/// Concurrent clients.
pub const MAX_CLIENTS: usize = 16;
const SOCKET_BUF: usize = 16 * 1024;
/// Stop taking new lines from a client while this much output is queued for it.
const OUTPUT_HIGH_WATER: usize = 4096;

/// After this long without an interrupt but the tick's, the PIT slows to
/// [`interrupts::IDLE_TICK_HZ`] (the idle cost of a protected VM is its ticks). Short, so that
/// a stray broadcast frame costs little; long enough that one request's frames, which come
/// milliseconds apart, do not switch the rate back and forth (a switch is three port writes and
/// a recorded PIT load).
const IDLE_AFTER_MS: u64 = 200;

/// smoltcp time from the PIT ticks ([`interrupts::now_ms`]); never from a TSC.
fn now() -> Instant {
    Instant::from_millis(interrupts::now_ms() as i64)
}

struct Conn {
    handle: SocketHandle,
    lines: LineBuffer,
    out: Vec<u8>,
}

/// Replays the log and serves forever.
pub fn run<B: Transport, N: Transport>(
    args: &BootArgs,
    mut disk: Disk<B>,
    mut dev: NetDevice<N>,
) -> ! {
    if dev.mac() != args.mac {
        let m = dev.mac();
        println!(
            "kv: note: device MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} differs from mac=; using mac=",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
    }
    println!(
        "kv: disk {} sectors flush={} ro={}",
        disk.capacity(),
        disk.has_flush(),
        disk.read_only()
    );
    let (mut svc, outcome) = match KvService::recover(&mut disk) {
        Ok(r) => r,
        Err(e) => {
            println!("kv: recovery from disk failed: {e}");
            crate::port::exit(0xed)
        }
    };
    if let LogEnd::Torn(reason) = outcome.end {
        println!(
            "kv: log tail at sector {} ignored ({reason})",
            outcome.next_sector
        );
    }
    println!(
        "kv: slots {} at sector {} held={}",
        SLOT_COUNT,
        svc.layout().slot_area_start(),
        svc.slots().held()
    );
    for (slot, reason) in svc.slots().damaged() {
        println!("kv: slot {slot} damaged ({reason}); SET and SLOT refuse it");
    }

    let mac = EthernetAddress(args.mac);
    let mut config = Config::new(HardwareAddress::Ethernet(mac));
    // Fixed seed (from the MAC): TCP initial sequence numbers must not depend on anything the
    // VMM would have to record.
    config.random_seed = args.mac.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut iface = Interface::new(config, &mut dev, now());
    let ip = Ipv4Address::from(args.ip);
    iface.update_ip_addrs(|addrs| {
        // One address into an empty list cannot overflow.
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), args.prefix_len));
    });
    if let Some(gw) = args.gateway {
        if iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::from(gw))
            .is_err()
        {
            println!("kv: could not add default route");
        }
    }

    let mut sockets = SocketSet::new(Vec::new());
    let mut conns: Vec<Conn> = (0..MAX_CLIENTS)
        .map(|_| {
            let sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_BUF]),
                tcp::SocketBuffer::new(vec![0; SOCKET_BUF]),
            );
            Conn {
                handle: sockets.add(sock),
                lines: LineBuffer::new(),
                out: Vec::new(),
            }
        })
        .collect();
    // Listen before saying so: a client that connects the moment it reads
    // the line below must find a listening socket, or smoltcp answers its
    // SYN with a reset (seen once in ~10 pair boots, where the line is
    // released to the world as soon as the Secondary has it).
    for conn in &conns {
        if let Err(e) = sockets
            .get_mut::<tcp::Socket>(conn.handle)
            .listen(args.port)
        {
            println!("kv: listen failed: {e}");
        }
    }
    println!(
        "kv: listening on {}:{} keys={} replayed={}",
        ip,
        args.port,
        svc.store().len(),
        svc.replayed()
    );

    let mut seen = interrupts::events();
    let (mut devices, mut busy_at) = (interrupts::device_events(), interrupts::now_ms());
    loop {
        iface.poll(now(), &mut dev, &mut sockets);
        let mut progress = false;
        for conn in &mut conns {
            progress |= serve(conn, &mut sockets, args.port, &mut svc, &mut disk);
        }
        if progress {
            // Replies were queued: let smoltcp send them before sleeping.
            continue;
        }
        // Tick slowly once nothing but the tick has woken us for IDLE_AFTER_MS and smoltcp
        // has no timer due sooner than that (a retransmission or a delayed ACK keeps the fast
        // tick); any other interrupt brings the fast tick back before we sleep again.
        let d = interrupts::device_events();
        if d != devices {
            (devices, busy_at) = (d, interrupts::now_ms());
        }
        let quiet = interrupts::now_ms().saturating_sub(busy_at) >= IDLE_AFTER_MS;
        let timers = iface
            .poll_delay(now(), &sockets)
            .is_some_and(|t| t.total_millis() < IDLE_AFTER_MS);
        interrupts::set_idle(quiet && !timers);
        seen = interrupts::wait_for_event(seen);
    }
}

/// Moves one connection forward; returns true if it produced output or changed state.
fn serve<B: Transport>(
    conn: &mut Conn,
    sockets: &mut SocketSet<'_>,
    port: u16,
    svc: &mut KvService,
    disk: &mut Disk<B>,
) -> bool {
    let sock = sockets.get_mut::<tcp::Socket>(conn.handle);
    if !sock.is_open() {
        conn.lines = LineBuffer::new();
        conn.out.clear();
        if let Err(e) = sock.listen(port) {
            println!("kv: listen failed: {e}");
            return false;
        }
        return true;
    }
    let mut progress = false;
    loop {
        if !conn.out.is_empty() && sock.can_send() {
            if let Ok(n) = sock.send_slice(&conn.out) {
                conn.out.drain(..n);
                progress |= n > 0;
            }
        }
        if conn.out.len() >= OUTPUT_HIGH_WATER {
            break;
        }
        if let Some(line) = conn.lines.pop_line() {
            // STAT's `ticks` stay 10 ms units of the guest's clock.
            svc.handle_line(&line, interrupts::now_ms() / 10, disk, &mut conn.out);
            progress = true;
            continue;
        }
        if !sock.can_recv() {
            break;
        }
        let lines = &mut conn.lines;
        match sock.recv(|data| {
            lines.push(data);
            (data.len(), data.len())
        }) {
            Ok(n) if n > 0 => progress = true,
            _ => break,
        }
    }
    // The client closed its side and everything it sent is answered: close ours.
    if !sock.may_recv() && conn.out.is_empty() && sock.state() == tcp::State::CloseWait {
        sock.close();
        progress = true;
    }
    progress
}
