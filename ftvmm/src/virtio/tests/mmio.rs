//! The virtio-mmio register file: identification, features, status, queues.

use super::driver::Harness;
use crate::virtio::{new_block, new_net, QUEUE_MAX_SIZE};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;

#[test]
fn identification_registers() {
    let mut b = Harness::new(new_block(0, 2048), 1);
    assert_eq!(b.read_reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(b.read_reg(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(b.read_reg(VIRTIO_MMIO_DEVICE_ID), 2);
    assert_ne!(b.read_reg(VIRTIO_MMIO_VENDOR_ID), 0);
    let mut n = Harness::new(new_net(1, [0; 6]), 2);
    assert_eq!(n.read_reg(VIRTIO_MMIO_DEVICE_ID), 1);
    assert_eq!(n.t.device_id(), 1);
}

#[test]
fn feature_words_are_selected() {
    let mut b = Harness::new(new_block(0, 2048), 1);
    b.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let lo = b.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
    b.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let hi = b.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
    b.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(b.read_reg(VIRTIO_MMIO_DEVICE_FEATURES), 0);
    assert_ne!(lo & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(
        hi,
        1 << (VIRTIO_F_VERSION_1 - 32),
        "only VERSION_1 above bit 31"
    );
    let mut n = Harness::new(new_net(1, [0; 6]), 2);
    n.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_ne!(
        n.read_reg(VIRTIO_MMIO_DEVICE_FEATURES) & (1 << VIRTIO_NET_F_MAC),
        0
    );
}

fn try_features(lo: u32, hi: u32) -> u32 {
    let mut b = Harness::new(new_block(0, 2048), 1);
    b.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    b.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    b.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, lo);
    b.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    b.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, hi);
    b.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    b.status() & VIRTIO_CONFIG_S_FEATURES_OK
}

#[test]
fn features_ok_requires_version_1_and_known_bits() {
    let v1 = 1 << (VIRTIO_F_VERSION_1 - 32);
    assert_ne!(try_features(1 << VIRTIO_BLK_F_FLUSH, v1), 0);
    assert_eq!(
        try_features(1 << VIRTIO_BLK_F_FLUSH, 0),
        0,
        "legacy driver refused"
    );
    assert_eq!(try_features(1 << 28, v1), 0, "unoffered feature refused");
}

#[test]
fn block_config_space() {
    let mut b = Harness::new(new_block(0, 0x1_2345_6789), 1);
    let mut cap = [0u8; 8];
    b.t.mmio_read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 0x1_2345_6789);
    let mut lo = [0u8; 4];
    b.t.mmio_read(0x100, &mut lo);
    assert_eq!(u32::from_le_bytes(lo), 0x2345_6789);
    let mut bs = [0u8; 4];
    b.t.mmio_read(0x100 + 20, &mut bs);
    assert_eq!(u32::from_le_bytes(bs), 512);
    let mut beyond = [0xffu8; 4];
    b.t.mmio_read(0xffc, &mut beyond);
    assert_eq!(beyond, [0; 4]);
}

#[test]
fn queue_num_max_and_ready() {
    let mut n = Harness::new(new_net(1, [0; 6]), 2);
    n.write_reg(VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(
        n.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX),
        u32::from(QUEUE_MAX_SIZE)
    );
    n.write_reg(VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(
        n.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX),
        0,
        "queue 2 does not exist"
    );
    n.init();
    for q in 0..2 {
        n.write_reg(VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(n.read_reg(VIRTIO_MMIO_QUEUE_READY), 1);
    }
}

#[test]
fn status_zero_resets_everything() {
    let mut b = Harness::blk(64);
    b.blk_request(
        virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID,
        0,
        20,
        None,
    );
    b.notify(0);
    assert!(b.t.irq_level());
    b.write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(b.status(), 0);
    assert!(!b.t.irq_level());
    b.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(b.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn odd_sized_register_accesses_are_harmless() {
    let mut b = Harness::blk(64);
    let mut two = [0xffu8; 2];
    b.t.mmio_read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut two);
    assert_eq!(two, [0, 0]);
    let mut one = [0xffu8; 1];
    b.t.mmio_read(1, &mut one);
    assert_eq!(one, [0]);
    let mem = b.mem.clone();
    b.t.mmio_write(1, &mem, u64::from(VIRTIO_MMIO_STATUS), &[0], &mut b.out);
    b.t.mmio_write(
        1,
        &mem,
        u64::from(VIRTIO_MMIO_STATUS) + 1,
        &[0; 4],
        &mut b.out,
    );
    b.t.mmio_write(1, &mem, 0x0ff, &[0; 8], &mut b.out);
    b.t.mmio_write(1, &mem, 0x100, &[0; 8], &mut b.out); // config is read-only
    assert_ne!(
        b.status() & VIRTIO_CONFIG_S_DRIVER_OK,
        0,
        "device state untouched"
    );
    let mut cap = [0u8; 8];
    b.t.mmio_read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 64);
}

#[test]
fn interrupt_ack_clears_only_acked_bits() {
    let mut b = Harness::blk(64);
    b.blk_request(
        virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID,
        0,
        20,
        None,
    );
    b.notify(0);
    assert_eq!(
        b.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    b.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
    assert!(b.t.irq_level());
    b.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert!(!b.t.irq_level());
}

#[test]
fn queue_teardown_like_virtio_drivers_is_accepted() {
    // virtio-drivers' queue_unset: QueueReady=0, QueueNum=0, addresses 0.
    let mut n = Harness::net();
    n.write_reg(VIRTIO_MMIO_QUEUE_SEL, 1);
    n.write_reg(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(n.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    n.write_reg(VIRTIO_MMIO_QUEUE_NUM, 0);
    for reg in [
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        VIRTIO_MMIO_QUEUE_DESC_HIGH,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
        VIRTIO_MMIO_QUEUE_USED_LOW,
        VIRTIO_MMIO_QUEUE_USED_HIGH,
    ] {
        n.write_reg(reg, 0);
    }
    assert!(!n.needs_reset());
    // And it can be set up again.
    n.setup_queue(1);
    assert!(!n.needs_reset());
    assert_eq!(n.read_reg(VIRTIO_MMIO_QUEUE_READY), 1);
}
