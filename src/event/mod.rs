//! One mailbox change, as mailpush understands it.
//!
//! `event` owns the [`Event`] type and every parser that turns producer bytes into it: the Cyrus
//! notify datagram ([`packet`]), its `dlist:` stream record ([`dlist`]), the RFC 5423 JSON body
//! ([`parse`], read in one pass by `json`), the IMAP URL in `uri` ([`imapurl`]), the IMAP
//! ENVELOPE ([`envelope`]) and RFC 2047 words ([`rfc2047`]). It never does I/O and never panics on input: a packet is either an
//! `Event` or a [`ParseError`] whose reason is fit for a log line and a metric label.
//!
//! An `Event` is built once, on the receive path, and handed through `pipeline` to `route`.

pub mod dlist;
pub mod envelope;
pub mod imapurl;
mod json;
pub mod packet;
pub mod parse;
pub mod rfc2047;
mod wire;

pub use envelope::Envelope;
pub use imapurl::MailboxRef;
pub use packet::{Class, Notification};
pub use parse::{ParseError, from_json, from_notification};

/// A parsed notification: typed fields for what mailpush acts on, the rest kept as raw JSON.
///
/// Fields are `Option` because RFC 5423 makes nearly every parameter optional and Cyrus sends
/// only what `event_extra_params` enables; absence is information, not an error.
#[derive(Debug, Clone)]
pub struct Event {
    /// Which kind of notify packet carried it (EVENT for mboxevents and JSON ingest).
    pub class: Class,
    /// The event type as sent (`MessageNew`, `vnd.cmu.MessageCopy`, ...); for SIEVE, MAIL and
    /// IMIP packets it is the class name.
    pub name: String,
    /// The event type, classified; unknown names are kept in `name` as [`Kind::Other`].
    pub kind: Kind,
    /// The user whose data changed: from the mailbox path, never from the acting `user`.
    pub owner: Option<String>,
    /// The mailbox the event is about, from the IMAP URL in `uri`.
    pub mailbox: Option<MailboxRef>,
    /// What the mailbox holds (`vnd.cmu.mbtype`), which decides mail vs calendar vs contacts.
    pub mailbox_type: Option<MailboxType>,
    /// The authenticated user who acted (RFC 5423 `user`); kept for logs only.
    pub actor: Option<String>,
    /// The Cyrus instance that sent the event (`serverFQDN`): the "slot" for logs and metrics.
    pub slot: Option<String>,
    /// Mailbox MODSEQ after the change.
    pub modseq: Option<u64>,
    /// Unseen messages in the mailbox, for its owner (`vnd.cmu.unseenMessages`).
    pub unseen: Option<u64>,
    /// Messages in the mailbox after the change (RFC 5423 `messages`).
    pub messages: Option<u64>,
    /// The per-user modseq counters (`vnd.fastmail.counters`), when Cyrus sends them.
    pub counters: Option<Counters>,
    /// Sender and subject for display (from `vnd.fastmail.jmapEmail`, else `vnd.cmu.envelope`).
    pub envelope: Option<Envelope>,
    /// Which JMAP id scheme the owner's account uses, when the event's ids say
    /// (`vnd.cmu.emailid`, `vnd.cmu.threadid`).
    pub id_scheme: IdScheme,
    /// The whole JSON body, untouched and known to be valid JSON, so later consumers can read
    /// fields not typed here.
    pub raw: Option<Box<str>>,
    /// The notify packet header and non-JSON body (SIEVE, MAIL), when the event came as one.
    pub notification: Option<Box<Notification>>,
}

impl Event {
    /// An event of `kind` for `owner` (who is also taken as the actor) with nothing else known
    /// yet: parsers fill in what their input says.
    pub fn bare(class: Class, name: String, kind: Kind, owner: Option<String>) -> Event {
        Event {
            class,
            name,
            kind,
            actor: owner.clone(),
            owner,
            mailbox: None,
            mailbox_type: None,
            slot: None,
            modseq: None,
            unseen: None,
            messages: None,
            counters: None,
            envelope: None,
            id_scheme: IdScheme::Unknown,
            raw: None,
            notification: None,
        }
    }
}

/// Cyrus's two schemes of JMAP ids. An account with compact ids (`ctl_conversationsdb -I on`,
/// the session's `hasCompactIds`) has Email ids `S` + 11 characters and Thread ids `A` + 11,
/// and its Email, Mailbox, Thread, Calendar and CalendarEvent states carry a `J` prefix; a
/// legacy account has `M` + 24 hex digits and `T` + 16, and bare states (Cyrus,
/// `imap/jmap_api.c`, `jmap_state_string()`; `imap/jmap_util.c`, `jmap_set_emailid()`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdScheme {
    /// Nothing said which.
    #[default]
    Unknown,
    Legacy,
    Compact,
}

impl IdScheme {
    /// The scheme an Email id is written in.
    pub fn of_email_id(id: &str) -> IdScheme {
        IdScheme::of_id(id, 'M', 24, 'S')
    }

    /// The scheme a Thread id is written in.
    pub fn of_thread_id(id: &str) -> IdScheme {
        IdScheme::of_id(id, 'T', 16, 'A')
    }

    fn of_id(id: &str, legacy: char, hex_digits: usize, compact: char) -> IdScheme {
        let mut chars = id.chars();
        let first = chars.next();
        let rest = chars.as_str();
        if first == Some(legacy)
            && rest.len() == hex_digits
            && rest.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return IdScheme::Legacy;
        }
        let base64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if first == Some(compact) && rest.len() == 11 && rest.bytes().all(base64) {
            return IdScheme::Compact;
        }
        IdScheme::Unknown
    }

    /// The number stored for it.
    pub fn code(self) -> u8 {
        match self {
            IdScheme::Unknown => 0,
            IdScheme::Legacy => 1,
            IdScheme::Compact => 2,
        }
    }

    /// Reads a stored number; anything else is Unknown.
    pub fn from_code(code: u8) -> IdScheme {
        match code {
            1 => IdScheme::Legacy,
            2 => IdScheme::Compact,
            _ => IdScheme::Unknown,
        }
    }
}

/// The event types mailpush tells apart. Names compare case-insensitively, because Dovecot
/// spells `MailboxUnsubscribe` where Cyrus spells `MailboxUnSubscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    MessageNew,
    MessageAppend,
    MessageExpunge,
    MessageExpire,
    MessageRead,
    MessageTrash,
    MessageCopy,
    MessageMove,
    FlagsSet,
    FlagsClear,
    MailboxModseq,
    MailboxCreate,
    MailboxDelete,
    MailboxRename,
    MailboxSubscribe,
    MailboxUnsubscribe,
    AclChange,
    QuotaExceed,
    QuotaWithin,
    QuotaChange,
    Login,
    Logout,
    CalendarAlarm,
    ApplePushService,
    /// A SIEVE class packet: a Sieve `notify` action.
    SieveNotify,
    /// A MAIL class packet: lmtpd's legacy new-mail notice.
    MailNotice,
    /// An IMIP class packet: an iTIP message Cyrus wants sent.
    Imip,
    /// Any other event type; its name is in [`Event::name`].
    Other,
}

/// The `vnd.cmu.mbtype` type letter; the flag letters after it are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxType {
    /// `e`: an email folder.
    Mail,
    /// `c`: a calendar.
    Calendar,
    /// `a`: an address book.
    Addressbook,
    /// Any other letter (`b` DAV collection, `f` sieve scripts, `n`, `s`, `p`, `j`...).
    Other(char),
}

/// The modseqs that web clients watch, from `vnd.fastmail.counters` (fields 3 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub highest: u64,
    pub mail: u64,
    pub calendar: u64,
    pub contacts: u64,
}

impl Kind {
    /// Classifies an RFC 5423 / Cyrus event name, ignoring case and the `vnd.cmu.` prefix.
    pub fn from_name(name: &str) -> Kind {
        const NAMES: &[(&str, Kind)] = &[
            ("MessageNew", Kind::MessageNew),
            ("MessageAppend", Kind::MessageAppend),
            ("MessageExpunge", Kind::MessageExpunge),
            ("MessageExpire", Kind::MessageExpire),
            ("MessageRead", Kind::MessageRead),
            ("MessageTrash", Kind::MessageTrash),
            ("MessageCopy", Kind::MessageCopy),
            ("MessageMove", Kind::MessageMove),
            ("FlagsSet", Kind::FlagsSet),
            ("FlagsClear", Kind::FlagsClear),
            ("MailboxModseq", Kind::MailboxModseq),
            ("MailboxCreate", Kind::MailboxCreate),
            ("MailboxDelete", Kind::MailboxDelete),
            ("MailboxRename", Kind::MailboxRename),
            ("MailboxSubscribe", Kind::MailboxSubscribe),
            ("MailboxUnSubscribe", Kind::MailboxUnsubscribe),
            ("AclChange", Kind::AclChange),
            ("QuotaExceed", Kind::QuotaExceed),
            ("QuotaWithin", Kind::QuotaWithin),
            ("QuotaChange", Kind::QuotaChange),
            ("Login", Kind::Login),
            ("Logout", Kind::Logout),
            ("CalendarAlarm", Kind::CalendarAlarm),
            ("ApplePushService", Kind::ApplePushService),
        ];
        let bare = strip_prefix_ignore_case(name, "vnd.cmu.").unwrap_or(name);
        NAMES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(bare))
            .map_or(Kind::Other, |(_, kind)| *kind)
    }

    /// A bounded label for metrics: unknown names all count as `other`, so a producer cannot
    /// grow the metric set without limit.
    pub fn label(self) -> &'static str {
        match self {
            Kind::MessageNew => "MessageNew",
            Kind::MessageAppend => "MessageAppend",
            Kind::MessageExpunge => "MessageExpunge",
            Kind::MessageExpire => "MessageExpire",
            Kind::MessageRead => "MessageRead",
            Kind::MessageTrash => "MessageTrash",
            Kind::MessageCopy => "MessageCopy",
            Kind::MessageMove => "MessageMove",
            Kind::FlagsSet => "FlagsSet",
            Kind::FlagsClear => "FlagsClear",
            Kind::MailboxModseq => "MailboxModseq",
            Kind::MailboxCreate => "MailboxCreate",
            Kind::MailboxDelete => "MailboxDelete",
            Kind::MailboxRename => "MailboxRename",
            Kind::MailboxSubscribe => "MailboxSubscribe",
            Kind::MailboxUnsubscribe => "MailboxUnSubscribe",
            Kind::AclChange => "AclChange",
            Kind::QuotaExceed => "QuotaExceed",
            Kind::QuotaWithin => "QuotaWithin",
            Kind::QuotaChange => "QuotaChange",
            Kind::Login => "Login",
            Kind::Logout => "Logout",
            Kind::CalendarAlarm => "CalendarAlarm",
            Kind::ApplePushService => "ApplePushService",
            Kind::SieveNotify => "SIEVE",
            Kind::MailNotice => "MAIL",
            Kind::Imip => "IMIP",
            Kind::Other => "other",
        }
    }
}

impl MailboxType {
    /// Reads the type letter of a `vnd.cmu.mbtype` value such as `"e"` or `"er"`.
    pub fn from_mbtype(mbtype: &str) -> Option<MailboxType> {
        let letter = mbtype.chars().next()?;
        Some(match letter {
            'e' => MailboxType::Mail,
            'c' => MailboxType::Calendar,
            'a' => MailboxType::Addressbook,
            other => MailboxType::Other(other),
        })
    }
}

impl Counters {
    /// Parses the space-separated `vnd.fastmail.counters` string; None when it is too short or
    /// not numeric, because half a counter set would move state the wrong way.
    pub fn parse(text: &str) -> Option<Counters> {
        let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
        let _version = fields.next()??;
        let highest = fields.next()??;
        let mail = fields.next()??;
        let calendar = fields.next()??;
        let contacts = fields.next()??;
        Some(Counters {
            highest,
            mail,
            calendar,
            contacts,
        })
    }
}

/// `str::strip_prefix`, ignoring ASCII case.
pub(crate) fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_names() {
        let check = |name: &str, expect: Kind| assert_eq!(Kind::from_name(name), expect, "{name}");
        check("MessageNew", Kind::MessageNew);
        check("messagenew", Kind::MessageNew);
        check("vnd.cmu.MessageCopy", Kind::MessageCopy);
        check("VND.CMU.messagemove", Kind::MessageMove);
        check("MailboxUnSubscribe", Kind::MailboxUnsubscribe);
        check("MailboxUnsubscribe", Kind::MailboxUnsubscribe);
        check("vnd.example.Whatever", Kind::Other);
        check("", Kind::Other);
        check("vnd.cmu.", Kind::Other);
        check("ü", Kind::Other);
    }

    #[test]
    fn id_schemes_from_ids() {
        assert_eq!(
            IdScheme::of_email_id("M532f609e737f4cb59298ff2b"),
            IdScheme::Legacy
        );
        assert_eq!(IdScheme::of_email_id("Sbrp-oRDd_Mh"), IdScheme::Compact);
        assert_eq!(
            IdScheme::of_thread_id("Tc2dcb97f781647a7"),
            IdScheme::Legacy
        );
        assert_eq!(IdScheme::of_thread_id("A-_0123456zZ"), IdScheme::Compact);
        for odd in [
            "",
            "M",
            "Mxyz",
            "S1234567890",
            "S1234567890ab",
            "S12345678!0a",
            "Tc2dcb97f781647a",
        ] {
            assert_eq!(IdScheme::of_email_id(odd), IdScheme::Unknown, "{odd}");
        }
        for scheme in [IdScheme::Unknown, IdScheme::Legacy, IdScheme::Compact] {
            assert_eq!(IdScheme::from_code(scheme.code()), scheme);
        }
    }

    #[test]
    fn counters_from_fastmail_string() {
        assert_eq!(
            Counters::parse("9 4 4 0 0 0 1 0 0 0 4 0 1795878380"),
            Some(Counters {
                highest: 4,
                mail: 4,
                calendar: 0,
                contacts: 0
            })
        );
        assert_eq!(Counters::parse("9 4 4"), None);
        assert_eq!(Counters::parse("9 x 4 0 0"), None);
        assert_eq!(Counters::parse(""), None);
    }

    #[test]
    fn mailbox_types() {
        assert_eq!(MailboxType::from_mbtype("e"), Some(MailboxType::Mail));
        assert_eq!(MailboxType::from_mbtype("er"), Some(MailboxType::Mail));
        assert_eq!(MailboxType::from_mbtype("c"), Some(MailboxType::Calendar));
        assert_eq!(
            MailboxType::from_mbtype("a"),
            Some(MailboxType::Addressbook)
        );
        assert_eq!(MailboxType::from_mbtype("b"), Some(MailboxType::Other('b')));
        assert_eq!(MailboxType::from_mbtype(""), None);
    }
}
