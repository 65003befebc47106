//! ftvmm: the VMM of the fault-tolerant appliance. One vCPU on KVM, userspace
//! interrupt controllers and devices, and one door each for inputs and outputs
//! (see [`io`]) so that lockstep can record and replay them.

pub mod daemon;
pub mod io;
pub mod manager;
pub mod virtio;
