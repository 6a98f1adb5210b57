//! DNS responses on cgroup ingress: every packet passes (the program never drops); UDP
//! datagrams from port 53 are copied (bounded) with the receiving socket's cgroup into the
//! ring buffer, to be parsed in userspace. Runs in softirq context: no process to attribute.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_skb_cgroup_id, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use sensor_common::{Counter, DNS_PAYLOAD_LEN, EventKind, NetDnsEvent, SockAddr};

use crate::{
    emit::{count, header, output_value},
    kread::{at_most, zero_words},
    maps::DNS_SCRATCH,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const UDP_HEADER: usize = 8;

#[inline(always)]
pub fn ingress(ctx: &SkBuffContext) {
    let _ = try_ingress(ctx);
}

/// Reads `N` bytes at `at` into the front of a socket address.
#[inline(always)]
fn addr<const N: usize>(
    ctx: &SkBuffContext,
    at: usize,
    family: u16,
    port: u16,
    out: &mut SockAddr,
) -> Result<(), i64> {
    zero_words(out);
    let a: [u8; N] = ctx.load(at)?;
    out.addr[..N].copy_from_slice(&a);
    out.family = family;
    out.port = port;
    Ok(())
}

#[inline(always)]
fn try_ingress(ctx: &SkBuffContext) -> Result<(), i64> {
    // The cheap filter first: IP version, UDP, source port 53. Anything else costs a few loads.
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let (l4, v6) = match proto {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(0)?;
            let ip_proto: u8 = ctx.load(9)?;
            let frag = u16::from_be(ctx.load::<u16>(6)?);
            // Fragments (more-fragments flag or an offset) are not reassembled here.
            if ip_proto != IPPROTO_UDP || frag & 0x3fff != 0 {
                return Ok(());
            }
            (((vihl & 0x0f) as usize) * 4, false)
        }
        // A UDP header right after the fixed header; extension headers are not walked.
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(6)?;
            if next != IPPROTO_UDP {
                return Ok(());
            }
            (40, true)
        }
        _ => return Ok(()),
    };
    let sport = u16::from_be(ctx.load::<u16>(l4)?);
    if sport != DNS_PORT {
        return Ok(());
    }
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2)?);
    let Some(ev) = DNS_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let ev: &mut NetDnsEvent = unsafe { &mut *ev };
    ev.header = header(EventKind::NetDns, size_of::<NetDnsEvent>());
    ev.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    if v6 {
        addr::<16>(ctx, 8, AF_INET6, sport, &mut ev.src)?;
        addr::<16>(ctx, 24, AF_INET6, dport, &mut ev.dst)?;
    } else {
        addr::<4>(ctx, 12, AF_INET, sport, &mut ev.src)?;
        addr::<4>(ctx, 16, AF_INET, dport, &mut ev.dst)?;
    }
    let at = l4 + UDP_HEADER;
    let msg_len = ctx.len().saturating_sub(at as u32);
    ev.msg_len = msg_len;
    let n = at_most(msg_len, DNS_PAYLOAD_LEN as u32);
    ev.captured = 0;
    if n > 0 {
        // Older verifiers (6.1) do not learn `n >= 1` from the test above and refuse a length
        // that may be 0: derive one that is 1..=512 by construction, behind a volatile read so
        // LLVM cannot fold the mask away (DNS_PAYLOAD_LEN is a power of two).
        let m = unsafe { core::ptr::read_volatile(&(n - 1)) };
        let n = (m & (DNS_PAYLOAD_LEN as u32 - 1)) + 1;
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr().cast(),
                at as u32,
                ev.payload.as_mut_ptr().cast(),
                n,
            )
        };
        if r != 0 {
            count(Counter::DropReadError);
            return Ok(());
        }
        ev.captured = n;
    }
    output_value(ev);
    Ok(())
}
