//! The logging channel between a Primary's and a Secondary's ftvmm (being written).
