#!/usr/bin/env python3
"""Smoke test of the reference guest under QEMU's microvm machine (no ftvmm needed).

Builds nothing: pass the PVH-enabled guest, built with
    cd guest && CARGO_TARGET_DIR=target/pvh cargo build --release --features qemu-pvh
Usage:
    python3 guest/scripts/qemu_smoke.py guest/target/pvh/x86_64-unknown-none/release/ftguest

Checks: CPU mode prints its checksum and exits 0 through port 0x501; KV mode serves PUT/GET/STAT
over TCP (QEMU user networking with a host port forward), 1,000 keys on one connection, several
concurrent clients, all keys survive a hard kill of the VM, and a corrupted last record is
reported and ignored at the next boot. Fails (exit 1) with a clear message when QEMU is missing.
"""
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

QEMU = "qemu-system-x86_64"
PORT = 17000 + os.getpid() % 1000
MMIO = ",".join(f"{0xfeb00000 + i * 0x200:#x}@{5 + i}" for i in range(8))
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)


def qemu_cmd(kernel, append, disk=None):
    cmd = [
        QEMU, "-M",
        "microvm,acpi=off,pic=on,pit=on,rtc=off,isa-serial=on,ioapic2=off,auto-kernel-cmdline=off",
        "-accel", "tcg", "-cpu", "max", "-m", "64", "-kernel", kernel, "-append", append,
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0x501,iosize=1",
        "-global", "virtio-mmio.force-legacy=false",
    ]
    if disk:
        cmd += [
            "-drive", f"if=none,id=d0,file={disk},format=raw",
            "-device", "virtio-blk-device,drive=d0",
            "-netdev", "user,id=n0,net=198.51.100.0/24,host=198.51.100.2,"
            f"hostfwd=tcp:127.0.0.1:{PORT}-198.51.100.10:7000",
            "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
        ]
    return cmd


class Vm:
    def __init__(self, kernel, disk):
        self.lines = []
        self.proc = subprocess.Popen(
            qemu_cmd(kernel, f"mode=kv virtio_mmio={MMIO} ip=198.51.100.10/24 gw=198.51.100.2",
                     disk),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))

    def wait_line(self, prefix, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            time.sleep(0.1)
        raise TimeoutError(f"no line {prefix!r}; console: {self.lines}")

    def kill(self):
        self.proc.kill()
        self.proc.wait()


class Client:
    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
        self.f = self.sock.makefile("rwb")

    def cmd(self, line):
        self.f.write(line.encode() + b"\n")
        self.f.flush()
        return self.f.readline().decode().rstrip("\n")

    def close(self):
        self.sock.close()


def cpu_mode(kernel):
    out = subprocess.run(qemu_cmd(kernel, "mode=cpu cpu_iters=1000000"), capture_output=True,
                         timeout=120)
    text = out.stdout.decode(errors="replace")
    check("cpu: first line is 'guest: boot'", text.splitlines()[0].strip() == "guest: boot")
    check("cpu: exit status 0 (isa-debug-exit 1)", out.returncode == 1, f"rc={out.returncode}")
    line = [l for l in text.splitlines() if l.startswith("cpu: checksum=")]
    check("cpu: checksum line", bool(line), line[0].strip() if line else text)


def last_record_sector(path):
    """Start sector of the last record in the log (header parsing only)."""
    with open(path, "rb") as f:
        data = f.read()
    sector, last = 0, None
    while sector * 512 < len(data) and data[sector * 512:sector * 512 + 4] == b"FTKV":
        klen, vlen = struct.unpack_from("<HH", data, sector * 512 + 20)
        last = sector
        sector += (24 + klen + vlen + 511) // 512
    return last


def kv_mode(kernel, disk):
    vm = Vm(kernel, disk)
    try:
        line = vm.wait_line("kv: listening")
        check("kv: listening line", "keys=0 replayed=0" in line, line)
        c = Client()
        check("kv: PUT", c.cmd("PUT hello world") == "OK")
        check("kv: GET", c.cmd("GET hello") == "VALUE world")
        check("kv: GET missing", c.cmd("GET nothere") == "NOTFOUND")
        check("kv: garbage", c.cmd("FROB x").startswith("ERR "))
        check("kv: value too long", c.cmd("PUT k " + "v" * 1025) == "ERR value too long")
        t0 = time.time()
        bad = [i for i in range(1000) if c.cmd(f"PUT key{i} value{i}") != "OK"]
        dt = time.time() - t0
        check("kv: 1000 PUTs on one connection", not bad, f"{1000 / dt:.0f} PUT/s under TCG")
        bad = [i for i in range(1000) if c.cmd(f"GET key{i}") != f"VALUE value{i}"]
        check("kv: 1000 GETs read back", not bad)
        stat = c.cmd("STAT")
        check("kv: STAT", stat.startswith("STAT keys=1001 puts=1001 gets=1002 ticks="), stat)
        check("kv: SLOT never set", c.cmd("SLOT 5") == "NONE")
        replies = [c.cmd(f"SET 5 page-{i}") for i in range(1, 21)]
        check("kv: SET versions 1..20", replies == [f"OK {i}" for i in range(1, 21)], str(replies[:3]))
        check("kv: SLOT", c.cmd("SLOT 5") == "VALUE 20 page-20")
        check("kv: SET 63", c.cmd("SET 63 last") == "OK 1")
        check("kv: bad slot", c.cmd("SET 64 x") == "ERR slot out of range")

        errors = []

        def worker(n):
            try:
                cl = Client()
                for i in range(50):
                    if cl.cmd(f"PUT c{n}-{i} {n}") != "OK" or cl.cmd(f"GET c{n}-{i}") != f"VALUE {n}":
                        errors.append((n, i))
                cl.close()
            except OSError as e:
                errors.append((n, repr(e)))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check("kv: 6 concurrent clients", not errors, str(errors[:3]))
        c.close()
        # Sockets re-listen after close: 8 more sequential connections still work.
        ok = all(Client().cmd("GET hello") == "VALUE world" for _ in range(8))
        check("kv: re-listen after close", ok)
    finally:
        vm.kill()  # hard stop: acknowledged PUTs must be on disk

    vm = Vm(kernel, disk)
    try:
        line = vm.wait_line("kv: listening")
        check("kv: replay after kill", "keys=1301 replayed=1301" in line, line)
        c = Client()
        bad = [i for i in range(1000) if c.cmd(f"GET key{i}") != f"VALUE value{i}"]
        check("kv: keys survive restart", not bad)
        check("kv: slot survives restart", c.cmd("SLOT 5") == "VALUE 20 page-20")
        check("kv: slot versions continue", c.cmd("SET 5 page-21") == "OK 21")
        check("kv: last PUT before tear", c.cmd("PUT zz-last 1") == "OK")
        c.close()
    finally:
        vm.kill()

    with open(disk, "rb") as f:
        f.seek(-64 * 512 + 5 * 512, os.SEEK_END)
        sector = f.read(512)
    check("kv: slot 5 rewritten in place at sector C-64+5",
          sector[:4] == b"FTSL" and struct.unpack_from("<QHH", sector, 8) == (21, 5, 7)
          and sector[24:31] == b"page-21", repr(sector[:32]))
    last = last_record_sector(disk)
    with open(disk, "r+b") as f:
        f.seek(last * 512 + 30)
        b = f.read(1)
        f.seek(last * 512 + 30)
        f.write(bytes([b[0] ^ 0x20]))
    vm = Vm(kernel, disk)
    try:
        line = vm.wait_line("kv: listening")
        tail = vm.wait_line("kv: log tail at sector")
        check("kv: torn tail reported", tail.startswith(f"kv: log tail at sector {last} ignored (bad crc"),
              tail)
        check("kv: torn record dropped", "keys=1301 replayed=1301" in line, line)
        c = Client()
        check("kv: torn key absent", c.cmd("GET zz-last") == "NOTFOUND")
        check("kv: append after torn tail", c.cmd("PUT after-tear 1") == "OK")
        c.close()
    finally:
        vm.kill()
    vm = Vm(kernel, disk)
    try:
        line = vm.wait_line("kv: listening")
        check("kv: log continues after tear", "keys=1302 replayed=1302" in line, line)
    finally:
        vm.kill()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if shutil.which(QEMU) is None:
        print(f"FAIL: {QEMU} not found (apt-get install qemu-system-x86)")
        sys.exit(1)
    kernel = sys.argv[1]
    cpu_mode(kernel)
    with tempfile.TemporaryDirectory() as d:
        disk = os.path.join(d, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(8 << 20)
        kv_mode(kernel, disk)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
