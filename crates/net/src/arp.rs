//! ARP on a packet socket: gratuitous announcements and RFC 5227 probes.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;

/// A hardware (Ethernet) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One Ethernet frame carrying an ARP packet for IPv4.
fn frame(
    op: u16,
    sender: Mac,
    sender_ip: Ipv4Addr,
    target: [u8; 6],
    target_ip: Ipv4Addr,
) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&sender.0);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sender.0);
    f[28..32].copy_from_slice(&sender_ip.octets());
    f[32..38].copy_from_slice(&target);
    f[38..42].copy_from_slice(&target_ip.octets());
    f
}

/// An ARP packet's sender, when `packet` (an Ethernet frame) is ARP for IPv4.
fn sender_of(packet: &[u8]) -> Option<(u16, Mac, Ipv4Addr)> {
    if packet.len() < 42 || packet[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let op = u16::from_be_bytes([packet[20], packet[21]]);
    let mac = Mac(packet[22..28].try_into().ok()?);
    let ip = Ipv4Addr::new(packet[28], packet[29], packet[30], packet[31]);
    Some((op, mac, ip))
}

/// A packet socket bound to one interface, receiving ARP only.
pub(crate) struct ArpSocket {
    fd: OwnedFd,
    ifindex: i32,
    address: Ipv4Addr,
}

fn link_address(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&BROADCAST);
    sll
}

impl ArpSocket {
    pub(crate) fn open(ifindex: u32, address: Ipv4Addr) -> io::Result<ArpSocket> {
        let ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sll = link_address(ifindex);
        // SAFETY: `sll` is a valid sockaddr_ll and its size is passed.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ArpSocket {
            fd,
            ifindex,
            address,
        })
    }

    fn send(&self, packet: &[u8]) -> io::Result<()> {
        let sll = link_address(self.ifindex);
        // SAFETY: `packet` and `sll` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receive one frame, waiting at most `wait`; None on time-out.
    fn receive(&self, buffer: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: `buffer` is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr() as *mut libc::c_void,
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(n as usize))
    }

    /// Gratuitous ARP: tell every host on the segment that the VIP is at `mac` now, as a
    /// request and as a reply (hosts differ in which one updates their cache).
    pub(crate) fn announce(&self, mac: Mac) -> io::Result<()> {
        let vip = self.address;
        self.send(&frame(OP_REQUEST, mac, vip, [0; 6], vip))?;
        self.send(&frame(OP_REPLY, mac, vip, BROADCAST, vip))
    }

    /// One RFC 5227 probe (sender address 0.0.0.0, so no cache learns from it): the
    /// hardware address of a host that answers for the VIP within `wait`, if any.
    pub(crate) fn probe(&self, mac: Mac, wait: Duration) -> io::Result<Option<Mac>> {
        let vip = self.address;
        self.send(&frame(OP_REQUEST, mac, Ipv4Addr::UNSPECIFIED, [0; 6], vip))?;
        let deadline = Instant::now() + wait;
        let mut buffer = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Some(n) = self.receive(&mut buffer, left)? else {
                return Ok(None);
            };
            // A reply from the holder, or another host announcing the address itself.
            if let Some((op, sender, ip)) = sender_of(&buffer[..n]) {
                if ip == vip && sender != mac && (op == OP_REPLY || op == OP_REQUEST) {
                    return Ok(Some(sender));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back() {
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let f = frame(OP_REPLY, mac, vip, BROADCAST, vip);
        assert_eq!(sender_of(&f), Some((OP_REPLY, mac, vip)));
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(sender_of(&f[..41]), None);
        assert_eq!(mac.to_string(), "02:00:00:00:00:01");
    }
}
