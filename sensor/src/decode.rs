//! Ring-buffer records → typed events. Every length is checked against the record size: a
//! malformed record is an error, never a panic or an out-of-bounds read.

use sensor_common::{
    CredChangeEvent, EventHeader, EventKind, ExecEvent, ExitEvent, FileCloseEvent, FileOpenEvent,
    ForkEvent, NetAcceptEvent, NetConnectEvent, NetDnsEvent, NetResultEvent, NetUnixEvent,
};

#[derive(Debug)]
pub enum KernelEvent {
    Exec {
        ev: ExecEvent,
        exe: Vec<u8>,
        filename: Vec<u8>,
        args: Vec<u8>,
        /// Raw `NAME=value` strings: secret material.
        #[allow(dead_code)]
        // Classified into credential-variable names by the identity layer.
        env: SecretBytes,
    },
    Fork(ForkEvent),
    Exit(ExitEvent),
    CredChange(CredChangeEvent),
    FileOpen {
        ev: FileOpenEvent,
        path: Vec<u8>,
    },
    FileClose(FileCloseEvent),
    Connect(NetConnectEvent),
    UdpSend(NetConnectEvent),
    ConnectResult(NetResultEvent),
    Accept(NetAcceptEvent),
    UnixConnect(NetUnixEvent),
    /// Boxed: the captured message makes it the largest variant by far.
    Dns(Box<NetDnsEvent>),
}

/// Bytes that may hold secrets (environment values). Only names and keyed fingerprints derived
/// from them may leave the process; `Debug` shows the length only, so a log line cannot leak them.
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than its {need}-byte fixed part ({what})")]
    TooShort {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{what}: payload lengths ({payload} bytes) overrun the {got}-byte record")]
    PayloadOverrun {
        what: &'static str,
        payload: usize,
        got: usize,
    },
}

/// Copies a `#[repr(C)]` plain-data struct out of the front of `bytes`.
fn read_struct<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::TooShort {
            what,
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: the length is checked above, the ABI types are plain data valid for any bytes, and
    // `read_unaligned` makes no alignment assumption about ring-buffer memory.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Splits variable payloads that follow a fixed part.
fn payloads<'a, const N: usize>(
    bytes: &'a [u8],
    fixed: usize,
    lens: [usize; N],
    what: &'static str,
) -> Result<[&'a [u8]; N], DecodeError> {
    let total: usize = lens.iter().sum();
    if fixed + total > bytes.len() {
        return Err(DecodeError::PayloadOverrun {
            what,
            payload: total,
            got: bytes.len(),
        });
    }
    let mut out = [&bytes[0..0]; N];
    let mut at = fixed;
    for (i, len) in lens.iter().enumerate() {
        out[i] = &bytes[at..at + len];
        at += len;
    }
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read_struct(bytes, "header")?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::ProcessExec => {
            let ev: ExecEvent = read_struct(bytes, "exec")?;
            let [exe, filename, args, env] = payloads(
                bytes,
                size_of::<ExecEvent>(),
                [
                    ev.exe.len as usize,
                    ev.filename_len as usize,
                    ev.args_len as usize,
                    ev.env_len as usize,
                ],
                "exec",
            )?;
            KernelEvent::Exec {
                ev,
                exe: exe.to_vec(),
                filename: filename.to_vec(),
                args: args.to_vec(),
                env: SecretBytes(env.to_vec()),
            }
        }
        EventKind::ProcessFork => KernelEvent::Fork(read_struct(bytes, "fork")?),
        EventKind::ProcessExit => KernelEvent::Exit(read_struct(bytes, "exit")?),
        EventKind::CredChange => KernelEvent::CredChange(read_struct(bytes, "cred_change")?),
        EventKind::FileOpen => {
            let ev: FileOpenEvent = read_struct(bytes, "file_open")?;
            let [path] = payloads(
                bytes,
                size_of::<FileOpenEvent>(),
                [ev.path.len as usize],
                "file_open",
            )?;
            KernelEvent::FileOpen {
                ev,
                path: path.to_vec(),
            }
        }
        EventKind::FileClose => KernelEvent::FileClose(read_struct(bytes, "file_close")?),
        EventKind::NetConnect => KernelEvent::Connect(read_struct(bytes, "connect")?),
        EventKind::NetUdpSend => KernelEvent::UdpSend(read_struct(bytes, "udp_send")?),
        EventKind::NetConnectResult => {
            KernelEvent::ConnectResult(read_struct(bytes, "connect_result")?)
        }
        EventKind::NetAccept => KernelEvent::Accept(read_struct(bytes, "accept")?),
        EventKind::NetUnixConnect => KernelEvent::UnixConnect(read_struct(bytes, "unix_connect")?),
        EventKind::NetDns => KernelEvent::Dns(Box::new(read_struct(bytes, "dns")?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data struct's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn file_open_with_path_round_trips() {
        let mut ev = FileOpenEvent::default();
        ev.header.kind = EventKind::FileOpen as u32;
        ev.path.len = 5;
        ev.ret = 3;
        let mut bytes = bytes_of(&ev);
        bytes.extend_from_slice(b"/a/b\xff");
        match decode(&bytes).unwrap() {
            KernelEvent::FileOpen { ev, path } => {
                assert_eq!(ev.ret, 3);
                assert_eq!(path, b"/a/b\xff");
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn secret_bytes_never_print() {
        let s = SecretBytes(b"AWS_SECRET_ACCESS_KEY=abc".to_vec());
        assert_eq!(format!("{s:?}"), "<25 bytes redacted>");
    }

    #[test]
    fn hostile_records_are_errors() {
        assert!(matches!(
            decode(&[1, 2, 3]),
            Err(DecodeError::TooShort { .. })
        ));
        let mut header = EventHeader {
            kind: 9999,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes_of(&header)).unwrap_err(),
            DecodeError::UnknownKind(9999)
        );
        header.kind = EventKind::ProcessExec as u32;
        assert!(matches!(
            decode(&bytes_of(&header)),
            Err(DecodeError::TooShort { .. })
        ));
        let mut ev = ExecEvent::default();
        ev.header.kind = EventKind::ProcessExec as u32;
        ev.args_len = u32::MAX;
        assert!(matches!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::PayloadOverrun { .. })
        ));
    }
}
