//! Fuzz target: the VM witness's check of what its raw ICMP socket receives
//! (`heartbeat::witness`) must never panic on any datagram, and a datagram
//! counts as hearing the witness only if it is an echo reply from the
//! witness to one of this daemon's outstanding probes, with its payload: an
//! input that `parse_reply` accepts re-checks the same, and only then can
//! the reply count move (by one at most).
#![no_main]

use std::cell::RefCell;
use std::net::Ipv4Addr;

use heartbeat::witness::{parse_reply, Witness};
use libfuzzer_sys::fuzz_target;

const WITNESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const ID: u16 = 0x4242;
const NONCE: u64 = 0x0123_4567_89ab_cdef;

thread_local! {
    static STATE: RefCell<(Witness, u64)> = RefCell::new((Witness::new(WITNESS, ID, NONCE), 0));
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_reply(data, WITNESS, ID, NONCE);
    STATE.with(|st| {
        let (w, now) = &mut *st.borrow_mut();
        *now += 100;
        // Keep a few probes outstanding (seqs 0, 1, 2, ...).
        w.next_probe(*now);
        let before = w.replies;
        let r = w.on_datagram(data, *now);
        assert_eq!(r.is_ok(), parsed.is_ok(), "the state and the parser agree");
        assert!(w.replies <= before + 1);
        if w.replies > before {
            assert!(parsed.is_ok(), "a reply counted that the parser refused");
            assert_eq!(w.last_reply_ms, Some(*now));
        }
    });
});
