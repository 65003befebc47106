//! The respawn bench's memory helpers without KVM: the fill, and one round 0 through the
//! sender's path, the codec and the receiver into a second memory.

use super::*;

const PAGES: u64 = 16;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (PAGES * 4096) as usize)]).unwrap()
}

fn page(mem: &GuestMemoryMmap, gfn: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    mem.read_slice(&mut b, GuestAddress(gfn * 4096)).unwrap();
    b
}

#[test]
fn fill_writes_only_zero_pages_above_the_start() {
    let mem = memory();
    mem.write_slice(&[7], GuestAddress(5 * 4096 + 9)).unwrap();
    fill(&mem, 2 * 4096, PAGES * 4096).unwrap();
    assert!(is_zero(&page(&mem, 0)) && is_zero(&page(&mem, 1)));
    let five = page(&mem, 5);
    assert!(five[9] == 7 && five.iter().filter(|&&b| b != 0).count() == 1);
    let filled: Vec<Vec<u8>> = (2..PAGES)
        .filter(|&g| g != 5)
        .map(|g| page(&mem, g))
        .collect();
    assert!(filled.iter().all(|p| !is_zero(p)));
    assert!(filled.windows(2).all(|w| w[0] != w[1]));
}

#[test]
fn round_zero_arrives_whole_and_the_digests_agree() {
    let src = memory();
    fill(&src, 8 * 4096, PAGES * 4096).unwrap();
    src.write_slice(&[1, 2, 3], GuestAddress(4096)).unwrap();
    let mut sent = PageHashes::new(PAGES, PAGE_SIZE);
    let mut nonzero = 0;
    let gfns: Vec<u64> = (0..PAGES).collect();
    let msg = send_chunk(&src, 0, &gfns, &mut sent, &mut nonzero).unwrap();
    assert_eq!(nonzero, 9);
    // Zero pages travel as no bytes: 9 pages of data plus the entries.
    assert!(msg.len() < 9 * 4096 + 16 * 12 + 16, "{}", msg.len());

    let dst = memory();
    let expected = Expected {
        vm: "t".into(),
        memory_bytes: PAGES * 4096,
        page_size: PAGE_SIZE,
        platform_sha256: [0; 32],
    };
    let image = VmMemory {
        mem: dst.clone(),
        received: PageHashes::new(PAGES, PAGE_SIZE),
    };
    let mut rx = Receiver::new(expected, image);
    let offer = Message::Offer {
        vm: "t".into(),
        generation: 1,
        memory_bytes: PAGES * 4096,
        page_size: PAGE_SIZE,
        platform_sha256: [0; 32],
    };
    deliver(&mut rx, offer).unwrap();
    deliver(&mut rx, decode(&msg).unwrap()).unwrap();
    assert_eq!(rx.memory().sha256(), sent.digest());
    assert_eq!(memory_sha256(&dst), memory_sha256(&src));
    // A refusal is an error: a second offer is unexpected.
    let again = Message::Offer {
        vm: "t".into(),
        generation: 1,
        memory_bytes: PAGES * 4096,
        page_size: PAGE_SIZE,
        platform_sha256: [0; 32],
    };
    assert!(deliver(&mut rx, again).is_err());
}
