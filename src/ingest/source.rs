//! Where an event came in, as metrics and logs name it, and the first bytes of a packet kept
//! for the status page when it is rejected.

/// Where an event came in; a label on ingest metrics. A new event source adds its variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The Cyrus notify datagram socket.
    Cyrus,
    /// The Cyrus `dlist:` stream socket.
    Dlist,
    /// Newline-delimited JSON over TCP.
    Ndjson,
    /// `POST /ingest`.
    Http,
    /// Dovecot's push_notification OX driver (`PUT /ingest/dovecot/ox`).
    DovecotOx,
    /// Dovecot's push_notification Lua driver with mailpush's script
    /// (`POST /ingest/dovecot/lua`).
    DovecotLua,
}

/// The most bytes of a rejected packet shown.
pub const EXCERPT_BYTES: usize = 96;

/// The first bytes of a packet, copied on the stack before a parse consumes the packet, so a
/// rejection can still show them without an allocation per packet.
pub struct PacketHead {
    bytes: [u8; EXCERPT_BYTES],
    len: usize,
}

impl Source {
    /// Every source, in the order of [`Source::index`].
    pub const ALL: [Source; 6] = [
        Source::Cyrus,
        Source::Dlist,
        Source::Ndjson,
        Source::Http,
        Source::DovecotOx,
        Source::DovecotLua,
    ];

    /// The position in per-source arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Source::Cyrus => "cyrus",
            Source::Dlist => "dlist",
            Source::Ndjson => "ndjson",
            Source::Http => "http",
            Source::DovecotOx => "dovecot_ox",
            Source::DovecotLua => "dovecot_lua",
        }
    }
}

impl PacketHead {
    /// Copies up to [`EXCERPT_BYTES`] of `packet`.
    pub fn new(packet: &[u8]) -> PacketHead {
        let len = packet.len().min(EXCERPT_BYTES);
        let mut bytes = [0; EXCERPT_BYTES];
        bytes[..len].copy_from_slice(&packet[..len]);
        PacketHead { bytes, len }
    }

    /// The copied bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}
