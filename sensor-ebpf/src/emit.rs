//! Writing records to the ring buffer and counting what happens.

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use sensor_common::{Counter, EventHeader, EventKind};

use crate::maps::{COUNTERS, EVENTS};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU value and programs do not nest on one CPU for the same hook: a plain add.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn header(kind: EventKind, size: usize) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        size: size as u32,
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Sends `size` bytes at `data` (map memory or stack). The caller bounds `size` for the verifier.
#[inline(always)]
pub fn output(data: *const u8, size: u64) {
    let bytes = unsafe { core::slice::from_raw_parts(data, size as usize) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count(Counter::DropRingbufFull);
    } else {
        count(Counter::Emitted);
    }
}

/// Sends a fixed-size record.
#[inline(always)]
pub fn output_value<T>(value: &T) {
    output((value as *const T).cast(), core::mem::size_of::<T>() as u64);
}
