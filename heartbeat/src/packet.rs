//! The heartbeat wire format: a small clear header, then one self-contained
//! one-way Noise handshake message (`Noise_K_25519_ChaChaPoly_BLAKE2s`) whose
//! encrypted payload is the heartbeat itself.
//!
//! ```text
//! packet  = magic | wire version u8 (= 1) | sender id u32le | receiver id u32le | noise message
//! magic   = "FTHB" on the FT network, "FTHV" on the VM network
//! noise   = e (32 bytes) | ChaChaPoly(payload) (payload + 16-byte tag)
//! payload = version u8 (1, 2 or 3) | sender id u32le | boot id u64le | seq u64le | count u8
//!           | count × entry | (versions 2 and 3) vm | (version 3 only) witness u8
//! entry   = host id u32le | flags u8 | boot id u64le | seq u64le
//! flags   = bit 0: the sender considers the host alive
//!           bit 1: the sender has heard (an authenticated packet) from that host;
//!                  boot id and seq are then the last ones it heard (else zero)
//! vm      = watch ms u32le | quiet ms u32le | n u8 | n × host id u32le (strictly increasing)
//! witness = 0: the sender does not hear the VM witness, 1: it does
//! ```
//!
//! The magic is part of the prologue, so a packet sealed for one network does
//! not open on the other: a recording of FT heartbeats replayed onto the VM
//! network (or back) is `forged` or `malformed`, never a sign of life there.
//!
//! Version 2 (sent on the FT network) adds the sender's VM-network
//! reachability ([`VmReport`]): how long it has listened on its VM-network
//! address, how long since it last heard any peer there, and which peers it
//! hears there now. VM-network heartbeats carry version 1 (their own view:
//! seq, echo). A daemon of a release that decodes only version 1 drops the
//! FT heartbeats of this one as `bad_version`: every host of a cluster must
//! run the same release (as the logging channel's version already requires).
//!
//! Version 3 adds whether the sender hears the VM witness
//! (`cluster.vm_witness`, [`crate::witness`]); it is sent only by a host
//! whose config names a witness, so a cluster without one keeps version 2
//! on the wire. A config with a witness is refused by a build from before
//! it (the config's witness trailer), so no host of such a cluster sends
//! version 3 to one that cannot read it.
//!
//! Both static keys are known from the config (the K pattern's pre-messages), so
//! every packet authenticates its sender to its receiver on its own; loss and
//! reordering cost nothing. The 13-byte header is the Noise prologue, so a
//! tampered header fails authentication like a tampered body. Every packet has a
//! fresh ephemeral key, so no nonce state is shared between packets; replay
//! protection is the receiver's job (see [`crate::view`]).

use snow::params::NoiseParams;

/// The Noise protocol every heartbeat uses.
pub const NOISE_PARAMS: &str = "Noise_K_25519_ChaChaPoly_BLAKE2s";
/// First four bytes of every heartbeat packet on the FT network.
pub const MAGIC: [u8; 4] = *b"FTHB";
/// First four bytes of every heartbeat packet on the VM network.
pub const VM_MAGIC: [u8; 4] = *b"FTHV";
/// Version of the outer packet format.
pub const WIRE_VERSION: u8 = 1;
/// Version of the encrypted payload format without a VM-network report.
pub const PAYLOAD_VERSION: u8 = 1;
/// Version of the encrypted payload format with one ([`VmReport`]).
pub const PAYLOAD_VERSION_VM: u8 = 2;
/// Version with one that says whether the sender hears the VM witness.
pub const PAYLOAD_VERSION_WITNESS: u8 = 3;
/// Length of the clear header (the Noise prologue).
pub const HEADER_LEN: usize = 4 + 1 + 4 + 4;
/// Ephemeral public key plus AEAD tag around the payload.
pub const NOISE_OVERHEAD: usize = 32 + 16;
/// At most this many view entries in one payload.
pub const MAX_ENTRIES: usize = 64;
const ENTRY_LEN: usize = 4 + 1 + 8 + 8;
const PAYLOAD_FIXED: usize = 1 + 4 + 8 + 8 + 1;
const VM_FIXED: usize = 4 + 4 + 1;
/// Largest payload and packet we ever produce or accept.
pub const MAX_PAYLOAD: usize =
    PAYLOAD_FIXED + MAX_ENTRIES * ENTRY_LEN + VM_FIXED + MAX_ENTRIES * 4 + 1;
pub const MAX_PACKET: usize = HEADER_LEN + NOISE_OVERHEAD + MAX_PAYLOAD;

const FLAG_ALIVE: u8 = 1;
const FLAG_HEARD: u8 = 2;

/// Why a packet was refused before or while it was opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("too short ({0} bytes)")]
    Short(usize),
    #[error("too long ({0} bytes)")]
    Long(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported wire version {0}")]
    WireVersion(u8),
    #[error("unsupported payload version {0}")]
    PayloadVersion(u8),
    #[error("malformed payload: {0}")]
    Payload(&'static str),
    #[error("Noise message does not authenticate")]
    Auth,
    #[error("Noise setup failed: {0}")]
    Noise(String),
}

/// Which network a heartbeat travels on (its magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// The FT network: membership and failure suspicion.
    Ft,
    /// The VM network: reachability only, never suspicion.
    Vm,
}

impl Net {
    pub fn magic(self) -> [u8; 4] {
        match self {
            Net::Ft => MAGIC,
            Net::Vm => VM_MAGIC,
        }
    }
}

/// The clear header in front of the Noise message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sender: u32,
    pub receiver: u32,
}

impl Header {
    /// The header of an FT-network packet.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        self.encode_on(Net::Ft)
    }

    /// The header of a packet on `net`.
    pub fn encode_on(&self, net: Net) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&net.magic());
        h[4] = WIRE_VERSION;
        h[5..9].copy_from_slice(&self.sender.to_le_bytes());
        h[9..13].copy_from_slice(&self.receiver.to_le_bytes());
        h
    }

    /// Splits an FT-network packet into its header and Noise message,
    /// checking sizes, magic and version. Nothing here is authenticated yet.
    pub fn parse(packet: &[u8]) -> Result<(Header, &[u8]), PacketError> {
        Self::parse_on(packet, Net::Ft)
    }

    /// [`Header::parse`] for a packet received on `net` (its magic).
    pub fn parse_on(packet: &[u8], net: Net) -> Result<(Header, &[u8]), PacketError> {
        if packet.len() < HEADER_LEN + NOISE_OVERHEAD + PAYLOAD_FIXED {
            return Err(PacketError::Short(packet.len()));
        }
        if packet.len() > MAX_PACKET {
            return Err(PacketError::Long(packet.len()));
        }
        if packet[..4] != net.magic() {
            return Err(PacketError::BadMagic);
        }
        if packet[4] != WIRE_VERSION {
            return Err(PacketError::WireVersion(packet[4]));
        }
        let sender = u32::from_le_bytes(packet[5..9].try_into().expect("4 bytes"));
        let receiver = u32::from_le_bytes(packet[9..13].try_into().expect("4 bytes"));
        Ok((Header { sender, receiver }, &packet[HEADER_LEN..]))
    }
}

/// What the sender last heard from one host, and whether it thinks it alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub host: u32,
    pub alive: bool,
    /// `(boot id, seq)` of the last authenticated packet heard from `host`.
    pub heard: Option<(u64, u64)>,
}

/// The sender's reachability on the VM network (payload version 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmReport {
    /// How long the sender has listened on its VM-network address (ms,
    /// saturating); 0: it does not (not bound yet): the rest says nothing.
    pub watch_ms: u32,
    /// How long since it last heard any peer on the VM network (ms,
    /// saturating; counted from `watch` when it never heard one); 0 while
    /// it hears one.
    pub quiet_ms: u32,
    /// The peers it heard on the VM network within the failure timeout,
    /// host ids in increasing order.
    pub hears: Vec<u32>,
    /// Whether it heard the VM witness within the failure timeout; `None`:
    /// its config names none (payload version 2).
    pub witness: Option<bool>,
}

/// The decrypted heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub sender: u32,
    pub boot_id: u64,
    pub seq: u64,
    pub view: Vec<Entry>,
    /// Version 2 only: the sender's VM-network reachability.
    pub vm: Option<VmReport>,
}

impl Payload {
    /// The explicit binary encoding (see the module docs).
    ///
    /// # Panics
    /// If `view` or the VM report has more than [`MAX_ENTRIES`] entries (the
    /// config has far fewer hosts), or the report's ids are not increasing.
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.view.len() <= MAX_ENTRIES, "too many view entries");
        let mut out = Vec::with_capacity(MAX_PAYLOAD);
        out.push(match &self.vm {
            None => PAYLOAD_VERSION,
            Some(VmReport { witness: None, .. }) => PAYLOAD_VERSION_VM,
            Some(VmReport {
                witness: Some(_), ..
            }) => PAYLOAD_VERSION_WITNESS,
        });
        out.extend_from_slice(&self.sender.to_le_bytes());
        out.extend_from_slice(&self.boot_id.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.push(self.view.len() as u8);
        for e in &self.view {
            out.extend_from_slice(&e.host.to_le_bytes());
            let (boot, seq) = e.heard.unwrap_or((0, 0));
            let flags = (if e.alive { FLAG_ALIVE } else { 0 })
                | (if e.heard.is_some() { FLAG_HEARD } else { 0 });
            out.push(flags);
            out.extend_from_slice(&boot.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
        if let Some(vm) = &self.vm {
            assert!(vm.hears.len() <= MAX_ENTRIES, "too many VM-network hosts");
            assert!(
                vm.hears.windows(2).all(|w| w[0] < w[1]),
                "VM-network hosts must be strictly increasing"
            );
            out.extend_from_slice(&vm.watch_ms.to_le_bytes());
            out.extend_from_slice(&vm.quiet_ms.to_le_bytes());
            out.push(vm.hears.len() as u8);
            for h in &vm.hears {
                out.extend_from_slice(&h.to_le_bytes());
            }
            if let Some(w) = vm.witness {
                out.push(u8::from(w));
            }
        }
        out
    }

    /// Strict decoder: exact length, known flags only, zeroes where nothing was heard.
    pub fn decode(b: &[u8]) -> Result<Payload, PacketError> {
        let mut r = Reader(b);
        let version = r.u8()?;
        if !(PAYLOAD_VERSION..=PAYLOAD_VERSION_WITNESS).contains(&version) {
            return Err(PacketError::PayloadVersion(version));
        }
        let sender = r.u32()?;
        let boot_id = r.u64()?;
        let seq = r.u64()?;
        let count = r.u8()? as usize;
        if count > MAX_ENTRIES {
            return Err(PacketError::Payload("too many view entries"));
        }
        let vm_len = if version >= PAYLOAD_VERSION_VM {
            let n = r.0.get(count * ENTRY_LEN + 8).copied().unwrap_or(0) as usize;
            VM_FIXED + 4 * n + usize::from(version == PAYLOAD_VERSION_WITNESS)
        } else {
            0
        };
        if r.0.len() != count * ENTRY_LEN + vm_len {
            return Err(PacketError::Payload("length does not match entry count"));
        }
        let mut view = Vec::with_capacity(count);
        for _ in 0..count {
            let host = r.u32()?;
            let flags = r.u8()?;
            let boot = r.u64()?;
            let seq = r.u64()?;
            if flags & !(FLAG_ALIVE | FLAG_HEARD) != 0 {
                return Err(PacketError::Payload("unknown entry flags"));
            }
            let heard = if flags & FLAG_HEARD != 0 {
                Some((boot, seq))
            } else if boot != 0 || seq != 0 {
                return Err(PacketError::Payload("boot/seq set on a host never heard"));
            } else {
                None
            };
            if view.iter().any(|e: &Entry| e.host == host) {
                return Err(PacketError::Payload("duplicate host in view"));
            }
            view.push(Entry {
                host,
                alive: flags & FLAG_ALIVE != 0,
                heard,
            });
        }
        let vm = if version >= PAYLOAD_VERSION_VM {
            Some(decode_vm(&mut r, version == PAYLOAD_VERSION_WITNESS)?)
        } else {
            None
        };
        Ok(Payload {
            sender,
            boot_id,
            seq,
            view,
            vm,
        })
    }
}

/// The VM section of a version 2 or 3 payload (its length was checked),
/// with the witness byte when `witness`.
fn decode_vm(r: &mut Reader<'_>, witness: bool) -> Result<VmReport, PacketError> {
    let watch_ms = r.u32()?;
    let quiet_ms = r.u32()?;
    let n = r.u8()? as usize;
    if n > MAX_ENTRIES {
        return Err(PacketError::Payload("too many VM-network hosts"));
    }
    let mut hears: Vec<u32> = Vec::with_capacity(n);
    for _ in 0..n {
        let h = r.u32()?;
        if hears.last().is_some_and(|l| *l >= h) {
            return Err(PacketError::Payload(
                "VM-network hosts not strictly increasing",
            ));
        }
        hears.push(h);
    }
    let witness = match witness {
        false => None,
        true => match r.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => return Err(PacketError::Payload("witness byte neither 0 nor 1")),
        },
    };
    Ok(VmReport {
        watch_ms,
        quiet_ms,
        hears,
        witness,
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], PacketError> {
        if self.0.len() < N {
            return Err(PacketError::Payload("truncated"));
        }
        let (a, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(a.try_into().expect("split at N"))
    }
    fn u8(&mut self) -> Result<u8, PacketError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, PacketError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, PacketError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

fn params() -> NoiseParams {
    NOISE_PARAMS.parse().expect("a valid Noise protocol name")
}

/// Seals `payload` for `receiver`: header + one Noise K handshake message from
/// `my_private` (X25519 secret) to `receiver_public`.
pub fn seal(
    header: Header,
    payload: &Payload,
    my_private: &[u8; 32],
    receiver_public: &[u8; 32],
) -> Result<Vec<u8>, PacketError> {
    seal_on(Net::Ft, header, payload, my_private, receiver_public)
}

/// [`seal`] for `net` (its magic in the header, and so in the prologue).
pub fn seal_on(
    net: Net,
    header: Header,
    payload: &Payload,
    my_private: &[u8; 32],
    receiver_public: &[u8; 32],
) -> Result<Vec<u8>, PacketError> {
    let h = header.encode_on(net);
    let noise_err = |e: snow::Error| PacketError::Noise(e.to_string());
    let mut hs = snow::Builder::new(params())
        .local_private_key(my_private)
        .remote_public_key(receiver_public)
        .prologue(&h)
        .build_initiator()
        .map_err(noise_err)?;
    let body = payload.encode();
    let mut out = vec![0u8; HEADER_LEN + NOISE_OVERHEAD + body.len()];
    out[..HEADER_LEN].copy_from_slice(&h);
    let n = hs
        .write_message(&body, &mut out[HEADER_LEN..])
        .map_err(noise_err)?;
    out.truncate(HEADER_LEN + n);
    Ok(out)
}

/// Opens a packet whose header named `sender_public`'s host, with this host's
/// `my_private`, and decodes the payload. Does not check that the payload's
/// sender matches the header (the caller does, to count it separately).
pub fn open(
    packet: &[u8],
    my_private: &[u8; 32],
    sender_public: &[u8; 32],
) -> Result<(Header, Payload), PacketError> {
    open_on(Net::Ft, packet, my_private, sender_public)
}

/// [`open`] for a packet received on `net`.
pub fn open_on(
    net: Net,
    packet: &[u8],
    my_private: &[u8; 32],
    sender_public: &[u8; 32],
) -> Result<(Header, Payload), PacketError> {
    let (header, msg) = Header::parse_on(packet, net)?;
    let mut hs = snow::Builder::new(params())
        .local_private_key(my_private)
        .remote_public_key(sender_public)
        .prologue(&packet[..HEADER_LEN])
        .build_responder()
        .map_err(|e| PacketError::Noise(e.to_string()))?;
    let mut body = vec![0u8; msg.len()];
    let n = hs
        .read_message(msg, &mut body)
        .map_err(|_| PacketError::Auth)?;
    Ok((header, Payload::decode(&body[..n])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ([u8; 32], [u8; 32], [u8; 32], [u8; 32]) {
        let a = [7u8; 32];
        let b = [9u8; 32];
        (
            a,
            config_schema::keys::host_public_key(&a),
            b,
            config_schema::keys::host_public_key(&b),
        )
    }

    fn sample() -> Payload {
        Payload {
            sender: 1,
            boot_id: 0xdead_beef,
            seq: 42,
            view: vec![
                Entry {
                    host: 2,
                    alive: true,
                    heard: Some((5, 17)),
                },
                Entry {
                    host: 3,
                    alive: false,
                    heard: None,
                },
            ],
            vm: None,
        }
    }

    fn sample_vm() -> Payload {
        Payload {
            vm: Some(VmReport {
                watch_ms: 4_000,
                quiet_ms: 1_500,
                hears: vec![2, 7],
                witness: None,
            }),
            ..sample()
        }
    }

    #[test]
    fn payload_round_trips() {
        let p = sample();
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        assert_eq!(p.encode()[0], PAYLOAD_VERSION);
        let v = sample_vm();
        assert_eq!(v.encode()[0], PAYLOAD_VERSION_VM);
        assert_eq!(Payload::decode(&v.encode()).unwrap(), v);
        let none = Payload {
            vm: Some(VmReport {
                watch_ms: 0,
                quiet_ms: 0,
                hears: vec![],
                witness: None,
            }),
            ..sample()
        };
        assert_eq!(Payload::decode(&none.encode()).unwrap(), none);
    }

    #[test]
    fn version_3_carries_the_witness_and_only_when_one_is_configured() {
        let v2 = sample_vm().encode();
        for heard in [false, true] {
            let mut p = sample_vm();
            p.vm.as_mut().unwrap().witness = Some(heard);
            let b = p.encode();
            assert_eq!(b[0], PAYLOAD_VERSION_WITNESS);
            // Version 2's bytes, then one byte.
            assert_eq!(b[1..b.len() - 1], v2[1..]);
            assert_eq!(b[b.len() - 1], u8::from(heard));
            assert_eq!(Payload::decode(&b).unwrap(), p);
        }
        let mut p = sample_vm();
        p.vm.as_mut().unwrap().witness = Some(true);
        let good = p.encode();
        // Strict: a byte other than 0 or 1, cut short, one byte more; a
        // version 2 payload with the byte, a version 3 one without.
        let mut two = good.clone();
        *two.last_mut().unwrap() = 2;
        assert_eq!(
            Payload::decode(&two),
            Err(PacketError::Payload("witness byte neither 0 nor 1"))
        );
        assert!(Payload::decode(&good[..good.len() - 1]).is_err());
        let mut more = good.clone();
        more.push(1);
        assert!(Payload::decode(&more).is_err());
        let mut as_v2 = good.clone();
        as_v2[0] = PAYLOAD_VERSION_VM;
        assert!(Payload::decode(&as_v2).is_err());
        let mut as_v3 = v2.clone();
        as_v3[0] = PAYLOAD_VERSION_WITNESS;
        assert!(Payload::decode(&as_v3).is_err());
        assert!(good.len() <= MAX_PAYLOAD);
    }

    #[test]
    fn the_vm_report_decoder_is_strict() {
        let good = sample_vm().encode();
        // Cut short, one byte more, a count that does not match.
        assert!(Payload::decode(&good[..good.len() - 1]).is_err());
        let mut t = good.clone();
        t.push(0);
        assert!(Payload::decode(&t).is_err());
        let n_at = good.len() - 2 * 4 - 1;
        let mut c = good.clone();
        c[n_at] = 3;
        assert!(Payload::decode(&c).is_err());
        // Hosts out of order or repeated: not canonical, refused.
        let mut o = good.clone();
        let (a, b) = (good.len() - 8, good.len() - 4);
        o[a..b].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            Payload::decode(&o),
            Err(PacketError::Payload(
                "VM-network hosts not strictly increasing"
            ))
        );
        // A version 1 payload with a VM section is too long.
        let mut v1 = good.clone();
        v1[0] = PAYLOAD_VERSION;
        assert!(Payload::decode(&v1).is_err());
    }

    #[test]
    fn a_packet_sealed_for_one_network_does_not_open_on_the_other() {
        let (a, a_pub, b, b_pub) = keys();
        let h = Header {
            sender: 1,
            receiver: 2,
        };
        let ft = seal(h, &sample(), &a, &b_pub).unwrap();
        let vm = seal_on(Net::Vm, h, &sample(), &a, &b_pub).unwrap();
        assert_eq!(&vm[..4], b"FTHV");
        assert_eq!(open_on(Net::Vm, &vm, &b, &a_pub).unwrap().1, sample());
        // Wrong magic for the socket: refused before any X25519.
        assert_eq!(
            open_on(Net::Vm, &ft, &b, &a_pub),
            Err(PacketError::BadMagic)
        );
        assert_eq!(open(&vm, &b, &a_pub), Err(PacketError::BadMagic));
        // The magic rewritten: the prologue differs, so it does not open.
        let mut moved = ft.clone();
        moved[..4].copy_from_slice(&VM_MAGIC);
        assert_eq!(open_on(Net::Vm, &moved, &b, &a_pub), Err(PacketError::Auth));
    }

    #[test]
    fn payload_decoder_is_strict() {
        let good = sample().encode();
        let mut v = good.clone();
        v[0] = 4;
        assert_eq!(Payload::decode(&v), Err(PacketError::PayloadVersion(4)));
        v[0] = 0;
        assert_eq!(Payload::decode(&v), Err(PacketError::PayloadVersion(0)));
        let mut t = good.clone();
        t.push(0);
        assert!(matches!(Payload::decode(&t), Err(PacketError::Payload(_))));
        assert!(Payload::decode(&good[..good.len() - 1]).is_err());
        let mut f = good.clone();
        f[PAYLOAD_FIXED + 4] |= 0x80;
        assert_eq!(
            Payload::decode(&f),
            Err(PacketError::Payload("unknown entry flags"))
        );
    }

    #[test]
    fn seal_open_round_trip_and_tamper_fails() {
        let (a, a_pub, b, b_pub) = keys();
        let h = Header {
            sender: 1,
            receiver: 2,
        };
        let pkt = seal(h, &sample(), &a, &b_pub).unwrap();
        let (h2, p) = open(&pkt, &b, &a_pub).unwrap();
        assert_eq!((h2, p), (h, sample()));
        for i in [0usize, 6, 10, HEADER_LEN, HEADER_LEN + 40, pkt.len() - 1] {
            let mut t = pkt.clone();
            t[i] ^= 1;
            assert!(open(&t, &b, &a_pub).is_err(), "byte {i} tampered");
        }
        // Wrong claimed sender key, wrong receiver key.
        assert_eq!(open(&pkt, &b, &b_pub), Err(PacketError::Auth));
        assert_eq!(open(&pkt, &a, &a_pub), Err(PacketError::Auth));
    }

    #[test]
    fn header_checks() {
        assert_eq!(Header::parse(&[0; 10]), Err(PacketError::Short(10)));
        let mut p = vec![0u8; 100];
        assert_eq!(Header::parse(&p), Err(PacketError::BadMagic));
        p[..4].copy_from_slice(&MAGIC);
        p[4] = 9;
        assert_eq!(Header::parse(&p), Err(PacketError::WireVersion(9)));
        assert_eq!(
            Header::parse(&vec![0u8; MAX_PACKET + 1]),
            Err(PacketError::Long(MAX_PACKET + 1))
        );
    }
}
