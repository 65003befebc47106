//! virtio-mmio devices (blk, net) as deterministic state machines.
