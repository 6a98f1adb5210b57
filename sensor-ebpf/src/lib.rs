#![no_std]
// The programs are the `nhi-sensor-ebpf` binary target; this empty library lets `sensor` declare a
// build-dependency on this crate so cargo rebuilds the object when its sources change.
