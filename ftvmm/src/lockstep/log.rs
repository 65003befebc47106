//! The lockstep log record format (being written).
